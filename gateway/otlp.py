"""Resolved batches -> one OTLP ExportMetricsServiceRequest. `to_request` is the only public entry.

One ResourceMetrics per device (and boot), one ScopeMetrics "edge-telemetry", one Metric per
(name, kind, unit) with a data point per series and tick. Counters become cumulative monotonic
Sums starting at the device's boot time, gauges Gauges, histograms cumulative explicit-bucket
Histograms. Values are `integer * scale`: integral scales stay integers (as_int) unless the result
leaves int64 (a 64-bit byte counter can), then they become doubles.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from edge_agent.model import COUNTER, GAUGE, HISTOGRAM, Series
from gateway import __version__
from gateway.decode import Resolved

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
        start_ns = birth.boot_time_ms * 1_000_000
        ticks = resolved.batch.ticks
        for series, indexes, values in resolved.points:
            key = (series.name, series.kind, series.unit)
            metric = metrics.get(key)
            if metric is None:
                metric = metrics[key] = _metric(scope, series)
            try:
                _points(metric, series, [ticks[i] * 1_000_000 for i in indexes], values, start_ns)
            except (ValueError, TypeError, OverflowError) as exc:
                raise ValueError("device %s, series %s: %s" % (birth.device, series.key, exc)) from exc
        _intervals(scope, metrics, resolved)
    return request


def _intervals(scope: pb.ScopeMetrics, metrics: dict, resolved: Resolved) -> None:
    """`edge.sampling.interval`: the effective send interval of series the sampler stretched.

    The base interval is the resource attribute `edge.sampling.interval_ms`; a series whose
    samples are further apart than that (adaptive policy, load back-off) is listed in the batch's
    `ext.iv`, and gets a point here, at the batch's last tick, with the series' own name and
    attributes as attributes (`metric.name`, ...). Downstream, a gap no longer than this interval
    is sampling; a longer one is a fault.
    """
    groups = resolved.batch.ext.get("iv") or []
    if not groups:
        return
    series = resolved.birth.series
    key = (INTERVAL_METRIC, GAUGE, "ms")
    metric = metrics.get(key)
    if metric is None:
        metric = metrics[key] = scope.metrics.add(name=INTERVAL_METRIC, unit="ms")
        metric.gauge.SetInParent()
    t = resolved.batch.ticks[-1] * 1_000_000
    for group in groups:
        for sid in group[1:]:
            known = series.get(sid)
            if known is None:
                continue
            point = metric.gauge.data_points.add(time_unix_nano=t, as_int=group[0])
            _attributes(point.attributes, dict(known.attrs, **{"metric.name": known.name}))


def _resource(rm: pb.ResourceMetrics, birth) -> None:
    attrs = {
        "host.name": birth.device,
        "service.instance.id": birth.device,
        "service.name": SERVICE,
        "service.version": birth.agent,
        "os.type": birth.os.lower(),
        "os.description": birth.platform,
        "host.boot.id": birth.boot_id,
        "edge.sampling.interval_ms": birth.raw.get("interval_ms"),
    }
    _attributes(rm.resource.attributes, {k: v for k, v in attrs.items() if v is not None and v != ""})


def _attributes(target, attrs: dict) -> None:
    for key in attrs:
        value = attrs[key]
        kv = target.add(key=key)
        if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
            kv.value.int_value = value
        else:
            kv.value.string_value = str(value)


def _metric(scope: pb.ScopeMetrics, series: Series) -> pb.Metric:
    metric = scope.metrics.add(name=series.name, unit=series.unit)
    if series.kind == COUNTER:
        metric.sum.aggregation_temporality = CUMULATIVE
        metric.sum.is_monotonic = True
    elif series.kind == HISTOGRAM:
        metric.histogram.aggregation_temporality = CUMULATIVE
    elif series.kind == GAUGE:
        metric.gauge.SetInParent()
    return metric


def _points(metric: pb.Metric, series: Series, times: list[int], values: list, start_ns: int) -> None:
    if series.kind == HISTOGRAM:
        for t, value in zip(times, values, strict=True):
            point = metric.histogram.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=t)
            _attributes(point.attributes, series.attrs)
            point.count = value[0]
            point.sum = _scaled(value[1], series.scale)
            point.bucket_counts.extend(value[2:])
            point.explicit_bounds.extend(series.bounds)
        return
    counter = series.kind == COUNTER
    points = metric.sum.data_points if counter else metric.gauge.data_points
    for t, value in zip(times, values, strict=True):
        point = points.add(time_unix_nano=t)
        if counter:
            point.start_time_unix_nano = start_ns
        _attributes(point.attributes, series.attrs)
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
