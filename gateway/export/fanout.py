"""Several exporters as one: OTLP and Prometheus remote write side by side.

`FanOut([a, b]).send(request)` is settled only when every exporter has settled that request: a
batch is acked (ack-after-export) once each backend accepted it or refused it for good, never when
only one has it. Retries (`send_with_retry` calls `send` again with the same request) go only to
the exporters that have not settled it yet, so a backend that was down does not make the other
receive the data twice.
"""

from __future__ import annotations

import logging
import threading

from gateway.export.exporter import OK, Exporter, Outcome

log = logging.getLogger("gateway.export")


class FanOut:
    def __init__(self, exporters: list[Exporter], names: list[str] | None = None) -> None:
        self.exporters = exporters
        self.names = names or [type(e).__name__ for e in exporters]
        # per request in flight: the request itself (so its id is not reused) and who settled it
        self._settled: dict[int, tuple[object, dict[int, Outcome]]] = {}
        self._lock = threading.Lock()

    def send(self, request) -> Outcome:
        with self._lock:
            entry = self._settled.get(id(request))
            if entry is None or entry[0] is not request:
                entry = self._settled[id(request)] = (request, {})
        settled = entry[1]
        pending = None
        for index, exporter in enumerate(self.exporters):
            if index in settled:
                continue
            outcome = exporter.send(request)
            if outcome.ok or not outcome.retryable:
                settled[index] = outcome
                if not outcome.ok:
                    log.error("export to %s failed for good", self.names[index], extra={"fields": {
                        "event": "export_failed", "exporter": self.names[index], "reason": outcome.reason}})
            elif pending is None:
                pending = outcome
        if pending is not None:
            return pending  # send_with_retry waits and calls again; the settled ones are skipped
        with self._lock:
            self._settled.pop(id(request), None)
        outcomes = list(settled.values())
        rejected = max(o.rejected_points for o in outcomes)
        failed = [o for o in outcomes if not o.ok]
        if len(failed) == len(outcomes):
            return Outcome(False, False, failed[0].reason, rejected_points=rejected)
        return Outcome(True, rejected_points=rejected) if rejected else OK

    def forget(self, request) -> None:
        """Drop what is known about a request abandoned mid-retry (the pipeline is stopping)."""
        with self._lock:
            self._settled.pop(id(request), None)

    def close(self) -> None:
        for exporter in self.exporters:
            exporter.close()
