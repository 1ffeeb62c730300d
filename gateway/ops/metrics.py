"""The gateway's own metrics, through prometheus_client, for /metrics (text exposition 0.0.4).

`GatewayMetrics` holds one registry per gateway (tests run several in a process) with every metric
as an attribute, small wrappers that keep the call sites plain (`inc(reason=...)`, `value(...)`),
the client's process and platform collectors (CPU, memory, open files, start time; Python build)
and `edge_gateway_build_info{version,python}`. Every metric has a HELP text; `promtool check
metrics` passes on the output (tests/integration/test_central_stack.py).
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable

import prometheus_client
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway import __version__

PREFIX = "edge_gateway_"
prometheus_client.disable_created_metrics()  # no `_created` series beside each counter


class _Metric:
    def __init__(self, metric, registry: CollectorRegistry, sample: str, labels: tuple[str, ...]) -> None:
        self._metric, self._registry, self._sample, self.labelnames = metric, registry, sample, labels
        self.name = metric._name

    def _child(self, labels: dict):
        return self._metric.labels(**{n: str(labels[n]) for n in self.labelnames}) if self.labelnames else self._metric

    def value(self, **labels: str) -> float:
        found = self._registry.get_sample_value(self._sample, {n: str(labels[n]) for n in self.labelnames})
        return found or 0


class Counter(_Metric):
    def __init__(self, registry: CollectorRegistry, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(prometheus_client.Counter(name, help, labels, registry=registry), registry, name, labels)

    def inc(self, amount: float = 1, **labels: str) -> None:
        self._child(labels).inc(amount)


class Gauge(_Metric):
    """A gauge, optionally with labels (per device), or read from a function at scrape time."""

    def __init__(self, registry: CollectorRegistry, name: str, help: str, labels: tuple[str, ...] = (),
                 read: Callable[[], float] | None = None) -> None:
        super().__init__(prometheus_client.Gauge(name, help, labels, registry=registry), registry, name, labels)
        if read is not None:
            self._metric.set_function(read)

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)


class Histogram(_Metric):
    def __init__(self, registry: CollectorRegistry, name: str, help: str, bounds: tuple[float, ...]) -> None:
        metric = prometheus_client.Histogram(name, help, buckets=bounds, registry=registry)
        super().__init__(metric, registry, name + "_count", ())

    def observe(self, value: float) -> None:
        self._metric.observe(value)

    def count(self) -> int:
        return int(self.value())


class DeviceMetric:
    """A counter or gauge per device whose values live in one dict, exposed by a collector.

    A prometheus_client child per label value costs about 600 bytes (an object, a lock, a value);
    a gateway serving 100 000 devices has six of these per device. Here a device costs a dict entry
    per metric, and `forget(device)` drops it when the device is gone for good."""

    def __init__(self, registry: CollectorRegistry, name: str, help: str, counter: bool = False) -> None:
        self.name = name
        self.help = help
        self.counter = counter
        self.labelnames = ("device",)
        self._values: dict[str, float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def inc(self, amount: float = 1, device: str = "") -> None:
        with self._lock:
            self._values[device] = self._values.get(device, 0) + amount

    def set(self, value: float, device: str = "") -> None:
        with self._lock:
            self._values[device] = value

    def value(self, device: str = "") -> float:
        return self._values.get(device, 0)

    def forget(self, device: str) -> None:
        with self._lock:
            self._values.pop(device, None)

    def __len__(self) -> int:
        return len(self._values)

    def _family(self):
        if self.counter:
            return CounterMetricFamily(self.name.removesuffix("_total"), self.help, labels=self.labelnames)
        return GaugeMetricFamily(self.name, self.help, labels=self.labelnames)

    def describe(self):
        return [self._family()]

    def collect(self):
        family = self._family()
        with self._lock:
            values = list(self._values.items())
        for device, value in values:
            family.add_metric([device], value)
        return [family]


class GatewayMetrics:
    """Every metric the gateway exposes, as attributes, plus `render()` for /metrics."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0,
                 devices: Callable[[], float] = lambda: 0) -> None:
        r = self.registry = CollectorRegistry()
        p = PREFIX
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        build = prometheus_client.Info(p + "build", "The gateway's version and the Python it runs on", registry=r)
        build.info({"version": __version__, "python": platform.python_version()})
        self.received = Counter(r, p + "batches_received_total", "Data messages received from MQTT")
        self.decoded = Counter(r, p + "batches_decoded_total", "Data batches decoded and resolved")
        self.rejected = Counter(r, p + "batches_rejected_total", "Data batches rejected, by reason", ("reason",))
        self.births = Counter(r, p + "births_received_total", "Birth messages received")
        self.births_rejected = Counter(r, p + "births_rejected_total", "Birth messages rejected, by reason", ("reason",))
        self.duplicates = Counter(r, p + "batches_duplicate_total", "Data batches dropped as duplicates of (device, boot, seq)")
        self.gaps = DeviceMetric(r, p + "batch_gaps_total", "Sequence numbers skipped, by device", counter=True)
        self.exported_batches = Counter(r, p + "batches_exported_total", "Data batches accepted by the exporter")
        self.samples = Counter(r, p + "samples_exported_total", "Samples (data points) accepted by the exporter")
        self.dropped = Counter(r, p + "samples_dropped_total", "Samples dropped: a non-retryable export failure, "
                               "or refused by a receiver (partial success, a remote-write 400)")
        self.export_requests = Counter(r, p + "export_requests_total", "Export requests sent successfully")
        self.export_failures = Counter(r, p + "export_failures_total", "Failed export attempts, by reason", ("reason",))
        self.retries = Counter(r, p + "export_retries_total", "Export attempts retried after a retryable answer")
        self.resent = Counter(r, p + "batches_resent_total", "Batches sent to the receiver again after an attempt "
                              "whose fate is unknown (it may store them twice, identical)", ("reason",))
        self.samples_resent = Counter(r, p + "samples_resent_total", "Samples in those batches")
        self.receipts = Counter(r, p + "receipts_published_total", "Delivery receipts published to devices")
        self.receipts_seen = Counter(r, p + "receipts_seen_total", "Receipts of other replicas of the share group, "
                                     "whose batches this replica then does not export")
        self.rebirths = Counter(r, p + "rebirth_requests_total", "Receipts asking a device for the dictionary "
                                "(births) of a batch")
        self.released = Counter(r, p + "batches_released_total", "Batches acked to the broker unexported and without "
                                "a receipt (their dictionary did not come in time): the agent sends them again",
                                ("reason",))
        self.lost_batches = DeviceMetric(r, p + "device_lost_batches", "Batches the device's agent dropped from "
                                         "its buffer, as it last reported (cumulative per agent run)")
        self.lost_samples = DeviceMetric(r, p + "device_lost_samples", "Samples in those batches")
        self.late_samples = DeviceMetric(r, p + "device_late_samples_total", "Samples exported later than "
                                         "--late-after seconds after they were measured (a backlog, a slow link), "
                                         "by device", counter=True)
        self.online = DeviceMetric(r, p + "device_online", "1 while the device's retained state is online, 0 "
                                   "once it is offline (its last will)")
        self.last_seen = DeviceMetric(r, p + "device_last_seen_timestamp_seconds", "Unix time of the newest "
                                      "sample exported for the device")
        self.per_device = (self.gaps, self.lost_batches, self.lost_samples, self.late_samples, self.online,
                           self.last_seen)
        self.limits = Counter(r, p + "limit_reached_total", "Times a limit refused or dropped something, by limit "
                              "(devices: a new device's birth; dedupe_streams: the oldest stream forgotten)",
                              ("limit",))
        self.forgotten = Counter(r, p + "devices_forgotten_total", "Devices forgotten after --forget-after "
                                 "seconds without a message (their dictionaries, dedupe state and metrics)")
        self.state_errors = Counter(r, p + "state_errors_total", "Failed writes to --state-dir")
        self.events = Counter(r, p + "events_total", "Device events logged (OTLP logs), by event", ("event",))
        self.events_exported = Counter(r, p + "events_exported_total", "Device events accepted by the logs exporter")
        self.events_dropped = Counter(r, p + "events_dropped_total", "Device events dropped (queue full, or a "
                                      "non-retryable logs export failure)")
        self.queue_depth = Gauge(r, p + "queue_depth", "Batches waiting for the exporter", read=queue_depth)
        self.queue_capacity = Gauge(r, p + "queue_capacity", "Capacity of the export queue")
        self.devices = Gauge(r, p + "devices_seen", "Devices with a known birth dictionary", read=devices)
        self.connected = Gauge(r, p + "mqtt_connected", "1 while connected to the broker")
        self.lag = Histogram(r, p + "lag_seconds", "End-to-end lag: export accepted minus the batch's last tick",
                             (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600))

    def forget_device(self, device: str) -> None:
        for metric in self.per_device:
            metric.forget(device)

    def render(self) -> str:
        return generate_latest(self.registry).decode()
