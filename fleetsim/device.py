"""One simulated device: the agent's publishing and delivery behaviour, on a shared event loop.

What it shares with `edge-agent run` (edge_agent/agent.py, lifecycle.py), code included:

- the wire format: births by `encode_birth`, batches with the agent's encoder (replay.py);
- topics, QoS and retain flags: birth retained QoS 1 (an earlier run's birth not retained), data
  QoS 1, state `online` retained with the will `offline`, receipts subscribed at QoS 0;
- delivery: the agent's own `Outbox` with receipts on: a batch leaves when the gateway's receipt
  says it was exported, one batch is out at a time, a batch without a receipt goes again after
  5 s (doubling, at most 60 s) and at once after a reconnect; a "wanted" receipt gets the births
  that cover the batch (at most every 10 s);
- sequence numbers: each agent run starts at max(last + 1, unix seconds x 256), and its dictionary
  epoch and `base` are that first number; a restart keeps the undelivered batches (as a spool
  does) and publishes the old run's birth before them; a reboot also takes a new boot id.

Every batch made is noted in `made` (boot tag, seq, samples, first and last tick), and its fate
(exported, refused or dropped, still pending) in `fate`, for the report.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from edge_agent.store.outbox import Outbox
from edge_wire.birth import boot_tag, encode_birth
from edge_wire.decode import WireError
from edge_wire.receipt import EXPORTED, parse_receipt
from fleetsim import mqtt
from fleetsim.replay import Recording, batch_payload

REBIRTH_EVERY_S = 10.0


class SimOutbox(Outbox):
    """The agent's outbox, telling which batches it dropped (refused by a gateway, or overflow)."""

    def __init__(self, max_batches: int, on_drop) -> None:
        Outbox.__init__(self, max_batches)
        self.on_drop = on_drop

    def drop(self, batch) -> None:
        Outbox.drop(self, batch)
        self.on_drop(batch)


class Device:
    def __init__(self, index: int, name: str, recording: Recording, brokers: list[tuple[str, int]],
                 prefix: str = "edge", batch_s: float = 10.0, max_batches: int = 360) -> None:
        self.index = index
        self.name = name
        self.recording = recording
        self.prefix = prefix
        self.batch_s = batch_s
        topics = {kind: "%s/%s/%s" % (prefix, name, kind) for kind in ("birth", "data", "state", "delivery")}
        self.topics = topics
        self.client = mqtt.Client(name, brokers, will=(topics["state"], b"offline", 1, True))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_puback = self.pump
        self.outbox = SimOutbox(max_batches, self._dropped)
        self.outbox.receipts = True
        self.value_class = index % recording.classes
        self.batch_index = (index * 7) % recording.positions  # where in the recording this device starts
        self.last_seq = 0
        self.births: dict[int, bytes] = {}  # run base -> its birth (kept while its batches are undelivered)
        self.made: list[tuple[int, int, int, int, int]] = []  # (boot tag, seq, samples, first tick, last tick)
        self.fate: dict[tuple[int, int], str] = {}  # (boot, seq) -> exported | dropped (absent: pending)
        self.boots = 0
        self.runs = 0
        self.rebirth_at = 0.0
        self.sends = 0  # data publishes (a batch sent again counts again)
        self._reboot()
        self._new_run()
        self._timer: asyncio.TimerHandle | None = None
        self._resend: tuple[float, asyncio.TimerHandle] | None = None  # (due, handle) of the next look
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------ lifecycle

    def _reboot(self) -> None:
        self.boot_id = str(uuid.uuid4())
        self.boot = boot_tag(self.boot_id)
        self.boot_time_ms = int(time.time() * 1000) - 3_600_000
        self.boots += 1

    def _new_run(self) -> None:
        self.base = max(self.last_seq + 1, int(time.time()) * 256)
        self.seq = self.base
        self.runs += 1
        self.agent_start_ms = int(time.time() * 1000)
        raw = self.recording.birth
        info = {"device": self.name, "boot_id": self.boot_id, "boot_time_ms": self.boot_time_ms,
                "agent": "fleetsim " + str(raw.get("agent", "")), "os": raw.get("os", "linux"),
                "platform": raw.get("platform", ""), "collectors": raw.get("collectors", {}),
                "interval_ms": raw.get("interval_ms"), "sampling": raw.get("sampling", {}), "host": self.name,
                "host_id": uuid.uuid5(uuid.NAMESPACE_DNS, self.name).hex, "os_description": raw.get("osd", ""),
                "start_ms": self.agent_start_ms}
        self.births[self.base] = encode_birth(info, self.recording.table(self.base))

    def start(self, loop: asyncio.AbstractEventLoop, first_flush_s: float) -> None:
        self._task = loop.create_task(self.client.run())
        self._timer = loop.call_later(first_flush_s, self._flush_due)

    def stop_batches(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def restart(self, reboot: bool = False, down_s: float = 1.0) -> None:
        """The agent stops (its undelivered batches kept, as with a spool) and starts again."""
        self.client.stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.sleep(down_s)
        for entry in self.outbox.entries:  # the broker forgot the clean session: all of them again
            entry.token = None
        self.last_seq = self.seq - 1
        if reboot:
            self._reboot()
        self._new_run()
        self.client._stopping = False
        self._task = asyncio.get_running_loop().create_task(self.client.run())

    async def close(self) -> None:
        self.stop_batches()
        self.client.stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # ------------------------------------------------------------ batches

    def _flush_due(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.batch_s, self._flush_due)
        self.flush()

    def flush(self) -> None:
        body, offsets, samples = self.recording.body(self.batch_index, self.value_class)
        self.batch_index += 1
        last = int(time.time() * 1000)
        t0 = last - offsets[-1]
        lost = self.outbox.lost()
        payload = batch_payload(body, self.name, self.boot, self.seq, self.base, t0,
                                {"lost": list(lost)} if lost[0] else None)
        self.made.append((self.boot, self.seq, samples, t0, last))
        self.outbox.push(self.seq, payload, samples)
        self.outbox.entries[-1].boot = self.boot
        self.seq += 1
        self.pump()

    def _dropped(self, entry) -> None:
        self.fate[(getattr(entry, "boot", self.boot), entry.seq)] = "dropped"

    # ------------------------------------------------------------ delivery (agent.pump, lifecycle.announce)

    def pump(self) -> None:
        client = self.client
        if not client.connected:
            return
        now = _mono_ms()
        self.outbox.collect_acks(client.acked, now)
        for entry in self.outbox.unsent(1, now):
            token = client.publish(self.topics["data"], entry.payload, 1, False)
            if token is None:
                break
            entry.token = token
            entry.sent_ms = now
            entry.tries += 1
            self.sends += 1
        for entry in self.outbox.entries:  # the next look: when the oldest may be due again
            if entry.token == -1:
                wait = min(self.outbox.resend_ms << min(max(entry.tries - 1, 0), 8), 60000)
                due = (entry.sent_ms + wait) / 1000 + 0.01
                if self._resend is None or self._resend[0] > due:  # one timer per device
                    if self._resend is not None:
                        self._resend[1].cancel()
                    handle = asyncio.get_running_loop().call_later(max(0.05, due - now / 1000), self._resend_due)
                    self._resend = (due, handle)
            break

    def _resend_due(self) -> None:
        self._resend = None
        self.pump()

    def _on_connect(self) -> None:
        for entry in self.outbox.entries:  # what the broker held may be gone: again now
            if entry.token == -1:
                entry.sent_ms = -120000
                entry.tries = 0
            elif entry.token is not None:
                entry.token = None
        self.outbox.waiting_ms = None
        client = self.client
        client.publish(self.topics["state"], b"online", 1, True)
        client.subscribe(self.topics["delivery"], 0)
        for base in self._bases_pending():
            if base != self.base:
                client.publish(self.topics["birth"], self.births[base], 1, False)
        client.publish(self.topics["birth"], self.births[self.base], 1, True)
        self.pump()

    def _bases_pending(self) -> list[int]:
        bases = sorted(self.births)
        keep = {self.base}
        for entry in self.outbox.entries:
            keep.add(max([b for b in bases if b <= entry.seq], default=self.base))
        for base in bases:
            if base not in keep:
                del self.births[base]
        return sorted(keep)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.topics["delivery"]:
            return
        try:
            boot, runs = parse_receipt(payload)
        except WireError:
            return
        for first, count, kind in runs:
            if kind == EXPORTED:
                for entry in self.outbox.entries:
                    if first <= entry.seq < first + count and getattr(entry, "boot", boot) == boot:
                        self.fate[(boot, entry.seq)] = "exported"
        wanted = self.outbox.receipt(payload)
        if wanted is not None and time.monotonic() >= self.rebirth_at:
            self.rebirth_at = time.monotonic() + REBIRTH_EVERY_S
            for base in sorted(self.births, reverse=True):
                if base <= wanted:
                    self.client.publish(self.topics["birth"], self.births[base], 1, base == self.base)
                    break
        self.pump()


def _mono_ms() -> int:
    return int(time.monotonic() * 1000)
