"""The gateway's core, independent of MQTT: births, data and state messages in, acks and receipts out.

`on_data` receives each data message with an `ack` callable and guarantees it is called exactly
when the batch is settled: exported, a duplicate of one exported, rejected as bad input, or
released (below).

Delivery receipts (docs/wire-format.md, docs/reliability.md) tell the device what is settled, so
that it keeps every batch until then and sends again what is not: after each accepted export
request one receipt per device and boot lists the batches exported; a duplicate is receipted
again (the device did not hear the first receipt); a batch refused as bad input whose header could
be read is receipted as refused (the device counts it lost).

A batch whose birth is not known yet is parked for up to `birth_wait_s` (births travel on another
connection, and after a restart the broker may deliver queued data first), and the device is asked
for its births (a receipt saying "wanted", at most every REBIRTH_EVERY_S per device). Each birth
that comes retries the device's parked batches; one that still does not resolve waits on. Past the
wait it is released: acked to the broker without export and without receipt, so the device, which
still has it, sends it again (an agent that trusts the broker's PUBACK loses it: counted).

Per accepted export request, in this order: the receiver accepted it -> `_exported` marks its
batches in the dedupe tracker and appends them to the state log (fsync) -> the receipts -> the
MQTT acks. A crash between the receiver's answer and the state write can export that one request
twice.

Replicas of a share group learn from each other's receipts (`on_receipt`): what another replica
exported is a duplicate here too, and is left out of any export still being retried. A duplicate is
known from its header alone: its body is not decoded (under overload devices re-send, and each
re-send used to cost a whole decode).

Per device the core also keeps what the fleet view shows (`status`): last tick seen, lag, seq,
counts, gaps, duplicates and the agent's own drop count (batch ext `lost`), published through
`publish_status(device, doc)` on the first batch and then at most every STATUS_EVERY_S.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge_wire.decode import WireError
from edge_wire.receipt import EXPORTED, REFUSED, WANTED, encode_receipt, parse_receipt, runs_of
from gateway.decode.dedupe import SeqTracker
from gateway.decode.resolve import Dictionaries, Rejected, Resolved, Settled, UnknownDictionary
from gateway.decode.state import GatewayState
from gateway.export.pipeline import ExportPipeline, Item
from gateway.ops.metrics import GatewayMetrics

Ack = Callable[[], None]
log = logging.getLogger("gateway")

MAX_PARKED = 64  # per device
MAX_PARKED_TOTAL = 1024  # QoS 0 data is not bounded by Receive Maximum
STATUS_EVERY_S = 10.0
REBIRTH_EVERY_S = 5.0  # per device
SWEEP_EVERY_S = 60.0  # looking for devices to forget
LIMIT_LOG_EVERY_S = 600.0  # a limit that keeps being reached: one line per limit this often
BATCH_LINES_PER_S = 20  # one log line per batch up to this rate; above it, a summary every 10 s


class DeviceStatus:
    """What the gateway knows about one device, as published under `<prefix>/_status/<device>`."""

    __slots__ = ("last_seen", "lag_ms", "seq", "batches", "samples", "gaps", "duplicates", "lost", "published",
                 "dirty", "active")

    def __init__(self) -> None:
        self.active = time.monotonic()  # the last message from the device (forget_after counts from it)
        self.last_seen = 0.0  # unix seconds of the newest batch's last tick
        self.lag_ms = 0
        self.seq = -1
        self.batches = 0
        self.samples = 0
        self.gaps = 0
        self.duplicates = 0
        self.lost = (0, 0)
        self.published = None  # time.monotonic() of the last publication
        self.dirty = False

    def doc(self) -> dict:
        return {"last_seen": self.last_seen, "lag_ms": self.lag_ms, "seq": self.seq, "batches": self.batches,
                "samples": self.samples, "gaps": self.gaps, "duplicates": self.duplicates, "lost": list(self.lost)}


def reported_lost(ext: dict) -> tuple[int, int]:
    """The agent's cumulative drop count from a batch's ext: `lost` = [batches, samples]."""
    lost = ext.get("lost")
    if (isinstance(lost, list) and len(lost) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63 for v in lost)):
        return lost[0], lost[1]
    return 0, 0


class Gateway:
    events = None  # gateway.convert.events.DeviceEvents: device events as OTLP logs, when an exporter takes them
    late_after_s = 60.0  # a sample exported later than this after it was measured is counted as late

    def __init__(self, dictionaries: Dictionaries, pipeline: ExportPipeline, metrics: GatewayMetrics,
                 dedupe: SeqTracker | None = None, birth_wait_s: float = 10.0, state: GatewayState | None = None,
                 publish_status: Callable[[str, dict], bool] | None = None, receipts: bool = True,
                 forget_after_s: float = 0.0) -> None:
        self.dictionaries = dictionaries
        self.pipeline = pipeline
        self.metrics = metrics
        self.dedupe = dedupe
        self.birth_wait_s = birth_wait_s
        self.state = state
        self.publish_status = publish_status  # (device, doc) -> published; set once MQTT is up
        self.publish_receipt: Callable[[str, bytes], bool] | None = None  # (device, payload); set with MQTT
        self.receipts = receipts
        self._inflight: dict[tuple[str, int, int], list[Ack]] = {}
        self._parked: dict[str, list[tuple[float, bytes, Ack]]] = {}
        self._status: dict[str, DeviceStatus] = {}
        self._wanted: dict[str, float] = {}  # device -> when its births may be asked for again
        self._state_log_at = 0.0
        self.forget_after_s = forget_after_s  # 0: never forget a device
        self._swept = time.monotonic()
        self._limit_log_at: dict[str, float] = {}
        self._evicted = 0  # dedupe streams evicted, as last seen
        self._batch_lines = _LineBudget(BATCH_LINES_PER_S)
        self._lock = threading.Lock()
        pipeline.on_exported = self._exported
        pipeline.settled_elsewhere = self._settled_elsewhere

    def restore(self) -> tuple[int, int]:
        """Load --state-dir: saved births into the dictionaries, the dedupe log into the tracker.

        Returns (births, batches replayed from the log)."""
        if self.state is None:
            return 0, 0
        births = replayed = 0
        try:
            for device, payload in self.state.births():
                try:
                    birth = self.dictionaries.add_birth(device, payload)
                except Rejected:
                    continue
                self.state.remember_birth(device, payload, birth)
                births += 1
            replayed = self.state.load_dedupe(self.dedupe) if self.dedupe is not None else 0
        except OSError as exc:  # unreadable, or full (the compaction at start writes): run on, say so
            self.state_error("restore", exc)
        return births, replayed

    # ------------------------------------------------------------ births and state

    def on_birth(self, device: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained birth
        self.metrics.births.inc()
        try:
            birth = self.dictionaries.add_birth(device, payload)
        except Rejected as exc:
            self.metrics.births_rejected.inc(reason=exc.reason)
            if exc.reason == "too_many_devices":
                self.limit_reached("devices", "device limit reached: %s devices known; births of new devices are "
                                   "refused until silent ones are forgotten (--max-devices, --forget-after)"
                                   % exc.detail.removeprefix("limit "), device=device)
                return
            _event(logging.WARNING, "birth rejected", "birth_rejected", device=device, reason=exc.reason, detail=exc.detail)
            return
        with self._lock:
            self._device(device).active = time.monotonic()
        _event(logging.INFO, "birth", "birth", device=device, boot=birth.boot_id, dict=birth.dict_epoch,
               series=len(birth.series), agent=birth.agent)
        if self.events is not None:
            self.events.birth(device, birth)
        if self.state is not None:
            try:
                self.state.save_birth(device, payload, birth)  # before the ack: a crash cannot forget it
            except OSError as exc:
                self.state_error("birth", exc)
        with self._lock:
            parked = self._parked.pop(device, [])
        for deadline, data, ack in parked:  # each waits on until its own deadline if this birth is not its
            self.on_data(device, data, ack, parked=deadline)

    def on_state(self, device: str, payload: bytes) -> None:
        state = payload.decode("utf-8", "replace")[:32]
        _event(logging.INFO, "device " + (state or "cleared"), "state", device=device, state=state)
        self.metrics.online.set(1 if state == "online" else 0, device=device)
        with self._lock:
            self._device(device).active = time.monotonic()
        if self.events is not None:
            self.events.state(device, state)

    def on_ack(self, device: str, payload: bytes) -> None:
        """A device's command acknowledgement: applied or rejected, as a device event."""
        if self.events is not None:
            self.events.command(device, payload)

    # ------------------------------------------------------------ data

    def on_receipt(self, device: str, payload: bytes) -> None:
        """Another replica's receipt: what it exported is settled here too (what it refused is judged here)."""
        try:
            boot, runs = parse_receipt(payload)
        except WireError:
            return
        if self.dedupe is None:
            return
        self.metrics.receipts_seen.inc()
        with self._lock:
            for first, count, kind in runs:
                # what it refused is not marked: a resend here is refused again, not receipted as exported
                if kind == EXPORTED:
                    for seq in range(first, first + min(count, 4096)):
                        self.dedupe.mark(device, boot, seq)

    def on_data(self, device: str, payload: bytes, ack: Ack, parked: float | None = None) -> None:
        """A data message; `parked` is the deadline of a batch that was waiting for its birth."""
        if parked is None:
            self.metrics.received.inc()
        try:
            resolved = self.dictionaries.resolve(device, payload, self._seen)
        except Settled as exc:  # exported before: the device missed the receipt, or sent it again meanwhile
            self._duplicate(device, exc.key, ack)
            return
        except UnknownDictionary as exc:
            self._want_births(device, exc.key)
            if self._park(device, payload, ack, parked):
                return
            self._release(exc, ack)
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
            if waiting is None:  # exported between the header check and now
                self._duplicate(device, key, ack)
            else:
                self.metrics.duplicates.inc()
                with self._lock:
                    self._device(device).duplicates += 1
            return
        if not self.pipeline.submit(Item(resolved, lambda fate: self._settled(resolved, fate))):
            with self._lock:
                self._inflight.pop(key, None)  # stopping: leave it unacked for redelivery

    def _seen(self, key: tuple[str, int, int]) -> bool:
        """Whether batch `key` was exported (here, or by a replica whose receipt said so)."""
        if self.dedupe is None:
            return False
        with self._lock:
            return self.dedupe.seen(*key)

    def _duplicate(self, device: str, key: tuple[str, int, int], ack: Ack) -> None:
        """A batch exported before: receipted again (the device did not hear the first receipt) and acked."""
        self.metrics.duplicates.inc()
        with self._lock:
            self._device(device).duplicates += 1
        self._receipt(device, key[1], [(key[2], 1, EXPORTED)])
        ack()

    def _exported(self, batches: list[Resolved]) -> None:
        """Called by the pipeline once the receiver accepted a request, before any of its acks."""
        gaps = []
        with self._lock:
            for resolved in batches:
                gap = 0
                if self.dedupe is not None:
                    gap = self.dedupe.mark(*resolved.key, base=resolved.birth.base)
                gaps.append(gap)
        if self.state is not None and self.dedupe is not None:
            try:
                self.state.record([r.key for r in batches], self.dedupe)
            except OSError as exc:  # exported all the same; only a crash could now duplicate it
                self.state_error("dedupe", exc)
        streams: dict[tuple[str, int], list[int]] = {}
        for resolved in batches:
            streams.setdefault((resolved.device, resolved.batch.boot), []).append(resolved.batch.seq)
        for (device, boot), seqs in streams.items():
            self._receipt(device, boot, runs_of(seqs))
        now = time.time()
        for resolved, gap in zip(batches, gaps, strict=True):
            self._account(resolved, gap, now)

    def _account(self, resolved: Resolved, gap: int, now: float) -> None:
        device, batch = resolved.device, resolved.batch
        lag_s = max(0.0, now - resolved.last_tick_ms() / 1000.0)
        self.metrics.exported_batches.inc()
        self.metrics.lag.observe(lag_s)
        # the series exists (at 0) from the device's first batch, so dashboards and alerts see it
        self.metrics.late_samples.inc(resolved.samples() if lag_s > self.late_after_s else 0, device=device)
        if self.events is not None:
            self.events.batch(resolved)
        if gap:
            self.metrics.gaps.inc(gap, device=device)
        lost = reported_lost(batch.ext)
        with self._lock:
            status = self._device(device)
            status.active = time.monotonic()
            status.batches += 1
            status.samples += resolved.samples()
            status.gaps += gap
            newest = batch.seq > status.seq
            if newest:
                status.seq = batch.seq
                status.last_seen = resolved.last_tick_ms() / 1000.0
                status.lag_ms = int(lag_s * 1000)
                self.metrics.last_seen.set(status.last_seen, device=device)
            changed = newest and lost != status.lost
            if changed:
                previous, status.lost = status.lost, lost
            status.dirty = True
        if self._batch_lines.take(resolved.samples()):
            _event(logging.INFO, "batch", "batch", device=device, seq=batch.seq,
                   samples=resolved.samples(), bytes=resolved.size, lag_ms=int(lag_s * 1000))
        if changed:
            self.metrics.lost_batches.set(lost[0], device=device)
            self.metrics.lost_samples.set(lost[1], device=device)
            _event(logging.WARNING if lost[0] > previous[0] else logging.INFO, "device reports lost data", "lost",
                   device=device, seq=batch.seq, batches=lost[0], samples=lost[1],
                   note="cumulative for the agent run" if lost[0] >= previous[0] else "a new agent run")
            if self.events is not None and lost[0] > 0:
                self.events.lost(device, lost[0], lost[1], resolved.last_tick_ms())
        self._maybe_publish(device)

    def _settled(self, resolved: Resolved, fate: str) -> None:
        with self._lock:
            acks = self._inflight.pop(resolved.key, [])
        if fate == "elsewhere":
            self.metrics.duplicates.inc()
        for ack in acks:
            ack()

    def _settled_elsewhere(self, resolved: Resolved) -> bool:
        """Whether another replica exported this batch meanwhile (its receipt was seen)."""
        return self.dedupe is not None and self.dedupe.seen(*resolved.key)

    # ------------------------------------------------------------ receipts

    def _receipt(self, device: str, boot: int, runs: list[tuple[int, int, int]]) -> None:
        if not self.receipts or self.publish_receipt is None:
            return
        if self.publish_receipt(device, encode_receipt(boot, runs)):
            self.metrics.receipts.inc()

    def _want_births(self, device: str, key: tuple[str, int, int] | None) -> None:
        """Ask the device for the births of batch `key`, at most every REBIRTH_EVERY_S."""
        if key is None or not self.receipts:
            return
        now = time.monotonic()
        with self._lock:
            if now < self._wanted.get(device, 0.0):
                return
            self._wanted[device] = now + REBIRTH_EVERY_S
        self.metrics.rebirths.inc()
        self._receipt(device, key[1], [(key[2], 1, WANTED)])

    def state_error(self, what: str, exc: OSError) -> None:
        """Count a failed --state-dir write; log it once a minute at most (a full disk fails every request)."""
        self.metrics.state_errors.inc()
        now = time.monotonic()
        with self._lock:
            if now < self._state_log_at:
                return
            self._state_log_at = now + 60.0
        _event(logging.ERROR, "state write failed: %s (exports go on; a crash may now export a batch twice)"
               % (exc.strerror or exc), "state_error", what=what, errors=int(self.metrics.state_errors.value()))

    # ------------------------------------------------------------ device status

    def _device(self, device: str) -> DeviceStatus:
        status = self._status.get(device)
        if status is None:
            status = self._status[device] = DeviceStatus()
        return status

    def status(self, device: str) -> dict | None:
        with self._lock:
            status = self._status.get(device)
            return status.doc() if status else None

    def _maybe_publish(self, device: str, now: float | None = None) -> None:
        if self.publish_status is None:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            status = self._status.get(device)
            if status is None or not status.dirty:
                return
            if status.published is not None and now - status.published < STATUS_EVERY_S:
                return
            doc = status.doc()
            status.published, status.dirty = now, False
        if not self.publish_status(device, doc):
            with self._lock:
                status.published, status.dirty = None, True  # not connected: try again later

    def publish_due(self, now: float | None = None) -> None:
        """Publish the statuses that changed since their last publication, at most every STATUS_EVERY_S."""
        with self._lock:
            devices = [d for d, s in self._status.items() if s.dirty]
        for device in devices:
            self._maybe_publish(device, now)

    def _reject(self, exc: Rejected, ack: Ack) -> None:
        self.metrics.rejected.inc(reason=exc.reason)
        _event(logging.WARNING, "batch rejected", "rejected", device=exc.device, reason=exc.reason, detail=exc.detail)
        if exc.key is not None:  # the device drops it and counts it lost, rather than send it again
            self._receipt(exc.key[0], exc.key[1], [(exc.key[2], 1, REFUSED)])
        ack()  # bad input is settled: redelivering it would not make it better

    def _release(self, exc: Rejected, ack: Ack) -> None:
        self.metrics.released.inc(reason=exc.reason)
        _event(logging.WARNING, "batch released: its dictionary did not come in time; the device sends it again",
               "released", device=exc.device, reason=exc.reason, detail=exc.detail)
        ack()

    # ------------------------------------------------------------ waiting for births

    def _park(self, device: str, payload: bytes, ack: Ack, deadline: float | None = None) -> bool:
        """Park a batch until its birth comes; `deadline` is that of a batch parked before (it keeps
        its place and its deadline, not counted against the limits again)."""
        now = time.monotonic()
        if deadline is not None:
            if deadline <= now:
                return False
            with self._lock:
                self._parked.setdefault(device, []).append((deadline, payload, ack))
            return True
        if self.birth_wait_s <= 0:
            return False
        with self._lock:
            total = sum(len(v) for v in self._parked.values())
            parked = self._parked.setdefault(device, [])
            if len(parked) >= MAX_PARKED or total >= MAX_PARKED_TOTAL:
                if not parked:
                    del self._parked[device]
                return False
            parked.append((now + self.birth_wait_s, payload, ack))
            return True

    def expire(self, now: float | None = None) -> None:
        """Release parked batches whose birth did not come in time; call about once a second."""
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
            self.on_data(device, payload, ack, parked=0.0)  # a last try, then released
        self.publish_due(now=None)
        suppressed = self._batch_lines.summary()
        if suppressed:
            _event(logging.INFO, "more batches exported in the last %d s than one line each can show (%d a second)"
                   % (suppressed[2], BATCH_LINES_PER_S), "batches", batches=suppressed[0], samples=suppressed[1])
        if now - self._swept >= SWEEP_EVERY_S:
            self._swept = now
            self.sweep(now)

    def sweep(self, now: float | None = None) -> list[str]:
        """Forget the devices silent for longer than `forget_after_s`: dictionaries, dedupe state, status
        and per-device metrics (a device that comes back is asked for its birth, like a new one).
        Returns the devices forgotten."""
        now = time.monotonic() if now is None else now
        gone: list[str] = []
        if self.forget_after_s > 0:
            with self._lock:
                gone = [d for d, s in self._status.items() if now - s.active > self.forget_after_s
                        and d not in self._parked]
                for device in gone:
                    del self._status[device]
                    self._wanted.pop(device, None)
            for device in gone:
                self.dictionaries.forget(device)
                self.metrics.forget_device(device)
                if self.events is not None:
                    self.events.forget(device)
            if self.dedupe is not None:
                self.dedupe.forget(gone)
            if gone:
                self.metrics.forgotten.inc(len(gone))
                _event(logging.INFO, "forgot %d devices silent for more than %d s" % (len(gone), self.forget_after_s),
                       "forgotten", devices=len(gone), first=gone[0])
        if self.dedupe is not None and self.dedupe.evicted > self._evicted:
            self.metrics.limits.inc(self.dedupe.evicted - self._evicted, limit="dedupe_streams")
            self._evicted = self.dedupe.evicted
            self.limit_reached("dedupe_streams", "dedupe limit reached: %d streams kept; the least recently used "
                               "are forgotten (a resend of their batches would be exported again)"
                               % self.dedupe.max_streams, count=False)
        return gone

    def limit_reached(self, limit: str, message: str, count: bool = True, **fields: object) -> None:
        """A limit refused something: counted each time, one line per limit every LIMIT_LOG_EVERY_S."""
        if count:
            self.metrics.limits.inc(limit=limit)
        now = time.monotonic()
        with self._lock:
            if now < self._limit_log_at.get(limit, 0.0):
                return
            self._limit_log_at[limit] = now + LIMIT_LOG_EVERY_S
        _event(logging.ERROR, message, "limit_reached", limit=limit, **fields)

    def parked(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._parked.values())


class _LineBudget:
    """Up to `per_s` lines a second (a burst of as many); what is over is counted for a summary."""

    def __init__(self, per_s: int, every_s: float = 10.0) -> None:
        self.per_s = per_s
        self.every_s = every_s
        self.tokens = float(per_s)
        self.at = time.monotonic()
        self.suppressed = 0
        self.samples = 0
        self.since = self.at
        self._lock = threading.Lock()

    def take(self, samples: int) -> bool:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.per_s, self.tokens + (now - self.at) * self.per_s)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            self.suppressed += 1
            self.samples += samples
            return False

    def summary(self) -> tuple[int, int, int] | None:
        """(lines suppressed, their samples, seconds) once every `every_s`, when some were."""
        with self._lock:
            now = time.monotonic()
            if now - self.since < self.every_s:
                return None
            out = (self.suppressed, self.samples, round(now - self.since))
            self.suppressed, self.samples, self.since = 0, 0, now
            return out if out[0] else None


def _event(level: int, message: str, event: str, **fields: object) -> None:
    log.log(level, message, extra={"fields": {"event": event, **fields}})
