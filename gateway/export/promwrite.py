"""Prometheus remote write: the OTLP request the pipeline built, as a remote-write 1.0 WriteRequest.

`to_write_request(otlp_request)` follows OpenTelemetry's Prometheus compatibility rules, as the
Collector's prometheusremotewrite exporter does, so dashboards work whichever path the data took:

- names: the OTLP name with every character outside [a-zA-Z0-9] as `_`, then the unit (`s` ->
  `_seconds`, `By` -> `_bytes`, `ms` -> `_milliseconds`, `X/Y` -> `_X_per_Y`; annotations such as
  `{packets}` are dropped), `_ratio` for a gauge of unit `1`, `_total` for a monotonic Sum:
  `system.cpu.time` (s, Sum) is `system_cpu_time_seconds_total`;
- a non-monotonic Sum and a Gauge are gauges; a Histogram is `_bucket{le}` (cumulative), `_sum`,
  `_count`;
- labels: the point's attributes (same character rule; colliding keys join their values with `;`),
  `job` = service.name (namespace/name when service.namespace is set), `instance` =
  service.instance.id, and per resource a `target_info` sample (value 1) labelled with the other
  resource attributes;
- samples in ms; each series' samples in time order; labels sorted; HELP and unit as metadata.

`RemoteWriteExporter.send(otlp_request)` posts it (protobuf, snappy, the remote-write headers)
and answers like the OTLP exporters: OK, retryable (connection errors, 5xx, 429 with
Retry-After) or not. A refusal (Prometheus rolls a whole request back for one sample it cannot
take — out of order, out of bounds, too old — and answers 400, or 500 "too old sample" in 2.42)
does not take other data with it: the request is sent again per device and, within a device, the
refused oldest part is found by halving; what Prometheus accepts is delivered, what it refuses is
counted as `rejected_points` (logged, not retried).
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import cramjam
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from gateway import __version__
from gateway.convert.prompb import MetricMetadata, WriteRequest
from gateway.export.exporter import OK, RETRYABLE_HTTP, Outcome, post

log = logging.getLogger("gateway.export")

UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds", "us": "microseconds",
    "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes",
    "TiBy": "tebibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes",
    "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams", "Cel": "celsius",
    "Hz": "hertz", "1": "", "%": "percent",
}
PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
RESOURCE_AS_LABELS = ("service.name", "service.namespace", "service.instance.id")
# what Prometheus answers when it refuses samples for good (2.42 answers "too old sample" with a 500)
REFUSALS = ("out of order sample", "out of bounds", "too old sample", "duplicate sample for timestamp")
REFUSED = "refused"


# ---------------------------------------------------------------- names


def _tokens(text: str) -> list[str]:
    out, word = [], []
    for ch in text:
        if ch.isascii() and ch.isalnum():
            word.append(ch)
        elif word:
            out.append("".join(word))
            word = []
    if word:
        out.append("".join(word))
    return out


def metric_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus name of an OTLP metric; `kind` is "counter", "gauge" or "histogram"."""
    tokens = _tokens(name)
    main, _, per = unit.partition("/")
    main = "" if main.startswith("{") else UNITS.get(main, main)
    for suffix in _tokens(main):
        if suffix not in tokens:
            tokens.append(suffix)
    per = "" if per.startswith("{") else PER_UNITS.get(per, per)
    if per and "per" not in tokens:
        tokens += ["per"] + _tokens(per)
    if kind == "counter":
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if kind == "gauge" and unit == "1" and "ratio" not in tokens:
        tokens.append("ratio")
    joined = "_".join(tokens)
    return "_" + joined if joined[:1].isdigit() else joined


def label_name(key: str) -> str:
    sane = "".join(ch if ch.isascii() and (ch.isalnum() or ch == "_") else "_" for ch in key)
    if sane[:1].isdigit():
        return "key_" + sane
    if sane.startswith("_") and not sane.startswith("__"):
        return "key" + sane
    return sane


def _labels(attributes, base: dict[str, str]) -> dict[str, str]:
    """Attributes as labels (colliding keys: values joined by `;` in key order), then `base`."""
    merged: dict[str, list[tuple[str, str]]] = {}
    for kv in attributes:
        merged.setdefault(label_name(kv.key), []).append((kv.key, _text(kv.value)))
    labels = {name: ";".join(v for _, v in sorted(values)) for name, values in merged.items()}
    labels.update(base)
    return labels


def _text(any_value) -> str:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return ""
    value = getattr(any_value, kind)
    if kind == "bool_value":
        return "true" if value else "false"
    if kind == "double_value":
        return _float(value)
    return str(value) if kind != "string_value" else value


def _float(value: float) -> str:
    """As Go's strconv.FormatFloat(v, 'f', -1, 64) prints it (Prometheus' `le` values): 1e-06 is 0.000001."""
    if value == float("inf"):
        return "+Inf"
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


# ---------------------------------------------------------------- conversion


@dataclass
class Converted:
    """Series (label tuple -> [(ts_ms, value)]) per resource, plus the metadata."""

    resources: list[dict[tuple, list[tuple[int, float]]]] = field(default_factory=list)
    metadata: dict[str, tuple[int, str, str]] = field(default_factory=dict)

    def samples(self) -> int:
        return sum(len(points) for series in self.resources for points in series.values())


def convert(request: ExportMetricsServiceRequest) -> Converted:
    if hasattr(request, "message"):  # serialised already (gateway/convert/otlpwire.py): parsed once, here
        request = request.message()
    out = Converted()
    for rm in request.resource_metrics:
        resource = {kv.key: _text(kv.value) for kv in rm.resource.attributes}
        base = {}
        service = resource.get("service.name", "")
        if service:
            namespace = resource.get("service.namespace")
            base["job"] = namespace + "/" + service if namespace else service
        if resource.get("service.instance.id"):
            base["instance"] = resource["service.instance.id"]
        series: dict[tuple, list[tuple[int, float]]] = {}
        newest = 0
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                newest = max(newest, _metric(metric, base, series, out.metadata))
        info = {label_name(k): v for k, v in resource.items() if k not in RESOURCE_AS_LABELS and v}
        if info and series:
            info.update(base, __name__="target_info")
            series.setdefault(tuple(sorted(info.items())), []).append((newest, 1.0))
            out.metadata["target_info"] = (MetricMetadata.GAUGE, "Target metadata", "")
        out.resources.append(series)
    return out


def _metric(metric, base: dict, series: dict, metadata: dict) -> int:
    """Adds the metric's samples to `series`; returns its newest timestamp (ms)."""
    kind = metric.WhichOneof("data")
    newest = 0

    def add(name: str, labels: dict, t_ns: int, value: float) -> None:
        nonlocal newest
        t = t_ns // 1_000_000
        newest = max(newest, t)
        labels["__name__"] = name
        series.setdefault(tuple(sorted(labels.items())), []).append((t, value))

    if kind == "histogram":
        name = metric_name(metric.name, metric.unit, "histogram")
        metadata[name] = (MetricMetadata.HISTOGRAM, metric.description, metric.unit)
        for point in metric.histogram.data_points:
            labels = _labels(point.attributes, base)
            running = 0
            for bound, count in zip(list(point.explicit_bounds) + [float("inf")], point.bucket_counts, strict=False):
                running += count
                add(name + "_bucket", dict(labels, le=_float(bound)), point.time_unix_nano, float(running))
            add(name + "_sum", dict(labels), point.time_unix_nano, point.sum)
            add(name + "_count", dict(labels), point.time_unix_nano, float(point.count))
        return newest
    if kind == "sum":
        counter = metric.sum.is_monotonic
        points = metric.sum.data_points
    elif kind == "gauge":
        counter, points = False, metric.gauge.data_points
    else:
        return 0  # summaries and exponential histograms: none of ours
    name = metric_name(metric.name, metric.unit, "counter" if counter else "gauge")
    metadata[name] = (MetricMetadata.COUNTER if counter else MetricMetadata.GAUGE, metric.description, metric.unit)
    for point in points:
        value = point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int)
        add(name, _labels(point.attributes, base), point.time_unix_nano, value)
    return newest


def write_request(resources: list[dict], metadata: dict, since: int | None = None,
                  until: int | None = None) -> tuple[WriteRequest, int]:
    """The WriteRequest of `resources`' samples with since <= ts <= until; (request, samples)."""
    request = WriteRequest()
    count = 0
    for series in resources:
        for labels, points in series.items():
            chosen = sorted(p for p in points if (since is None or p[0] >= since) and (until is None or p[0] <= until))
            if not chosen:
                continue
            ts = request.timeseries.add()
            for name, value in labels:
                ts.labels.add(name=name, value=value)
            for t, value in chosen:
                ts.samples.add(timestamp=t, value=value)
            count += len(chosen)
    for name, (type_, help_, unit) in sorted(metadata.items()):
        request.metadata.add(type=type_, metric_family_name=name, help=help_, unit=unit)
    return request, count


# ---------------------------------------------------------------- exporter


@dataclass
class RemoteWriteConfig:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    username: str | None = None
    password: Callable[[], str] | None = None  # read at each request: a rotated file is picked up
    bearer_token: Callable[[], str] | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure_skip_verify: bool = False


def secret(value: str | None, path: str | None, what: str) -> Callable[[], str] | None:
    """A secret given as a value (flag or environment) or as a file, read when it is needed."""
    if value and path:
        raise ValueError("%s: give the value or the file, not both" % what)
    if path:
        if not os.access(path, os.R_OK):
            raise ValueError("%s file %s cannot be read" % (what, path))

        def read() -> str:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()

        return read
    return (lambda: value) if value else None


class RemoteWriteExporter:
    """POST snappy-compressed WriteRequests to a remote-write receiver (Prometheus with
    --web.enable-remote-write-receiver, Mimir, Thanos, VictoriaMetrics, ...)."""

    def __init__(self, config: RemoteWriteConfig) -> None:
        if not config.url.startswith(("http://", "https://")):
            raise ValueError("--prometheus-remote-write: %r is not an http(s) URL" % config.url)
        if config.bearer_token and (config.username or config.password):
            raise ValueError("Prometheus remote write: basic auth or a bearer token, not both")
        self.config = config
        self._context = None
        if config.url.startswith("https:"):
            self._context = ssl.create_default_context(cafile=config.ca)
            if config.cert:
                self._context.load_cert_chain(config.cert, config.key)
            if config.insecure_skip_verify:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE

    def send(self, request: ExportMetricsServiceRequest) -> Outcome:
        converted = convert(request)
        total = converted.samples()
        if not total:
            return OK
        outcome = self._post(write_request(converted.resources, converted.metadata)[0])
        if outcome.ok or outcome.reason != REFUSED:
            return outcome
        rejected = 0
        for resource in converted.resources:  # one device's refused samples must not take the others'
            result = self._deliver([resource], converted.metadata)
            if not result.ok:
                return result
            rejected += result.rejected_points
        if rejected:
            log.warning("Prometheus refused %d of %d samples (out of order or too old)", rejected, total,
                        extra={"fields": {"event": "remote_write_refused", "samples": rejected}})
        if rejected == total:
            return Outcome(False, False, REFUSED, rejected_points=rejected)
        return Outcome(True, rejected_points=rejected)

    def _deliver(self, resources: list[dict], metadata: dict) -> Outcome:
        """Send `resources`; on a 400 find the oldest part Prometheus refuses by halving, deliver the rest."""
        request, count = write_request(resources, metadata)
        if not count:
            return OK
        outcome = self._post(request)
        if outcome.ok or outcome.reason != REFUSED:
            return outcome
        times = sorted({t for series in resources for points in series.values() for t, _ in points})
        lo, hi, rejected = 0, len(times), 0
        while lo < hi:  # [lo, hi) undecided; refusals are taken to be a prefix in time (too old)
            mid = (lo + hi) // 2
            request, _ = write_request(resources, metadata, times[mid], times[hi - 1])
            outcome = self._post(request)
            if outcome.ok:
                hi = mid
            elif outcome.reason == REFUSED:
                rejected += write_request(resources, {}, times[lo], times[mid])[1]
                lo = mid + 1
            else:
                return outcome
        return Outcome(True, rejected_points=rejected)

    def _post(self, request: WriteRequest) -> Outcome:
        body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
        headers = {
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
            "User-Agent": "edge-gateway/" + __version__,
        }
        headers.update(self.config.headers)
        try:
            if self.config.bearer_token:
                headers["Authorization"] = "Bearer " + self.config.bearer_token()
            elif self.config.username:
                password = self.config.password() if self.config.password else ""
                token = base64.b64encode(("%s:%s" % (self.config.username, password)).encode()).decode()
                headers["Authorization"] = "Basic " + token
        except OSError as exc:
            log.error("remote write credentials: %s", exc, extra={"fields": {"event": "remote_write_credentials"}})
            return Outcome(False, True, "credentials")
        return post(self.config.url, body, headers, self.config.timeout_s, self._context, self._answer)[0]

    @staticmethod
    def _answer(code: int, detail: str) -> Outcome | None:
        """Remote write 1.0: 5xx and 429 are retried, other 4xx not; a refusal is neither (see above)."""
        if code == 400 or (code >= 500 and any(phrase in detail for phrase in REFUSALS)):
            log.info("remote write refused (%d): %s", code, detail, extra={"fields": {"event": "remote_write_refused"}})
            return Outcome(False, False, REFUSED)
        if code >= 500 and code not in RETRYABLE_HTTP:
            return Outcome(False, True, "http_%d" % code)
        return None  # 429, 502-504 (with Retry-After) and the other 4xx as OTLP/HTTP has them

    def close(self) -> None:
        pass
