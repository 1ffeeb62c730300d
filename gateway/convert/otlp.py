"""Resolved batches -> one OTLP ExportMetricsServiceRequest. `to_request` is the only public entry.

One ResourceMetrics per device (and boot), one ScopeMetrics "edge-telemetry", one Metric per
(name, type, unit) with a data point per series and tick. Types, units and descriptions follow the
Collector's hostmetrics receiver (gateway/convert/conventions.py, docs/metrics.md): counters become
cumulative monotonic Sums, gauges Gauges or, where the convention says so (memory), cumulative
non-monotonic Sums; histograms cumulative explicit-bucket Histograms. A cumulative point starts at
its series' start: the device's boot time for the kernel's counters, the moment given in the
birth (`st`) for counters that start with their collector. Values are `integer * scale`: integral
scales stay integers (as_int) unless the result leaves int64 (a 64-bit byte counter can), then
they become doubles.

Besides the device's series, each batch gives `edge.sampling.interval` (the base interval, and
the stretched ones) and `edge.agent.lost.batches|samples` (what the agent reports it dropped,
cumulative since the agent's start), at the batch's last tick.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from edge_wire import COUNTER, GAUGE, HISTOGRAM
from gateway import __version__
from gateway.convert import conventions
from gateway.convert.conventions import HISTOGRAM_T, SUM, UPDOWN, Presenter
from gateway.decode.records import SeriesRecord
from gateway.decode.resolve import Resolved

SCOPE = "edge-telemetry"
INTERVAL_METRIC = "edge.sampling.interval"
SERVICE = "edge-agent"
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
CUMULATIVE = pb.AGGREGATION_TEMPORALITY_CUMULATIVE


def to_request(batches: Iterable[Resolved]) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resources: dict[tuple[str, str], tuple[pb.ScopeMetrics, dict]] = {}
    for resolved in batches:
        birth = resolved.birth
        entry = resources.get((birth.device, birth.boot_id))
        if entry is None:
            rm = request.resource_metrics.add()
            _resource(rm, birth)
            scope = rm.scope_metrics.add()
            scope.scope.name = SCOPE
            scope.scope.version = __version__
            entry = resources[(birth.device, birth.boot_id)] = (scope, {})
        scope, metrics = entry
        presenter = Presenter(birth.series)
        boot_ns = birth.boot_time_ms * 1_000_000
        ticks = resolved.batch.ticks
        for series, indexes, values in resolved.points:
            attrs = presenter.attrs(series)
            if attrs is None:
                continue
            metric = _metric_for(scope, metrics, series.name, series.kind, series.unit)
            start_ns = series.start * 1_000_000 if series.start else boot_ns
            try:
                _points(metric, series, attrs, [ticks[i] * 1_000_000 for i in indexes], values, start_ns)
            except (ValueError, TypeError, OverflowError) as exc:
                raise ValueError("device %s, series %s: %s" % (birth.device, series.key, exc)) from exc
        _intervals(scope, metrics, resolved)
        _lost(scope, metrics, resolved)
    return request


def _metric_for(scope: pb.ScopeMetrics, metrics: dict, name: str, kind: int, unit: str) -> pb.Metric:
    convention = conventions.convention(name, kind)
    unit = conventions.unit(name, kind, unit)
    key = (name, convention.type, unit)
    metric = metrics.get(key)
    if metric is None:
        metric = metrics[key] = scope.metrics.add(name=name, unit=unit, description=convention.description)
        if convention.type in (SUM, UPDOWN):
            metric.sum.aggregation_temporality = CUMULATIVE
            metric.sum.is_monotonic = convention.type == SUM
        elif convention.type == HISTOGRAM_T:
            metric.histogram.aggregation_temporality = CUMULATIVE
        else:
            metric.gauge.SetInParent()
    return metric


def _lost(scope: pb.ScopeMetrics, metrics: dict, resolved: Resolved) -> None:
    """`edge.agent.lost.batches|samples`: the agent's own drop count (batch ext `lost`), cumulative
    since the agent started (the birth's `ast`; its boot time for an agent that does not say)."""
    lost = resolved.batch.ext.get("lost") or [0, 0]
    birth = resolved.birth
    start = (birth.agent_start_ms or birth.boot_time_ms) * 1_000_000
    t = resolved.batch.ticks[-1] * 1_000_000
    for name, value in (("edge.agent.lost.batches", lost[0]), ("edge.agent.lost.samples", lost[1])):
        metric = _metric_for(scope, metrics, name, COUNTER, conventions.CATALOG[name].unit)
        metric.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=max(t, start), as_int=value)


def _intervals(scope: pb.ScopeMetrics, metrics: dict, resolved: Resolved) -> None:
    """`edge.sampling.interval`: the device's base interval, and the series the sampler stretched.

    The base interval (also the resource attribute `edge.sampling.interval_ms`) is a point without
    attributes; a series whose
    samples are further apart than that (adaptive policy, load back-off) is listed in the batch's
    `ext.iv`, and gets a point here, at the batch's last tick, with the series' own name and
    attributes as attributes (`metric.name`, ...). Downstream, a gap no longer than this interval
    is sampling; a longer one is a fault.
    """
    t = resolved.batch.ticks[-1] * 1_000_000
    base = resolved.birth.interval_ms
    groups = resolved.batch.ext.get("iv") or []
    if not groups and not isinstance(base, int):
        return
    metric = _metric_for(scope, metrics, INTERVAL_METRIC, GAUGE, "ms")
    if isinstance(base, int) and not isinstance(base, bool) and base >= 0:
        metric.gauge.data_points.add(time_unix_nano=t, as_int=base)  # the base: no metric.name
    series = resolved.birth.series
    for group in groups:
        for sid in group[1:]:
            known = series.get(sid)
            if known is None:
                continue
            point = metric.gauge.data_points.add(time_unix_nano=t, as_int=group[0])
            _attributes(point.attributes, dict(known.attrs, **{"metric.name": known.name}))


def _resource(rm: pb.ResourceMetrics, birth) -> None:
    _attributes(rm.resource.attributes, resource_attributes(birth))


def resource_attributes(birth) -> dict:
    """The device's OTLP resource (metrics and logs alike): who it is, its OS and the agent."""
    attrs = {
        "service.name": SERVICE,
        "service.instance.id": birth.device,
        "service.version": birth.agent,
        "device.id": birth.device,
        "host.name": birth.host or birth.device,
        "host.id": birth.host_id,
        "os.type": birth.os.lower(),
        "os.description": birth.os_description,
        "process.runtime.description": birth.platform,
        "host.boot.id": birth.boot_id,
        "edge.sampling.interval_ms": birth.interval_ms,
    }
    return {k: v for k, v in attrs.items() if v is not None and v != ""}


def _attributes(target, attrs: dict) -> None:
    for key in attrs:
        value = attrs[key]
        kv = target.add(key=key)
        if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
            kv.value.int_value = value
        else:
            kv.value.string_value = str(value)


def _points(metric: pb.Metric, series: SeriesRecord, attrs: dict, times: list[int], values: list, start_ns: int) -> None:
    if series.kind == HISTOGRAM:
        for t, value in zip(times, values, strict=True):
            point = metric.histogram.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=t)
            _attributes(point.attributes, attrs)
            point.count = value[0]
            point.sum = _scaled(value[1], series.scale)
            point.bucket_counts.extend(value[2:])
            point.explicit_bounds.extend(series.bounds)
        return
    cumulative = metric.WhichOneof("data") == "sum"
    points = metric.sum.data_points if cumulative else metric.gauge.data_points
    for t, value in zip(times, values, strict=True):
        point = points.add(time_unix_nano=t)
        if cumulative:
            point.start_time_unix_nano = min(start_ns, t)
        _attributes(point.attributes, attrs)
        _number(point, value, series.scale)


def _number(point: pb.NumberDataPoint, value: int, scale: int | float) -> None:
    if isinstance(scale, int) or scale.is_integer():
        real = value * int(scale)
        if INT64_MIN <= real <= INT64_MAX:
            point.as_int = real
        else:
            point.as_double = float(real)
    else:
        point.as_double = _scaled(value, scale)


def _scaled(value: int, scale: int | float) -> float:
    """`value * scale`, dividing by 1/scale when that is an integer: 12345 * 0.01 -> 123.45, not 123.45000000000002."""
    if isinstance(scale, float) and scale < 1:
        inverse = round(1 / scale)
        if abs(1 / scale - inverse) < 1e-9 * inverse:
            return value / inverse
    return float(value * scale)
