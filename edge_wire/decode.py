"""Wire format v1, the receiving side: strict, bounded decoding of data batches and births.

Reference implementation of docs/wire-format.md beside the encoders (edge_wire/batch.py,
edge_wire/birth.py). Anything that does not match raises `WireError(reason, detail)`, where `reason`
is a short stable label a gateway can count by. Births come out as plain records (`SeriesInfo`, or
what the caller's `record` makes: the gateway's interned records), read as plain attributes.
Host-only: not part of the device's modules (a device never decodes); MicroPython-compatible still
(tests decode there too).
"""

from edge_wire import COUNTER, FLAG_DEFLATE, GAUGE, HISTOGRAM, MAX_TICKS, VERSION, series_key
from edge_wire.unpack import unpackb

try:  # CPython: sums of deltas in C (a gateway decodes millions of values a second)
    from itertools import accumulate
except ImportError:  # MicroPython (tests decode there too): the loop below
    accumulate = None

MAX_INFLATED = 1 << 20


class WireError(ValueError):
    def __init__(self, reason, detail=""):
        ValueError.__init__(self, reason + (": " + detail if detail else ""))
        self.reason = reason
        self.detail = detail



def inflate(data, limit=MAX_INFLATED):
    try:
        import zlib
    except ImportError:
        import io

        import deflate as _deflate

        out = _deflate.DeflateIO(io.BytesIO(data), _deflate.RAW).read(limit + 1)
        if len(out) > limit:
            raise WireError("too_large", "inflates beyond %d bytes" % limit)
        return out
    decompressor = zlib.decompressobj(-15)
    try:
        out = decompressor.decompress(data, limit)
    except zlib.error as exc:
        raise WireError("bad_deflate", str(exc))
    if decompressor.unconsumed_tail:
        raise WireError("too_large", "inflates beyond %d bytes" % limit)
    if not decompressor.eof:
        raise WireError("bad_deflate", "truncated stream")
    return out


# ---------------------------------------------------------------- gateway side: strict decoding


class Batch:
    """A decoded data batch. `columns` is a list of (series_id, tick_indexes, absolute_values)."""

    def __init__(self, flags, device, boot, seq, dict_epoch, ticks, columns, ext):
        self.flags = flags
        self.device = device
        self.boot = boot
        self.seq = seq
        self.dict_epoch = dict_epoch
        self.ticks = ticks
        self.columns = columns
        self.ext = ext

    def sample_count(self):
        return sum([len(c[1]) for c in self.columns])


class SeriesInfo:
    """One series of a birth as plain fields (what `parse_birth` makes unless given another `record`):
    `name`, `kind`, `unit`, `attrs`, `scale`, `bounds` (a histogram's; None otherwise), `source`,
    `start` (0: counts since boot, the birth's btime; else ms since the epoch) and `key` (series_key)."""

    __slots__ = ("name", "kind", "unit", "attrs", "scale", "bounds", "source", "start", "key")

    def __init__(self, name, kind, unit, attrs, scale, bounds, source, start):
        self.name = name
        self.kind = kind
        self.unit = unit
        self.attrs = attrs
        self.scale = scale
        self.bounds = bounds
        self.source = source
        self.start = start
        self.key = series_key(name, attrs)

    def __repr__(self):
        return "SeriesInfo(%s)" % self.key


class Birth:
    def __init__(self, obj, series):
        self.device = obj["dev"]
        self.boot_id = obj["boot"]
        self.boot = obj["bt"]
        self.boot_time_ms = obj["btime"]
        self.dict_epoch = obj["dict"]
        # the dictionary is append-only from epoch `base` on: it also resolves batches quoting
        # any epoch in [base, dict] (batches buffered while the dictionary grew)
        self.base = obj.get("base", obj["dict"])
        self.agent = obj.get("agent", "")
        self.os = obj.get("os", "")
        self.platform = obj.get("platform", "")
        self.collectors = obj.get("collectors", {})
        self.host = obj.get("host", "")
        self.host_id = obj.get("hid", "")
        self.os_description = obj.get("osd", "")
        self.agent_start_ms = obj.get("ast", 0)  # 0: an agent that does not say
        self.raw = obj
        self.series = series  # id -> what `parse_birth`'s `record` made of each series (SeriesInfo)


def _is_uint(value, bits=64):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << bits)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _need(ok, reason, detail):
    if not ok:
        raise WireError(reason, detail)


def valid_device_id(device):
    """1-128 characters, no MQTT topic syntax, not starting with '_' (reserved: _fleet, _status…)."""
    if not isinstance(device, str) or not 0 < len(device) <= 128 or device[0] == "_":
        return False
    for ch in "/+#\x00":
        if ch in device:
            return False
    return True


MAX_SAMPLES = 100000  # 64 ticks of ~1500 series


def _brief(value):
    """A short text for a rejected value: never the repr of a whole, possibly deeply nested, container."""
    if isinstance(value, (list, dict)):
        return "%s of %d" % (type(value).__name__, len(value))
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def decode(payload, unpack=unpackb, max_size=65536):
    """Bytes -> msgpack object, with the size limit and one error type."""
    _need(len(payload) <= max_size, "too_large", "%d bytes > limit %d" % (len(payload), max_size))
    try:
        return unpack(payload)
    except WireError:
        raise
    except Exception as exc:  # any decoder failure is one kind of rejection
        raise WireError("not_msgpack", str(exc)[:120])


def parse_batch(obj, unpack=unpackb, max_inflated=MAX_INFLATED, max_samples=MAX_SAMPLES):
    """Validate a decoded data message and expand it to absolute timestamps and values.

    `max_samples` bounds the work a single message can cause: deflate makes a 30 KB payload of
    repeated zero deltas worth hundreds of thousands of samples."""
    _need(isinstance(obj, list), "bad_header", "message is not an array")
    _need(len(obj) in (8, 9), "bad_header", "array of %d elements" % len(obj))
    if not (obj[0] == VERSION and _is_int(obj[0])):
        raise WireError("bad_version", "version %s" % _brief(obj[0]))
    flags, device, boot, seq, dict_epoch, t0, body = obj[1:8]
    if not (_is_uint(flags, 8) and not flags & ~FLAG_DEFLATE):
        raise WireError("bad_header", "flags %s" % _brief(flags))
    _need(valid_device_id(device), "bad_header", "device id")
    for name, value in (("boot", boot), ("seq", seq), ("dict", dict_epoch), ("t0", t0)):
        _need(_is_uint(value), "bad_header", "%s is not an unsigned integer" % name)
    ext = obj[8] if len(obj) == 9 else {}
    _need(isinstance(ext, dict), "bad_header", "ext is not a map")
    _check_ext(ext)
    if flags & FLAG_DEFLATE:
        _need(isinstance(body, bytes), "bad_body", "compressed body is not bin")
        try:
            body = unpack(inflate(body, max_inflated))
        except WireError:
            raise
        except Exception as exc:
            raise WireError("bad_body", "inflated body: %s" % str(exc)[:120])
    _need(isinstance(body, list) and len(body) == 2, "bad_body", "body is not [ticks, columns]")
    deltas, raw_columns = body
    _need(isinstance(deltas, list) and 0 < len(deltas) <= MAX_TICKS, "bad_body", "tick count")
    ticks = []
    ts = t0
    for delta in deltas:
        if not _is_uint(delta, 32):
            raise WireError("bad_body", "tick delta %s" % _brief(delta))
        ts += delta
        ticks.append(ts)
    _need(isinstance(raw_columns, list), "bad_body", "columns is not an array")
    total = 0
    for column in raw_columns:
        total += len(column) - 2 if isinstance(column, list) else 0
    _need(total <= max_samples, "too_many_samples", "%d samples > limit %d" % (total, max_samples))
    n = len(ticks)
    full = (1 << n) - 1
    every = list(range(n))  # the tick indexes of a column present at every tick (shared: read only)
    columns = []
    seen = set()
    for column in raw_columns:  # the checks written out: this loop runs for every column of every batch
        if not (isinstance(column, list) and len(column) >= 3):
            raise WireError("bad_column", "column shape")
        sid, mask = column[0], column[1]
        if not (type(sid) is int and 0 <= sid < 4294967296 and sid not in seen):
            raise WireError("bad_column", "series id %s" % _brief(sid))
        seen.add(sid)
        if not (type(mask) is int and 0 <= mask <= full):
            raise WireError("bad_column", "mask of series %d" % sid)
        indexes = every if mask == 0 or mask == full else [i for i in range(n) if mask >> i & 1]
        values = column[2:]
        if len(values) != len(indexes):
            raise WireError("bad_column", "series %d: %d values for %d ticks" % (sid, len(values), len(indexes)))
        columns.append((sid, indexes, _undelta(sid, values)))
    return Batch(flags, device, boot, seq, dict_epoch, ticks, columns, ext)


def _check_ext(ext):
    """The known ext fields must be well formed; unknown ones are ignored (forward compatibility)."""
    lost = ext.get("lost")
    if lost is not None:
        _need(isinstance(lost, list) and len(lost) == 2 and _is_uint(lost[0]) and _is_uint(lost[1]),
              "bad_ext", "lost must be [batches, samples]")
    groups = ext.get("iv")
    if groups is not None:
        _need(isinstance(groups, list) and len(groups) <= 4096, "bad_ext", "iv must be a list")
        for group in groups:
            _need(isinstance(group, list) and len(group) >= 2 and all([_is_uint(x, 32) for x in group]),
                  "bad_ext", "iv entries are [interval_ms, series_id, ...]")


def _undelta(sid, values):
    if len(values) == 1 and type(values[0]) is int:  # one tick per column: nothing to add up
        return values
    if accumulate is not None and type(values[0]) is int and len(set(map(type, values))) == 1:
        return list(accumulate(values))  # plain integers (the msgpack decoders give no int subclass)
    out = []
    prev = None
    for value in values:
        if isinstance(value, list):
            _need(len(value) >= 3 and all([_is_int(x) for x in value]), "bad_value", "series %d histogram" % sid)
            if prev is not None:
                _need(isinstance(prev, list) and len(prev) == len(value), "bad_value", "series %d histogram shape" % sid)
                value = [prev[i] + value[i] for i in range(len(value))]
        else:
            if not _is_int(value):
                raise WireError("bad_value", "series %d value %s" % (sid, _brief(value)))
            if prev is not None:
                _need(not isinstance(prev, list), "bad_value", "series %d mixes kinds" % sid)
                value = prev + value
        out.append(value)
        prev = value
    return out


def parse_birth(obj, max_series=10000, record=SeriesInfo):
    """Validate a decoded birth map; its series become `record(name, kind, unit, attrs, scale, bounds,
    source, start)` (plain SeriesInfo; a gateway passes its own, interned across the fleet)."""
    _need(isinstance(obj, dict), "bad_birth", "birth is not a map")
    if obj.get("v") != VERSION or not _is_int(obj.get("v")):
        raise WireError("bad_version", "birth version %s" % _brief(obj.get("v")))
    _need(valid_device_id(obj.get("dev")), "bad_birth", "device id")
    _need(isinstance(obj.get("boot"), str), "bad_birth", "boot id")
    for key in ("bt", "btime", "dict"):
        _need(_is_uint(obj.get(key)), "bad_birth", "%s is not an unsigned integer" % key)
    _need(_is_uint(obj.get("base", 0)) and obj.get("base", 0) <= obj["dict"], "bad_birth", "base epoch")
    for key in ("agent", "os", "platform", "host", "hid", "osd"):  # free text for OTLP resource attributes
        _need(isinstance(obj.get(key, ""), str) and len(obj.get(key, "")) <= 255, "bad_birth", key)
    _need(_is_uint(obj.get("ast", 0)), "bad_birth", "ast is not an unsigned integer")
    starts = obj.get("st", [])
    _need(isinstance(starts, list) and all([isinstance(g, list) and len(g) >= 2 and all([_is_uint(x) for x in g])
                                             for g in starts]), "bad_birth", "st must be [[start_ms, id, ...], ...]")
    _need(isinstance(obj.get("collectors", {}), dict), "bad_birth", "collectors is not a map")
    raw = obj.get("series")
    _need(isinstance(raw, list), "bad_birth", "series list")
    _need(len(raw) <= max_series, "too_many_series", "%d series > limit %d" % (len(raw), max_series))
    begins = {}  # series id -> when it started counting, for those that did not at boot
    for group in starts:
        for sid in group[1:]:
            begins[sid] = group[0]
    entries = {}
    for entry in raw:
        _need(isinstance(entry, list) and len(entry) == 8, "bad_birth", "series entry shape")
        sid, name, unit, kind, attrs, scale, bounds, source = entry
        if not (_is_uint(sid, 32) and sid not in entries):
            raise WireError("bad_birth", "series id %s" % _brief(sid))
        _need(isinstance(name, str) and 0 < len(name) <= 255, "bad_birth", "series %d name" % sid)
        _need(isinstance(unit, str) and len(unit) <= 63, "bad_birth", "series %d unit" % sid)
        if not (_is_int(kind) and kind in (GAUGE, COUNTER, HISTOGRAM)):
            raise WireError("bad_birth", "series %d kind %s" % (sid, _brief(kind)))
        _need(isinstance(attrs, dict) and all([isinstance(k, str) and isinstance(v, (str, int)) for k, v in attrs.items()]), "bad_birth", "series %d attributes" % sid)
        _need(isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0 and scale == scale and scale != float("inf"), "bad_birth", "series %d scale" % sid)
        if kind == HISTOGRAM:
            _need(isinstance(bounds, list) and all([isinstance(b, (int, float)) for b in bounds]), "bad_birth", "series %d bounds" % sid)
        entries[sid] = entry
    series = {}  # records made once all of it is valid: a refused birth makes none (and interns nothing)
    for sid in entries:
        _, name, unit, kind, attrs, scale, bounds, source = entries[sid]
        series[sid] = record(name, kind, unit, attrs, scale, bounds if kind == HISTOGRAM else None,
                             source if isinstance(source, str) else "", begins.get(sid, 0) if kind != GAUGE else 0)
    return Birth(obj, series)
