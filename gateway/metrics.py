"""The gateway's own metrics, rendered in the Prometheus text exposition format (0.0.4).

A tiny registry: counters and gauges with optional labels, and one histogram type. All updates
take a lock, so the MQTT thread, the exporter threads and the HTTP thread can share them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

PREFIX = "edge_gateway_"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = ['%s="%s"' % (n, _escape(v)) for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, labels
        self._values: dict[tuple[str, ...], float] = {} if labels else {(): 0}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(str(labels[n]) for n in self.labelnames), 0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return ["%s%s %s" % (self.name, _labels(self.labelnames, k), _number(v)) for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], float] | None = None) -> None:
        super().__init__(name, help)
        self._read = read

    def set(self, value: float) -> None:
        with self._lock:
            self._values[()] = value

    def value(self, **labels: str) -> float:
        return self._read() if self._read else super().value()

    def samples(self) -> list[str]:
        return ["%s %s" % (self.name, _number(self.value()))]


class LabeledGauge(Counter):
    """A gauge per label set, e.g. per device."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            self._values[key] = value


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help: str, bounds: tuple[float, ...]) -> None:
        self.name, self.help, self.bounds = name, help, bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def samples(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        lines, running = [], 0
        for bound, n in zip(self.bounds + (math.inf,), counts, strict=True):
            running += n
            lines.append('%s_bucket{le="%s"} %d' % (self.name, _number(bound), running))
        lines.append("%s_sum %s" % (self.name, repr(total)))
        lines.append("%s_count %d" % (self.name, running))
        return lines


class GatewayMetrics:
    """Every metric the gateway exposes, as attributes, plus `render()` for /metrics."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0,
                 devices: Callable[[], float] = lambda: 0) -> None:
        p = PREFIX
        self.received = Counter(p + "batches_received_total", "Data messages received from MQTT")
        self.decoded = Counter(p + "batches_decoded_total", "Data batches decoded and resolved")
        self.rejected = Counter(p + "batches_rejected_total", "Data batches rejected, by reason", ("reason",))
        self.births = Counter(p + "births_received_total", "Birth messages received")
        self.births_rejected = Counter(p + "births_rejected_total", "Birth messages rejected, by reason", ("reason",))
        self.duplicates = Counter(p + "batches_duplicate_total", "Data batches dropped as duplicates of (device, boot, seq)")
        self.gaps = Counter(p + "batch_gaps_total", "Sequence numbers skipped, by device", ("device",))
        self.exported_batches = Counter(p + "batches_exported_total", "Data batches accepted by the exporter")
        self.samples = Counter(p + "samples_exported_total", "Samples (data points) accepted by the exporter")
        self.dropped = Counter(p + "samples_dropped_total", "Samples dropped after a non-retryable export failure")
        self.export_requests = Counter(p + "export_requests_total", "Export requests sent successfully")
        self.export_failures = Counter(p + "export_failures_total", "Failed export attempts, by reason", ("reason",))
        self.retries = Counter(p + "export_retries_total", "Export attempts retried after a retryable answer")
        self.resent = Counter(p + "batches_resent_total", "Batches sent to the receiver again after an attempt "
                              "whose fate is unknown (it may store them twice, identical)", ("reason",))
        self.samples_resent = Counter(p + "samples_resent_total", "Samples in those batches")
        self.receipts = Counter(p + "receipts_published_total", "Delivery receipts published to devices")
        self.receipts_seen = Counter(p + "receipts_seen_total", "Receipts of other replicas of the share group, "
                                     "whose batches this replica then does not export")
        self.rebirths = Counter(p + "rebirth_requests_total", "Receipts asking a device for the dictionary "
                                "(births) of a batch")
        self.released = Counter(p + "batches_released_total", "Batches acked to the broker unexported and without "
                                "a receipt (their dictionary did not come in time): the agent sends them again",
                                ("reason",))
        self.lost_batches = LabeledGauge(p + "device_lost_batches", "Batches the device's agent dropped from its "
                                         "buffer, as it last reported (cumulative per agent run)", ("device",))
        self.lost_samples = LabeledGauge(p + "device_lost_samples", "Samples in those batches", ("device",))
        self.state_errors = Counter(p + "state_errors_total", "Failed writes to --state-dir")
        self.queue_depth = Gauge(p + "queue_depth", "Batches waiting for the exporter", queue_depth)
        self.queue_capacity = Gauge(p + "queue_capacity", "Capacity of the export queue")
        self.devices = Gauge(p + "devices_seen", "Devices with a known birth dictionary", devices)
        self.connected = Gauge(p + "mqtt_connected", "1 while connected to the broker")
        self.lag = Histogram(p + "lag_seconds", "End-to-end lag: export accepted minus the batch's last tick",
                             (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600))
        self.all = [v for v in vars(self).values() if hasattr(v, "samples")]

    def render(self) -> str:
        lines = []
        for metric in self.all:
            lines.append("# HELP %s %s" % (metric.name, metric.help))
            lines.append("# TYPE %s %s" % (metric.name, metric.kind))
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"
