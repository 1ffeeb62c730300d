"""Wire format v1: encode/decode round trips (property-based), boundaries, and strict rejection."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.collectors.seriescache import SeriesCache
from edge_agent.model import Series, SeriesTable
from edge_wire import COUNTER, GAUGE, HISTOGRAM, MAX_TICKS, VERSION
from edge_wire import batch as batch_module
from edge_wire.batch import CHUNK, BatchBuilder, Chunks, payload_size
from edge_wire.birth import boot_tag, encode_birth, encode_birth_into
from edge_wire.decode import WireError, decode, parse_batch, parse_birth
from edge_wire.unpack import unpackb

U64 = (1 << 64) - 1


def make_series(n_gauges, n_counters, with_hist=False):
    cache = SeriesCache("procfs")
    table = SeriesTable()
    series = []
    for i in range(n_gauges):
        series.append(cache.get("g", GAUGE, "1", {"i": str(i)}, 0.0001))
    for i in range(n_counters):
        series.append(cache.get("c", COUNTER, "By", {"i": str(i)}))
    if with_hist:
        series.append(cache.get("h", HISTOGRAM, "s", None, 1e-6, [1e-6, 2e-6, 4e-6]))
    for s in series:
        table.intern(s)
    return table, series


# a tick is a list of optional values per series (None: series absent at that tick)
gauge_values = st.integers(min_value=-(1 << 62), max_value=(1 << 62))
counter_start = st.integers(min_value=0, max_value=(1 << 63))
tick_gaps = st.integers(min_value=0, max_value=(1 << 31))


@st.composite
def batches(draw):
    n_ticks = draw(st.integers(min_value=1, max_value=MAX_TICKS))
    n_g = draw(st.integers(min_value=0, max_value=4))
    n_c = draw(st.integers(min_value=0, max_value=4))
    table, series = make_series(n_g, n_c, with_hist=draw(st.booleans()))
    t = draw(st.integers(min_value=0, max_value=(1 << 50)))
    ticks = []
    counters = [draw(counter_start) for _ in range(n_c)]
    hist = [0, 0, 0, 0, 0, 0]
    for _ in range(n_ticks):
        t += draw(tick_gaps)
        row = []
        for i, s in enumerate(series):
            if not draw(st.integers(min_value=0, max_value=3)):
                continue  # absent at this tick
            if s.kind == GAUGE:
                row.append((s, draw(gauge_values)))
            elif s.kind == COUNTER:
                k = i - n_g
                counters[k] = min(U64, counters[k] + draw(st.integers(min_value=0, max_value=1 << 40)))
                row.append((s, counters[k]))
            else:
                hist = [h + draw(st.integers(min_value=0, max_value=1000)) for h in hist]
                row.append((s, (hist[0], hist[1], hist[2:])))
        ticks.append((t, row))
    return table, ticks


def expected_columns(ticks):
    cols = {}
    for index, (_, row) in enumerate(ticks):
        for s, v in row:
            v = [v[0], v[1]] + list(v[2]) if isinstance(v, tuple) else v
            cols.setdefault(s.id, ([], []))
            cols[s.id][0].append(index)
            cols[s.id][1].append(v)
    return cols


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(batches(), st.booleans(), st.integers(min_value=0, max_value=U64))
def test_round_trip(data, compress, seq):
    table, ticks = data
    builder = BatchBuilder()
    for ts, row in ticks:
        builder.add_tick(ts, row)
    payload = builder.encode("dev-1", 0xFFFFFFFF, seq, 7, compress=compress)
    for unpack in (unpackb, lambda b: msgpack.unpackb(b, strict_map_key=False)):
        batch = parse_batch(decode(payload, unpack), unpack)
        assert batch.seq == seq and batch.device == "dev-1" and batch.dict_epoch == 7
        assert batch.ticks == [ts for ts, _ in ticks]
        got = dict([(sid, (idx, vals)) for sid, idx, vals in batch.columns])
        assert got == expected_columns(ticks)


def reference_encode(ticks, device, boot, seq, dict_epoch, ext=None):
    """The batch as the wire format describes it, packed by the msgpack package in one go."""
    cols = expected_columns(ticks)
    full = (1 << len(ticks)) - 1
    columns = []
    for sid in sorted(cols):
        indexes, values = cols[sid]
        mask = sum(1 << i for i in indexes)
        column = [sid, 0 if mask == full else mask, values[0]]
        for prev, value in zip(values, values[1:], strict=False):
            column.append([a - b for a, b in zip(value, prev, strict=True)] if isinstance(value, list) else value - prev)
        columns.append(column)
    stamps = [ts for ts, _ in ticks]
    deltas = [b - a for a, b in zip([stamps[0]] + stamps, stamps, strict=False)]
    message = [VERSION, 0, device, boot, seq, dict_epoch, stamps[0], [deltas, columns]]
    return msgpack.packb(message + ([ext] if ext else []))


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(batches(), st.booleans())
def test_encoding_is_byte_identical_to_msgpack(data, with_ext):
    """The builder packs columns as it goes; the bytes are those of packing the whole batch at once."""
    table, ticks = data
    builder = BatchBuilder()
    for ts, row in ticks:
        builder.add_tick(ts, row)
    ext = {"lost": [1, 2]} if with_ext else None
    assert builder.encode("dev-1", 7, 1 << 40, 3, ext=ext) == reference_encode(ticks, "dev-1", 7, 1 << 40, 3, ext)


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(batches(), st.integers(min_value=1, max_value=40), st.booleans())
def test_chunked_encoding_is_the_same_bytes_in_pieces(data, size, compress):
    """encode_into a Chunks: pieces of at most `size` bytes (all full but the last) joining to encode()."""
    table, ticks = data
    builder = BatchBuilder()
    for ts, row in ticks:
        builder.add_tick(ts, row)
    out = Chunks(size)
    builder.encode_into(out, "dev-1", 7, 1 << 40, 3, compress, {"lost": [1, 2]})
    pieces = out.pieces()
    assert b"".join(pieces) == builder.encode("dev-1", 7, 1 << 40, 3, compress, {"lost": [1, 2]})
    assert all(len(p) == size for p in pieces[:-1]) and 0 < len(pieces[-1]) <= size
    assert payload_size(pieces) == sum(len(p) for p in pieces)


def test_chunks_get_smaller_when_the_heap_has_no_room_for_a_piece(monkeypatch):
    # a fragmented 64 KB heap: 23 KB free, no 512-byte block; a birth in 512-byte pieces never went out
    real = bytearray
    refused = []

    def fragmented(size):
        if size > 128:
            refused.append(size)
            raise MemoryError
        return real(size)

    table, series = make_series(40, 40)
    builder = BatchBuilder()
    builder.add_tick(1000, [(s, 123456789) for s in series])
    builder.add_tick(2000, [(s, 123456999) for s in series])
    monkeypatch.setattr(batch_module, "bytearray", fragmented, raising=False)
    out = Chunks()
    builder.encode_into(out, "dev-1", 7, 1, 1)
    monkeypatch.undo()
    pieces = out.pieces()
    assert refused == [512, 256] and out.size == 128
    assert all(len(p) == 128 for p in pieces[:-1])
    assert b"".join(pieces) == builder.encode("dev-1", 7, 1, 1)
    monkeypatch.setattr(batch_module, "bytearray", lambda size: (_ for _ in ()).throw(MemoryError), raising=False)
    with pytest.raises(MemoryError):  # below MIN_CHUNK it is the caller's MemoryError (the batch is dropped)
        Chunks().extend(b"x")


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(batches(), st.data())
def test_samples_in_any_order_or_twice_and_a_reused_builder(data, draw):
    """A tick's samples may come in any id order, and a series twice (the first is kept); a cleared
    builder encodes the next batch as a new one would."""
    table, ticks = data
    builder = BatchBuilder()
    for _ in range(2):
        shuffled = []
        for ts, row in ticks:
            row = draw.draw(st.permutations(row))
            twice = [(s, (v[0] + 1,) + v[1:] if isinstance(v, tuple) else v + 1)  # another value: not kept
                     for s, v in row if draw.draw(st.booleans())]
            shuffled.append((ts, row + draw.draw(st.permutations(twice))))
        for ts, row in shuffled:
            builder.add_tick(ts, row)
        assert builder.samples == sum(len(row) for _, row in shuffled)
        assert builder.columns == sorted(set(s.id for _, row in ticks for s, _ in row))
        assert builder.encode("dev-1", 7, 1 << 40, 3) == reference_encode(ticks, "dev-1", 7, 1 << 40, 3)
        builder.clear()
        assert len(builder) == 0 and builder.samples == 0 and builder.columns == []


def test_wide_histograms_and_large_values():
    """A histogram of more than 15 integers (an array 16 in the batch) and values of every integer width."""
    table, series = make_series(1, 1, with_hist=True)
    gauge, counter, hist = series
    builder = BatchBuilder()
    ticks = []
    for tick in range(5):
        buckets = [tick * 7 ** k for k in range(20)]
        row = [(gauge, (-1) ** tick * 3 ** (tick * 9)), (counter, (1 << 63) + tick * (1 << 40)),
               (hist, (tick * 1000, tick << 33, buckets))]
        builder.add_tick(1000 * tick, row)
        ticks.append((1000 * tick, row))
    assert builder.encode("d", 1, 1, 1) == reference_encode(ticks, "d", 1, 1, 1)


def test_steady_stream_is_small():
    """Steady counters and gauges cost about one or two bytes per sample."""
    table, series = make_series(20, 40)
    builder = BatchBuilder()
    for tick in range(10):
        builder.add_tick(1_700_000_000_000 + tick * 1000,
                         [(s, 5000 + tick * 3 if s.kind == GAUGE else 10**9 + tick * 120) for s in series])
    payload = builder.encode("device-0001", 123456789, 1 << 40, 1 << 40)
    per_sample = len(payload) / 600
    assert per_sample < 2.0, per_sample
    assert len(builder.encode("device-0001", 1, 1, 1, compress=True)) < len(payload)


def test_masks_mark_absent_samples():
    table, series = make_series(2, 0)
    builder = BatchBuilder()
    builder.add_tick(1000, [(series[0], 1), (series[1], 1)])
    builder.add_tick(2000, [(series[0], 2)])
    builder.add_tick(3000, [(series[0], 3), (series[1], 5)])
    raw = msgpack.unpackb(builder.encode("d", 1, 1, 1))
    columns = raw[7][1]
    assert columns[0][:2] == [series[0].id, 0]  # present at every tick: mask 0
    assert columns[1][:2] == [series[1].id, 0b101]
    assert columns[1][2:] == [1, 4]  # first absolute, then the delta


def test_clock_step_backwards_is_clamped():
    table, series = make_series(1, 0)
    builder = BatchBuilder()
    builder.add_tick(5000, [(series[0], 1)])
    builder.add_tick(4000, [(series[0], 1)])
    batch = parse_batch(decode(builder.encode("d", 1, 1, 1)))
    assert batch.ticks == [5000, 5000]


class ShortOfMemory(list):
    """A list whose next `extend` fails as on a full MicroPython heap."""

    fail = True

    def extend(self, items):
        if self.fail:
            self.fail = False
            raise MemoryError
        list.extend(self, items)


def test_a_memory_error_while_growing_leaves_the_builder_usable():
    # seen at a 48 KB heap: `masks` grew, `prevs` did not, and clear() raised IndexError (the agent exited)
    table, series = make_series(3, 0)
    builder = BatchBuilder()
    builder.add_tick(1000, [(series[0], 1)])
    builder.prevs = ShortOfMemory(builder.prevs)
    with pytest.raises(MemoryError):
        builder.add_tick(2000, [(series[0], 2), (series[2], 7)])
    assert len(builder.masks) == len(builder.prevs)
    builder.clear()  # what the agent does: the batch is dropped and counted
    builder.add_tick(3000, [(series[0], 3), (series[2], 8)])
    batch = parse_batch(decode(builder.encode("d", 1, 1, 1)))
    assert batch.ticks == [3000] and [c[0] for c in batch.columns] == [series[0].id, series[2].id]


def good_message():
    table, series = make_series(1, 1)
    builder = BatchBuilder()
    builder.add_tick(1000, [(series[0], 1), (series[1], 10)])
    builder.add_tick(2000, [(series[0], 2), (series[1], 20)])
    return msgpack.unpackb(builder.encode("d", 1, 1, 1))


def mutated(path, value):
    msg = good_message()
    node = msg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return msgpack.packb(msg)


@pytest.mark.parametrize("payload, reason", [
    (b"\xc1", "not_msgpack"),
    (b"\x98\x01", "not_msgpack"),  # truncated
    (msgpack.packb({"a": 1}), "bad_header"),
    (msgpack.packb([2, 0, "d", 1, 1, 1, 1, [[0], []]]), "bad_version"),
    (mutated([1], 2), "bad_header"),  # unknown flag
    (mutated([2], 5), "bad_header"),  # device id not a string
    (mutated([4], -1), "bad_header"),  # negative seq
    (mutated([7, 0], []), "bad_body"),  # no ticks
    (mutated([7, 0, 1], -5), "bad_body"),  # negative tick delta
    (mutated([7, 1, 0, 1], 0b100), "bad_column"),  # mask beyond the ticks
    (mutated([7, 1, 0, 3], "x"), "bad_value"),
    (mutated([7, 1, 0, 3], 1.5), "bad_value"),
    (mutated([7, 1, 1], [0, 0, 1]), "bad_column"),  # duplicate series id
    (mutated([7, 1, 0], [0, 0, 1, 2, 3]), "bad_column"),  # more values than ticks
    (mutated([1], 1), "bad_body"),  # says deflated, is not
    (b"\x00" * 70000, "too_large"),
])
def test_rejections_name_their_reason(payload, reason):
    with pytest.raises(WireError) as err:
        parse_batch(decode(payload))
    assert err.value.reason == reason


def test_deflate_bomb_is_refused():
    import zlib

    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = bomb.compress(msgpack.packb([[0], [[0, 0, 1]]]) + b"\x00" * (4 << 20)) + bomb.flush()
    payload = msgpack.packb([1, 1, "d", 1, 1, 1, 1, body])
    with pytest.raises(WireError) as err:
        parse_batch(decode(payload))
    assert err.value.reason == "too_large"


def test_birth_round_trip_and_checks():
    table, series = make_series(1, 1, with_hist=True)
    table.epoch, table.base = 42, 40
    info = {"device": "d1", "boot_id": "0b5e-boot", "boot_time_ms": 1_700_000_000_000, "agent": "0.1.0",
            "collectors": {"cpu": "procfs"}}
    birth = parse_birth(decode(encode_birth(info, table)))
    assert birth.device == "d1" and birth.dict_epoch == 42 and birth.base == 40
    assert birth.boot == boot_tag("0b5e-boot")
    assert [s.key for s in birth.series.values()] == [s.key for s in series]
    assert birth.series[2].bounds == [1e-6, 2e-6, 4e-6]
    for size in (1, 7, CHUNK):  # in pieces, the same bytes
        out = Chunks(size)
        encode_birth_into(out, info, table)
        assert b"".join(out.pieces()) == encode_birth(info, table)
    raw = msgpack.unpackb(encode_birth(info, table))
    raw["series"][0][5] = float("nan")
    with pytest.raises(WireError):
        parse_birth(raw)
    raw["series"][0][5] = 1
    raw["series"][0][3] = 9
    with pytest.raises(WireError):
        parse_birth(raw)


def test_birth_says_who_the_host_is_and_when_counters_started():
    """host, hid, osd, ast and st (docs/wire-format.md): a birth over 15 keys is a map 16, byte-identical to msgpack."""

    table = SeriesTable(7)
    table.base = 7
    since_boot = Series("system.network.io", COUNTER, "By", {"device": "lo", "direction": "receive"}, 1, None, "procfs")
    agent_start = SeriesCache("ebpf", start_ms=1_700_000_123_000)
    retrans = agent_start.get("system.network.tcp.retransmits", COUNTER, "{segment}")
    seeded = agent_start.get("system.cpu.time", COUNTER, "s", {"cpu": "cpu0", "state": "user"}, 0.01, start=0)
    gauge = agent_start.get("system.cpu.utilization", GAUGE, "1", {"cpu": "cpu0", "state": "user"}, 0.0001)
    for s in (since_boot, retrans, seeded, gauge):
        table.intern(s)
    info = {"device": "d1", "boot_id": "b", "boot_time_ms": 1_700_000_000_000, "agent": "0.1.0", "os": "linux",
            "platform": "cpython-3.11.2", "collectors": {}, "interval_ms": 1000, "sampling": {}, "group": "g",
            "host": "router-7", "host_id": "0123456789abcdef0123456789abcdef",
            "os_description": "OpenWrt 23.05.2 (Linux 5.15.137)", "start_ms": 1_700_000_100_000}
    payload = encode_birth(info, table)
    raw = msgpack.unpackb(payload)
    assert len(raw) == 20 and payload[0] == 0xDE  # map 16
    assert msgpack.packb(raw) == payload
    assert raw["st"] == [[1_700_000_123_000, retrans.id]]
    birth = parse_birth(raw)
    assert (birth.host, birth.host_id, birth.os_description, birth.agent_start_ms) == (
        "router-7", "0123456789abcdef0123456789abcdef", "OpenWrt 23.05.2 (Linux 5.15.137)", 1_700_000_100_000)
    assert [birth.series[s.id].start for s in (since_boot, retrans, seeded, gauge)] == [0, 1_700_000_123_000, 0, 0]
    # a counter that starts again is another series: another id, the old one keeps its start
    restarted = SeriesCache("ebpf", start_ms=1_700_000_999_000).get("system.network.tcp.retransmits", COUNTER, "{segment}")
    assert table.intern(restarted) == 4 and table.intern(retrans) == retrans.id == 1
    for bad in ({"st": [[5]]}, {"st": [["x", 1]]}, {"ast": -1}, {"hid": 7}, {"osd": "x" * 300}):
        with pytest.raises(WireError):
            parse_birth(dict(raw, **bad))
    # an old birth without the new fields still parses: boot time for every counter
    old = {k: v for k, v in raw.items() if k not in ("host", "hid", "osd", "ast", "st")}
    assert all(s.start == 0 for s in parse_birth(old).series.values())


def test_the_protocol_imports_neither_agent_nor_gateway():
    """edge_wire is imported by both ends and imports neither (every import, also inside functions)."""
    import ast
    import pathlib

    package = pathlib.Path(__file__).resolve().parents[2] / "edge_wire"
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += ["%s: %s" % (path.name, n) for n in names if n.split(".")[0] in ("edge_agent", "gateway")]
    assert len(list(package.glob("*.py"))) >= 10 and not found, found
