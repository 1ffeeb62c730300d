"""Resolved batches -> the protobuf bytes of one OTLP ExportMetricsServiceRequest, written directly.

The same request as `gateway.convert.otlp.to_request(batches).SerializeToString()` (the reference, built
with opentelemetry-proto's message objects; tests/unit/test_gateway_otlpwire.py checks the two byte for
byte and parses the result with opentelemetry-proto), about five times faster, because nearly all
of a request repeats from batch to batch: a series' attributes, its metric's name, unit, type and
description, and the device's resource never change. Those are serialised once and kept (in the
`otlp` slot of the fleet-wide `SeriesRecord` and of the device's `RunRecord`, gateway/decode/records.py);
per point only the start time, the time and the value are packed (`struct`, all three fixed-width,
so a point's size is known in advance).

Protobuf in brief: a field is a tag (field number << 3 | wire type) then its value; wire type 0 is a
varint, 1 eight bytes (fixed64, sfixed64, double), 2 a varint length then that many bytes (strings,
sub-messages, packed repeated numbers). Fields go out in field-number order, proto3 defaults (0,
"") are left out except inside a oneof (a point's value, an attribute's value), as the protobuf
runtime does.

`encode(batches)` returns an `Encoded` request: `SerializeToString()` gives the bytes (what the HTTP
and gRPC exporters send); `message()` parses them once for an exporter that reads the request
(Prometheus remote write, the JSON-lines file). A batch that cannot be expressed (a time or value
outside what OTLP can carry) raises ValueError, as `to_request` does.
"""

from __future__ import annotations

import struct

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from edge_wire import COUNTER, GAUGE
from gateway import __version__
from gateway.convert import conventions
from gateway.convert.conventions import HISTOGRAM_T, LEGACY_VALUES, PER_CPU, SUM, UPDOWN
from gateway.convert.otlp import INTERVAL_METRIC, SCOPE, resource_attributes
from gateway.decode.records import RunRecord, SeriesRecord
from gateway.decode.resolve import Resolved

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
MASK64 = (1 << 64) - 1
CUMULATIVE = 2  # AGGREGATION_TEMPORALITY_CUMULATIVE

START, TIME, AS_DOUBLE, AS_INT = 0x11, 0x19, 0x21, 0x31  # NumberDataPoint fields 2, 3, 4, 6
DATA_POINT = 0x0A  # Gauge/Sum/Histogram field 1: data_points


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): tag, length, bytes."""
    return bytes((tag,)) + varint(len(payload)) + payload


def _text(tag: int, text: str) -> bytes:
    """A string field, left out when empty (the proto3 default)."""
    return _field(tag, text.encode()) if text else b""


def key_value(key: str, value: object) -> bytes:
    """A KeyValue as otlp._attributes sets it: int64 integers as int_value, anything else as its text."""
    if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        any_value = b"\x18" + varint(int(value) & MASK64)  # AnyValue.int_value (3)
    else:
        any_value = _field(0x0A, str(value).encode())  # AnyValue.string_value (1), even when empty
    return _text(0x0A, key) + _field(0x12, any_value)


def attributes(tag: int, attrs: dict) -> bytes:
    """A repeated KeyValue field (`tag`) holding `attrs`, in their order."""
    return b"".join([_field(tag, key_value(k, attrs[k])) for k in attrs])


# ---------------------------------------------------------------- what is kept per metric, series, device


class MetricHeader:
    """One OTLP metric (name, type, unit): its serialised header and the data field's framing."""

    __slots__ = ("key", "head", "data_tag", "trailer", "cumulative", "histogram")

    def __init__(self, name: str, kind: int, unit: str) -> None:
        convention = conventions.convention(name, kind)
        unit = conventions.unit(name, kind, unit)
        self.key = (name, convention.type, unit)
        self.head = _text(0x0A, name) + _text(0x12, convention.description) + _text(0x1A, unit)
        self.histogram = convention.type == HISTOGRAM_T
        self.cumulative = convention.type in (SUM, UPDOWN, HISTOGRAM_T)
        if convention.type == SUM:
            self.data_tag, self.trailer = 0x3A, b"\x10\x02\x18\x01"  # Metric.sum (7): cumulative, monotonic
        elif convention.type == UPDOWN:
            self.data_tag, self.trailer = 0x3A, b"\x10\x02"
        elif self.histogram:
            self.data_tag, self.trailer = 0x4A, b"\x10\x02"  # Metric.histogram (9): cumulative
        else:
            self.data_tag, self.trailer = 0x2A, b""  # Metric.gauge (5)


_headers: dict[tuple[str, int, str], MetricHeader] = {}


def header(name: str, kind: int, unit: str) -> MetricHeader:
    known = _headers.get((name, kind, unit))
    if known is None:
        known = MetricHeader(name, kind, unit)
        if len(_headers) < 100000:  # names are few; a hostile fleet's inventions are not kept forever
            _headers[(name, kind, unit)] = known
    return known


class SeriesCache:
    """What a SeriesRecord's points share: the metric, the serialised attributes, how values scale.
    `cpu_total` names the metric when the series is a machine total beside which per-CPU series
    are exported (then it is left out, see conventions.Presenter)."""

    __slots__ = ("metric", "attrs", "factor", "inverse", "cpu_total", "heads", "packers")

    def __init__(self, record: SeriesRecord) -> None:
        self.metric = header(record.name, record.kind, record.unit)
        attrs = dict(record.attrs)
        self.cpu_total = None
        if record.name in PER_CPU and attrs.get("cpu") == "total":
            self.cpu_total = record.name
            del attrs["cpu"]  # exported without `cpu` when the device sends no per-CPU series
        for key, value in list(attrs.items()):
            mapped = LEGACY_VALUES.get((record.name, key), {}).get(value)
            if mapped is not None:
                attrs[key] = mapped
        self.attrs = attributes(0x4A if self.metric.histogram else 0x3A, attrs)  # HistogramDataPoint 9 / Number 7
        # each point's field 1 tag and length (its size is fixed): cumulative int, double; gauge int, double
        self.heads = tuple([bytes((DATA_POINT,)) + varint(size + len(self.attrs)) for size in (27, 27, 18, 18)])
        self.packers: dict[int, struct.Struct] = {}  # points per column -> its Struct (the other shape keys are fixed)
        scale = record.scale
        self.factor = self.inverse = None
        if isinstance(scale, int) or scale.is_integer():
            self.factor = int(scale)  # as_int (as_double beyond int64)
        elif scale < 1 and abs(1 / scale - round(1 / scale)) < 1e-9 * round(1 / scale):
            self.inverse = round(1 / scale)  # value / inverse: 12345 * 0.01 -> 123.45 exactly as printed


def _series(record: SeriesRecord) -> SeriesCache:
    cache = record.otlp
    if cache is None:
        cache = record.otlp = SeriesCache(record)
    return cache


class RunCache:
    """Per device run: the serialised resource and scope, the boot time, the per-CPU metrics."""

    __slots__ = ("resource", "boot_ns", "per_cpu")

    def __init__(self, run: RunRecord) -> None:
        resource = _field(0x0A, attributes(0x0A, resource_attributes(run)))  # ResourceMetrics.resource (1)
        self.resource = resource
        self.boot_ns = run.boot_time_ms * 1_000_000
        per_cpu = frozenset(s.name for s in run.series.values() if s.attrs.get("cpu", "total") != "total")
        self.per_cpu = _per_cpu_sets.setdefault(per_cpu, per_cpu) if len(_per_cpu_sets) < 1024 else per_cpu


_per_cpu_sets: dict[frozenset, frozenset] = {}  # one object per distinct set (devices of a kind share it)


def _run(run: RunRecord) -> RunCache:
    cache = run.otlp
    if cache is None:
        cache = run.otlp = RunCache(run)
    return cache


SCOPE_PB = _field(0x0A, _text(0x0A, SCOPE) + _text(0x12, __version__))  # ScopeMetrics.scope (1)


# ---------------------------------------------------------------- points


_packers: dict[tuple[bool, bool, int, int, int], struct.Struct] = {}


def _packer(cumulative: bool, double: bool, points: int, head: int, attrs: int) -> struct.Struct:
    """The Struct that packs a whole column: per point its field tag and length (`head` bytes), start,
    time, value and attributes (`attrs` bytes). One per shape, shared by every series of that shape."""
    key = (cumulative, double, points, head, attrs)
    packer = _packers.get(key)
    if packer is None:
        one = "%ds%sBQB%s%ds" % (head, "BQ" if cumulative else "", "d" if double else "q", attrs)
        packer = struct.Struct("<" + one * points)
        if len(_packers) >= 4096:  # shapes are few; a hostile fleet's many lengths are not kept forever
            _packers.clear()
        _packers[key] = packer
    return packer


def _number_column(cache: SeriesCache, start_ns: int | None, times: list[int], values: list, record) -> bytes:
    """The data points of one column (start_ns None for a gauge), packed by one struct call: the
    arguments are a list of one point's fields repeated, times and values sliced into it."""
    attrs = cache.attrs
    factor = cache.factor
    if factor is not None:
        if factor != 1:
            values = [v * factor for v in values]
        if not (INT64_MIN <= min(values) and max(values) <= INT64_MAX):
            return b"".join([_point(start_ns, t, v, attrs) for t, v in zip(times, values, strict=True)])
        double, tag = False, AS_INT
    else:
        inverse = cache.inverse
        values = [v / inverse for v in values] if inverse else [float(v * record.scale) for v in values]
        double, tag = True, AS_DOUBLE
    k = len(times)
    if start_ns is None:
        if times[0] <= 0:
            return b"".join([_point(None, t, v, attrs) for t, v in zip(times, values, strict=True)])
        head = cache.heads[2 + double]
        if k == 1:
            args = [head, TIME, times[0], tag, values[0], attrs]
        else:
            args = [head, TIME, 0, tag, 0, attrs] * k
            args[2::6] = times
            args[4::6] = values
    else:
        if start_ns <= 0 or start_ns > times[0]:  # a start after a point's time: that point starts at its time
            return b"".join([_point(start_ns, t, v, attrs) for t, v in zip(times, values, strict=True)])
        head = cache.heads[double]
        if k == 1:
            args = [head, START, start_ns, TIME, times[0], tag, values[0], attrs]
        else:
            args = [head, START, start_ns, TIME, 0, tag, 0, attrs] * k
            args[4::8] = times
            args[6::8] = values
    # per series, only the point count varies (a series keeps its kind, scale and attributes)
    packer = cache.packers.get(k)
    if packer is None:
        packer = cache.packers[k] = _packer(start_ns is not None, double, k, len(head), len(attrs))
    return packer.pack(*args)


def _point(start_ns: int | None, t: int, value: int | float, attrs: bytes, strict: bool = False) -> bytes:
    """One NumberDataPoint, field by field (the rare cases: zero times, values beyond int64).
    `strict`: an integer beyond int64 is an error (the points `to_request` sets as_int directly)."""
    if strict and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("%d is beyond int64" % value)
    body = bytearray()
    if start_ns is not None and min(start_ns, t):
        body += struct.pack("<BQ", START, min(start_ns, t))
    if t:
        body += struct.pack("<BQ", TIME, t)
    if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        body += struct.pack("<Bq", AS_INT, value)
    else:
        body += struct.pack("<Bd", AS_DOUBLE, float(value))
    return _field(DATA_POINT, bytes(body) + attrs)


def _histogram_column(cache: SeriesCache, record: SeriesRecord, start_ns: int, times: list[int], values: list) -> bytes:
    bounds = b"".join([struct.pack("<d", b) for b in record.bounds])
    bounds = _field(0x3A, bounds) if bounds else b""  # explicit_bounds (7), packed doubles
    out = []
    for t, value in zip(times, values, strict=True):
        body = bytearray()
        if start_ns:
            body += struct.pack("<BQ", START, start_ns)
        if t:
            body += struct.pack("<BQ", TIME, t)
        if value[0]:
            body += struct.pack("<BQ", 0x21, value[0])  # count (4), fixed64
        body += struct.pack("<Bd", 0x29, _scaled(value[1], record.scale, cache))  # sum (5): optional, always set
        buckets = value[2:]
        if buckets:
            body += _field(0x32, struct.pack("<%dQ" % len(buckets), *buckets))  # bucket_counts (6), packed
        body += bounds
        out.append(_field(DATA_POINT, bytes(body) + cache.attrs))
    return b"".join(out)


def _scaled(value: int, scale: int | float, cache: SeriesCache) -> float:
    if cache.inverse:
        return value / cache.inverse
    return float(value * scale)


# ---------------------------------------------------------------- the request


class Encoded:
    """An ExportMetricsServiceRequest already serialised; `message()` parses it (once) for exporters
    that read the request rather than send its bytes."""

    __slots__ = ("data", "_message")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._message = None

    def SerializeToString(self) -> bytes:  # noqa: N802 (the protobuf message method it stands in for)
        return self.data

    def ByteSize(self) -> int:  # noqa: N802
        return len(self.data)

    def message(self) -> ExportMetricsServiceRequest:
        if self._message is None:
            message = ExportMetricsServiceRequest()
            message.ParseFromString(self.data)
            self._message = message
        return self._message


def as_message(request) -> ExportMetricsServiceRequest:
    """The request as an opentelemetry-proto message, whichever form it came in."""
    return request.message() if isinstance(request, Encoded) else request


class _Resource:
    __slots__ = ("run", "cache", "metrics")

    def __init__(self, run: RunRecord) -> None:
        self.run = run
        self.cache = _run(run)
        self.metrics: dict[MetricHeader, list[bytes]] = {}  # in the order they first appear, as to_request

    def chunks(self, metric: MetricHeader) -> list[bytes]:
        chunks = self.metrics.get(metric)
        if chunks is None:
            chunks = self.metrics[metric] = []
        return chunks


def encode(batches) -> Encoded:
    """One request for `batches` (Resolved): one resource per device and boot, as `to_request`."""
    resources: dict[tuple[str, str], _Resource] = {}
    for resolved in batches:
        run = resolved.birth
        resource = resources.get((run.device, run.boot_id))
        if resource is None:
            resource = resources[(run.device, run.boot_id)] = _Resource(run)
        try:
            _batch(resource, resolved)
        except (ValueError, TypeError, OverflowError, struct.error) as exc:
            raise ValueError("device %s: %s" % (run.device, exc)) from exc
    pieces = []
    for resource in resources.values():
        scope = [SCOPE_PB]
        for metric, chunks in resource.metrics.items():
            data = b"".join(chunks) + metric.trailer
            body = metric.head + bytes((metric.data_tag,)) + varint(len(data)) + data
            scope.append(b"\x12" + varint(len(body)))  # ScopeMetrics.metrics (2)
            scope.append(body)
        scope_len = sum(map(len, scope))
        head = resource.cache.resource + b"\x12" + varint(scope_len)  # ResourceMetrics.scope_metrics (2)
        pieces.append(b"\x0a" + varint(len(head) + scope_len))  # request.resource_metrics (1)
        pieces.append(head)
        pieces.extend(scope)
    return Encoded(b"".join(pieces))


def _batch(resource: _Resource, resolved: Resolved) -> None:
    run_cache = resource.cache
    ticks = resolved.batch.ticks
    tick_ns = [t * 1_000_000 for t in ticks]
    n = len(ticks)
    boot_ns = run_cache.boot_ns
    per_cpu = run_cache.per_cpu
    metrics = resource.metrics
    for record, indexes, values in resolved.points:
        cache = record.otlp
        if cache is None:
            cache = _series(record)
        if cache.cpu_total is not None and cache.cpu_total in per_cpu:
            continue
        metric = cache.metric
        times = tick_ns if len(indexes) == n else [tick_ns[i] for i in indexes]
        start_ns = (record.start * 1_000_000 if record.start else boot_ns) if metric.cumulative else None
        if metric.histogram:
            chunk = _histogram_column(cache, record, start_ns, times, values)
        else:
            chunk = _number_column(cache, start_ns, times, values, record)
        chunks = metrics.get(metric)
        if chunks is None:
            chunks = metrics[metric] = []
        chunks.append(chunk)
    _intervals(resource, resolved, tick_ns[-1])
    _lost(resource, resolved, tick_ns[-1])


def _intervals(resource: _Resource, resolved: Resolved, t: int) -> None:
    """`edge.sampling.interval`, as gateway.convert.otlp._intervals."""
    base = resolved.birth.interval_ms
    groups = resolved.batch.ext.get("iv") or []
    if not groups and not isinstance(base, int):
        return
    chunks = resource.chunks(header(INTERVAL_METRIC, GAUGE, "ms"))
    if isinstance(base, int) and not isinstance(base, bool) and base >= 0:
        chunks.append(_point(None, t, base, b"", strict=True))
    series = resolved.birth.series
    for group in groups:
        for sid in group[1:]:
            known = series.get(sid)
            if known is None:
                continue
            attrs = attributes(0x3A, dict(known.attrs, **{"metric.name": known.name}))
            chunks.append(_point(None, t, group[0], attrs, strict=True))


def _lost(resource: _Resource, resolved: Resolved, t: int) -> None:
    """`edge.agent.lost.batches|samples`, as gateway.convert.otlp._lost."""
    lost = resolved.batch.ext.get("lost") or [0, 0]
    run = resolved.birth
    start = (run.agent_start_ms or run.boot_time_ms) * 1_000_000
    for name, value in (("edge.agent.lost.batches", lost[0]), ("edge.agent.lost.samples", lost[1])):
        metric = header(name, COUNTER, conventions.CATALOG[name].unit)
        resource.chunks(metric).append(_point(start, max(t, start), value, b"", strict=True))

