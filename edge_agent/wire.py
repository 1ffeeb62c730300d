"""Batch wire format v1, written once and used by the agent (encode) and the gateway (decode).

docs/wire-format.md is the specification; this module is its reference implementation.

Birth message (retained, `<prefix>/<device>/birth`): a msgpack map announcing the device, its
boot and the series dictionary (`id -> name, unit, kind, attributes, scale, bounds, source`).

Data batch (`<prefix>/<device>/data`): a msgpack array
    [version, flags, device, boot, seq, dict, t0, body, ext?]
    body = [tick_deltas, columns]           (flags bit 0 clear)
    body = bin(raw-deflate(msgpack(body)))  (flags bit 0 set)
    column = [series_id, mask, v0, d1, d2, ...]
Tick timestamps are milliseconds: t0 + sum(tick_deltas[:i+1]). A column's `mask` has bit i set
when the series has a sample at tick i; 0 means "every tick". The first value is absolute, the
following ones are differences from the previous value (element-wise for histograms), so steady
counters and gauges cost one or two bytes a sample.

Decoding is strict: anything that does not match raises `WireError(reason, detail)`, where
`reason` is a short stable label a gateway can count by.

This module holds what a device needs (constants, `BatchBuilder`, `encode_birth`, `boot_tag`,
`deflate`); the decoder (`decode`, `parse_batch`, `parse_birth`, `Batch`, `Birth`, `WireError`,
`inflate`) is edge_agent/wire_decode.py, which the MicroPython bundle leaves out. `wire.parse_batch`
and the other decoder names still work: the module's `__getattr__` (PEP 562, also in MicroPython)
loads wire_decode on first use.
"""

import binascii

from edge_agent.umsgpack import pack_array_header, pack_into

VERSION = 1
FLAG_DEFLATE = 1
MAX_TICKS = 64  # a column mask must fit an unsigned 64-bit integer
MAX_INFLATED = 1 << 20
CHUNK = 512  # bytes a piece of a chunked payload holds (Chunks)


def boot_tag(boot_id):
    """The 32-bit tag of a boot id that data batches carry instead of the full 36-byte UUID."""
    return binascii.crc32(boot_id.encode()) & 0xFFFFFFFF


# ---------------------------------------------------------------- agent side: building batches


class Chunks:
    """A byte sink (`append`, `extend`, as pack_into needs) that keeps what it is given as pieces of
    `size` bytes, so no single allocation holds a whole message: on a small, fragmented heap a 4 KB
    birth may find no 4 KB of contiguous room when 512-byte pieces still fit. `pieces()` is the
    list to hand to a transport that writes a payload piece by piece (transport/umqtt.py)."""

    def __init__(self, size=CHUNK):
        self.size = size
        self.parts = []
        self.buf = None
        self.fill = size  # full: the first write starts a piece

    def _next(self):
        self.buf = bytearray(self.size)
        self.parts.append(self.buf)
        self.fill = 0

    def append(self, byte):
        if self.fill == self.size:
            self._next()
        self.buf[self.fill] = byte
        self.fill += 1

    def extend(self, data):
        n = len(data)
        done = 0
        while done < n:
            if self.fill == self.size:
                self._next()
            k = min(n - done, self.size - self.fill)
            self.buf[self.fill:self.fill + k] = data if k == n else memoryview(data)[done:done + k]
            self.fill += k
            done += k

    def pieces(self):
        """The payload as a list of byte pieces; the last one is a view of what was written into it."""
        if self.parts and self.fill < self.size:
            self.parts[-1] = memoryview(self.buf)[:self.fill]
        return self.parts


def payload_size(payload):
    """Bytes in a payload given whole or as a list of pieces."""
    if isinstance(payload, list):
        n = 0
        for piece in payload:
            n += len(piece)
        return n
    return len(payload)


class BatchBuilder:
    """Accumulates ticks of samples, ready to encode as one data batch.

    Each series' column is kept as the msgpack of its values as they go on the wire (the first
    absolute, then differences), so a batch waiting in RAM costs about its encoded size plus a few
    words a series, not a list of integers: it matters on a 64 KB MicroPython heap.
    """

    def __init__(self):
        self.ticks = []
        self.columns = {}  # series id -> [mask, previous value, number of values, packed values]
        self.samples = 0

    def clear(self):
        """Empty, for the next batch, without allocating (the agent reuses one builder)."""
        self.ticks.clear()
        self.columns.clear()
        self.samples = 0

    def __len__(self):
        return len(self.ticks)

    def add_tick(self, ts_ms, samples):
        """Add one tick: `samples` is a list of (Series, value) with ids already interned."""
        index = len(self.ticks)
        if index >= MAX_TICKS:
            raise ValueError("batch already holds %d ticks" % MAX_TICKS)
        if index and ts_ms < self.ticks[-1]:
            ts_ms = self.ticks[-1]  # a clock step backwards must not make a negative delta
        self.ticks.append(ts_ms)
        bit = 1 << index
        columns = self.columns
        for series, value in samples:
            column = columns.get(series.id)
            if column is None:
                column = [0, None, 0, bytearray()]
                columns[series.id] = column
            elif column[0] & bit:
                continue  # the same series twice in one tick: keep the first
            prev = column[1]
            if isinstance(value, tuple):  # histogram (count, sum, buckets)
                value = [value[0], value[1]] + list(value[2])
                pack_into(value if prev is None else _diff(value, prev), column[3])
            else:
                pack_into(value if prev is None else value - prev, column[3])
            column[0] |= bit
            column[1] = value
            column[2] += 1
        self.samples += len(samples)

    def encode(self, device, boot, seq, dict_epoch, compress=False, ext=None):
        out = bytearray()
        self.encode_into(out, device, boot, seq, dict_epoch, compress, ext)
        return bytes(out)

    def encode_into(self, out, device, boot, seq, dict_epoch, compress=False, ext=None):
        """The batch onto `out` (a bytearray, or a Chunks to send it in pieces)."""
        if not self.ticks:
            raise ValueError("empty batch")
        pack_array_header(9 if ext else 8, out)
        for field in (VERSION, FLAG_DEFLATE if compress else 0, device, boot, seq, dict_epoch, self.ticks[0]):
            pack_into(field, out)
        if compress:
            body = bytearray()
            self.pack_body(body)
            pack_into(deflate(body), out)
        else:
            self.pack_body(out)
        if ext:
            pack_into(ext, out)

    def pack_body(self, out):
        """[tick_deltas, columns] onto `out`."""
        out.append(0x92)
        n = len(self.ticks)
        pack_array_header(n, out)
        prev = self.ticks[0]
        for ts in self.ticks:
            pack_into(ts - prev, out)
            prev = ts
        full = (1 << n) - 1
        pack_array_header(len(self.columns), out)
        for sid in sorted(self.columns):
            mask, _, count, values = self.columns[sid]
            pack_array_header(2 + count, out)
            pack_into(sid, out)
            pack_into(0 if mask == full else mask, out)
            out.extend(values)


def _diff(values, prev):
    if len(values) != len(prev):
        raise ValueError("histogram changed its bucket count inside a batch")
    return [values[i] - prev[i] for i in range(len(values))]


def encode_birth(info, table):
    """The birth message: `info` holds device, boot_id, boot_time_ms, agent, platform, collectors."""
    out = bytearray()
    encode_birth_into(out, info, table)
    return bytes(out)


def encode_birth_into(out, info, table):
    """The birth message onto `out` (a bytearray, or a Chunks to send it in pieces)."""
    birth = {
        "v": VERSION,
        "dev": info["device"],
        "boot": info["boot_id"],
        "bt": boot_tag(info["boot_id"]),
        "btime": info["boot_time_ms"],
        "dict": table.epoch,
        "base": table.base if getattr(table, "base", None) is not None else table.epoch,
        "agent": info.get("agent", ""),
        "os": info.get("os", ""),
        "platform": info.get("platform", ""),
        "collectors": info.get("collectors", {}),
    }
    for key in ("interval_ms", "sampling", "group"):
        if key in info:
            birth[key] = info[key]
    # the series go last, packed one at a time: the whole list never exists at once (small heaps)
    out.append(0x80 | (len(birth) + 1))  # a fixmap: 15 keys at most
    for key in birth:
        pack_into(key, out)
        pack_into(birth[key], out)
    pack_into("series", out)
    pack_array_header(len(table.series), out)
    for s in table.series:
        pack_into([s.id, s.name, s.unit, s.kind, s.attrs, s.scale, s.bounds, s.source], out)


# ---------------------------------------------------------------- deflate (CPython agents with compress)


def deflate(data):
    try:
        import zlib
    except ImportError:  # MicroPython's `deflate` module has no compressor in most builds
        raise ValueError("compression is not available on this interpreter")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def __getattr__(name):
    """The decoder's names (parse_batch, WireError, ...) from edge_agent/wire_decode.py, on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    from edge_agent import wire_decode

    try:
        value = getattr(wire_decode, name)
    except AttributeError:
        raise AttributeError("module 'edge_agent.wire' has no attribute '%s'" % name)
    globals()[name] = value
    return value
