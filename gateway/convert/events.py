"""Device events as OTLP logs, exported beside the metrics with the same resource.

What an operator searches when a device misbehaves, one log record each (`event.name`):

| event | when | severity | attributes |
|---|---|---|---|
| `device.online` / `device.offline` | the retained state (the last will says offline) | INFO / WARN | `edge.state` |
| `device.birth` | a birth: the agent (re)started, reconnected or its series grew | INFO | `host.boot.id`, `edge.dictionary.epoch`, `edge.series`, `service.version`, `edge.collectors` |
| `device.link.up` / `device.link.down` | an interface's operational state changed (netlink backends) | INFO / WARN | `network.interface.name`, `edge.operstate` |
| `device.command.applied` / `device.command.rejected` | the device's command acknowledgement | INFO / WARN | `edge.command.id`, `edge.command.reason` |
| `device.data.lost` | the agent reports batches it had to drop | WARN | `edge.lost.batches`, `edge.lost.samples` |

The records carry the device's resource (as its metrics: service.instance.id, host.name, host.id,
os.description, ...) once its birth is known. `DeviceEvents` queues them (bounded: the oldest go
first when a backend is down for long, counted) and a thread exports them in
ExportLogsServiceRequests through the OTLP exporter of the metrics' configuration (the logs
endpoint, `OTEL_EXPORTER_OTLP_[LOGS_]*`), with the same retry policy. Events are not MQTT messages
the gateway acks, so this path never holds data back; with `$share` replicas each replica sees the
births, states and acks (every replica logs those), while data-derived events come from the replica
that exported the batch.
"""

from __future__ import annotations

import collections
import json
import threading
import time

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1 import logs_pb2

from gateway import __version__
from gateway.convert.otlp import SCOPE, SERVICE, _attributes, resource_attributes
from gateway.export.exporter import Exporter, RetryPolicy, send_with_retry

INFO, WARN = logs_pb2.SEVERITY_NUMBER_INFO, logs_pb2.SEVERITY_NUMBER_WARN
OPERSTATE = "system.linux.network.operstate"
UP = 6  # RFC 2863 operstate "up"


class DeviceEvents:
    def __init__(self, exporter: Exporter, births, metrics=None, retry: RetryPolicy | None = None,
                 capacity: int = 10000, linger_s: float = 1.0, max_records: int = 512) -> None:
        """`births(device)` returns the device's latest birth (wire.Birth) or None."""
        self.exporter = exporter
        self.births = births
        self.metrics = metrics
        self.retry = retry or RetryPolicy()
        self.linger_s = linger_s
        self.max_records = max_records
        self._queue: collections.deque = collections.deque(maxlen=capacity)
        self._links: dict[tuple[str, str], int] = {}  # (device, interface) -> last operstate seen
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)

    # ------------------------------------------------------------ what happened

    def emit(self, device: str, event: str, severity: int, body: str, time_ms: int | None = None,
             **attrs: object) -> None:
        now_ns = time.time_ns()
        record = (device, event, severity, body, time_ms * 1_000_000 if time_ms else now_ns, now_ns,
                  {k.replace("_", "."): v for k, v in attrs.items() if v is not None and v != ""})
        with self._lock:
            if len(self._queue) == self._queue.maxlen and self.metrics is not None:
                self.metrics.events_dropped.inc()
            self._queue.append(record)
        if self.metrics is not None:
            self.metrics.events.inc(event=event)

    def state(self, device: str, state: str) -> None:
        online = state == "online"
        self.emit(device, "device.online" if online else "device.offline", INFO if online else WARN,
                  "device %s is %s" % (device, state or "gone (state cleared)"), edge_state=state)

    def birth(self, device: str, birth) -> None:
        self.emit(device, "device.birth", INFO, "birth: agent %s, %d series, dictionary %d" % (
            birth.agent, len(birth.series), birth.dict_epoch), host_boot_id=birth.boot_id,
            edge_dictionary_epoch=birth.dict_epoch, edge_series=len(birth.series), service_version=birth.agent,
            edge_collectors=json.dumps(birth.collectors, sort_keys=True))

    def lost(self, device: str, batches: int, samples: int, time_ms: int) -> None:
        self.emit(device, "device.data.lost", WARN, "the agent dropped %d batches (%d samples) it could not "
                  "deliver (cumulative since it started)" % (batches, samples), time_ms,
                  edge_lost_batches=batches, edge_lost_samples=samples)

    def command(self, device: str, payload: bytes) -> None:
        """A command acknowledgement (JSON on <prefix>/<device>/ack, docs/commands.md)."""
        try:
            ack = json.loads(payload)
            ok = ack.get("status") == "ok"
        except (ValueError, AttributeError):
            return  # not an ack: nothing to say about a command
        ts = ack.get("ts")
        time_ms = int(ts * 1000) if isinstance(ts, (int, float)) and not isinstance(ts, bool) and ts > 0 else None
        reason = str(ack.get("reason") or "")
        self.emit(device, "device.command.applied" if ok else "device.command.rejected", INFO if ok else WARN,
                  "command %s %s" % (ack.get("id"), "applied" if ok else "rejected: %s %s" % (
                      reason, ack.get("message") or "")), time_ms,
                  edge_command_id=str(ack.get("id") or ""), edge_command_reason=reason)

    def forget(self, device: str) -> None:
        """A device gone for long: its links' last states are no longer kept."""
        with self._lock:
            for key in [k for k in self._links if k[0] == device]:
                del self._links[key]

    def batch(self, resolved) -> None:
        """Link up/down from an exported batch's operstate samples (netlink reports them, and samples
        a link at once when it changes)."""
        if OPERSTATE not in resolved.birth.names:  # most devices' batches need no look
            return
        ticks = resolved.batch.ticks
        for series, indexes, values in resolved.points:
            if series.name != OPERSTATE:
                continue
            iface = str(series.attrs.get("device", ""))
            key = (resolved.device, iface)
            for i, value in zip(indexes, values, strict=True):
                with self._lock:
                    last = self._links.get(key)
                    self._links[key] = value
                if last is not None and (last == UP) != (value == UP):
                    up = value == UP
                    self.emit(resolved.device, "device.link.up" if up else "device.link.down", INFO if up else WARN,
                              "link %s %s" % (iface, "up" if up else "down"), ticks[i],
                              network_interface_name=iface, edge_operstate=value)

    # ------------------------------------------------------------ export

    def start(self) -> DeviceEvents:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline and self._thread.is_alive():
            self._wake.set()
            time.sleep(0.05)
        self.stopping.set()
        self._wake.set()
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self._wake.wait(self.linger_s)
            self._wake.clear()
            while self.pending() and not self.stopping.is_set():
                with self._lock:
                    records = [self._queue.popleft() for _ in range(min(self.max_records, len(self._queue)))]
                outcome = send_with_retry(self.exporter, self.request(records), self.retry, self.stopping)
                if self.metrics is not None:
                    if outcome.ok:
                        self.metrics.events_exported.inc(len(records))
                    else:
                        self.metrics.events_dropped.inc(len(records))

    def request(self, records: list) -> ExportLogsServiceRequest:
        request = ExportLogsServiceRequest()
        scopes: dict[str, logs_pb2.ScopeLogs] = {}
        for device, event, severity, body, t_ns, observed_ns, attrs in records:
            scope = scopes.get(device)
            if scope is None:
                rl = request.resource_logs.add()
                birth = self.births(device)
                resource = resource_attributes(birth) if birth is not None else {
                    "service.name": SERVICE, "service.instance.id": device, "device.id": device}
                _attributes(rl.resource.attributes, resource)
                scope = scopes[device] = rl.scope_logs.add()
                scope.scope.name = SCOPE
                scope.scope.version = __version__
            record = scope.log_records.add(time_unix_nano=t_ns, observed_time_unix_nano=observed_ns,
                                           severity_number=severity, severity_text="WARN" if severity == WARN else "INFO")
            if "event_name" in record.DESCRIPTOR.fields_by_name:
                record.event_name = event
            record.body.string_value = body
            _attributes(record.attributes, dict(attrs, **{"event.name": event}))
        return request

