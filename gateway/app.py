"""The gateway's core, independent of MQTT: births, data and state messages in, acks out.

`on_data` receives each data message with an `ack` callable and guarantees it is called exactly
when the batch is settled: exported, a duplicate of one exported, or rejected as bad input. A
batch whose birth is not known yet waits up to `birth_wait_s` for it (after a gateway restart the
broker may deliver queued data before the retained births).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway.decode import Dictionaries, Rejected, Resolved, UnknownDictionary
from gateway.dedupe import SeqTracker
from gateway.metrics import GatewayMetrics
from gateway.pipeline import EXPORTED, ExportPipeline, Item

Ack = Callable[[], None]
log = logging.getLogger("gateway")

MAX_PARKED = 64  # per device
MAX_PARKED_TOTAL = 1024  # QoS 0 data is not bounded by Receive Maximum


class Gateway:
    def __init__(self, dictionaries: Dictionaries, pipeline: ExportPipeline, metrics: GatewayMetrics,
                 dedupe: SeqTracker | None = None, birth_wait_s: float = 10.0) -> None:
        self.dictionaries = dictionaries
        self.pipeline = pipeline
        self.metrics = metrics
        self.dedupe = dedupe
        self.birth_wait_s = birth_wait_s
        self._inflight: dict[tuple[str, int, int], list[Ack]] = {}
        self._parked: dict[str, list[tuple[float, bytes, Ack]]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ births and state

    def on_birth(self, device: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained birth
        self.metrics.births.inc()
        try:
            birth = self.dictionaries.add_birth(device, payload)
        except Rejected as exc:
            self.metrics.births_rejected.inc(reason=exc.reason)
            _event(logging.WARNING, "birth rejected", "birth_rejected", device=device, reason=exc.reason, detail=exc.detail)
            return
        _event(logging.INFO, "birth", "birth", device=device, boot=birth.boot_id, dict=birth.dict_epoch,
               series=len(birth.series), agent=birth.agent)
        with self._lock:
            parked = self._parked.pop(device, [])
        for _, data, ack in parked:
            self.on_data(device, data, ack, parked=True)

    def on_state(self, device: str, payload: bytes) -> None:
        state = payload.decode("utf-8", "replace")[:32]
        _event(logging.INFO, "device " + (state or "cleared"), "state", device=device, state=state)

    # ------------------------------------------------------------ data

    def on_data(self, device: str, payload: bytes, ack: Ack, parked: bool = False) -> None:
        if not parked:
            self.metrics.received.inc()
        try:
            resolved = self.dictionaries.resolve(device, payload)
        except UnknownDictionary as exc:
            if not parked and self._park(device, payload, ack):
                return
            self._reject(exc, ack)
            return
        except Rejected as exc:
            self._reject(exc, ack)
            return
        self.metrics.decoded.inc()
        key = resolved.key
        with self._lock:
            waiting = self._inflight.get(key)
            duplicate = waiting is not None or (self.dedupe is not None and self.dedupe.seen(*key))
            if waiting is not None:
                waiting.append(ack)  # the same batch is being exported: settle both together
            elif not duplicate:
                self._inflight[key] = [ack]
        if duplicate:
            self.metrics.duplicates.inc()
            if waiting is None:
                ack()
            return
        if not self.pipeline.submit(Item(resolved, lambda fate: self._settled(resolved, fate))):
            with self._lock:
                self._inflight.pop(key, None)  # stopping: leave it unacked for redelivery

    def _settled(self, resolved: Resolved, fate: str) -> None:
        gap = 0
        with self._lock:
            if fate == EXPORTED and self.dedupe is not None:
                gap = self.dedupe.mark(*resolved.key)
            acks = self._inflight.pop(resolved.key, [])
        if fate == EXPORTED:
            self.metrics.exported_batches.inc()
            lag_s = max(0.0, time.time() - resolved.last_tick_ms() / 1000.0)
            self.metrics.lag.observe(lag_s)
            if gap:
                self.metrics.gaps.inc(gap, device=resolved.device)
            _event(logging.INFO, "batch", "batch", device=resolved.device, seq=resolved.batch.seq,
                   samples=resolved.samples(), bytes=resolved.size, lag_ms=int(lag_s * 1000))
        for ack in acks:
            ack()

    def _reject(self, exc: Rejected, ack: Ack) -> None:
        self.metrics.rejected.inc(reason=exc.reason)
        _event(logging.WARNING, "batch rejected", "rejected", device=exc.device, reason=exc.reason, detail=exc.detail)
        ack()  # bad input is settled: redelivering it would not make it better

    # ------------------------------------------------------------ waiting for births

    def _park(self, device: str, payload: bytes, ack: Ack) -> bool:
        if self.birth_wait_s <= 0:
            return False
        with self._lock:
            total = sum(len(v) for v in self._parked.values())
            parked = self._parked.setdefault(device, [])
            if len(parked) >= MAX_PARKED or total >= MAX_PARKED_TOTAL:
                if not parked:
                    del self._parked[device]
                return False
            parked.append((time.monotonic() + self.birth_wait_s, payload, ack))
            return True

    def expire(self, now: float | None = None) -> None:
        """Reject parked batches whose birth did not come in time; call about once a second."""
        now = time.monotonic() if now is None else now
        expired = []
        with self._lock:
            for device in list(self._parked):
                keep = []
                for entry in self._parked[device]:
                    (expired if entry[0] <= now else keep).append((device, entry))
                if keep:
                    self._parked[device] = [e for _, e in keep]
                else:
                    del self._parked[device]
        for device, (_, payload, ack) in expired:
            self.on_data(device, payload, ack, parked=True)

    def parked(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._parked.values())


def _event(level: int, message: str, event: str, **fields: object) -> None:
    log.log(level, message, extra={"fields": {"event": event, **fields}})
