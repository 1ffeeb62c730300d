"""The bounded queue between MQTT intake and the exporter thread(s), with batching.

`submit` blocks while the queue is full (backpressure). A worker takes up to `max_batches`
queued batches (lingering briefly for more), converts them into one OTLP request (protobuf bytes
written directly, gateway/convert/otlpwire.py), sends it with retries, then reports each item's fate
through its `done` callback:

- "exported": accepted by the receiver; the caller acks the MQTT message. Before any of those
  callbacks, `on_exported(resolved batches)` runs once for the whole request (the gateway marks
  them as exported and makes that durable there, so one fsync covers a request);
- "dropped":  a non-retryable failure or bad data; counted, and acked so it is not redelivered;
- "elsewhere": before an attempt, `settled_elsewhere(resolved)` said another replica of the share
  group exported it (its receipt was seen): it is left out of the request and acked as a duplicate;
- nothing at all when the pipeline stops mid-retry: the message stays unacked and the broker
  redelivers it to the persistent session later.

A retry after an attempt whose fate is unknown (a timeout, a connection broken after the request
went out: export.UNCERTAIN) may store those batches twice at the receiver, with identical
timestamps and values: every such re-send is counted (`batches_resent_total{reason}`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.convert.otlpwire import encode
from gateway.decode.resolve import Resolved
from gateway.export.exporter import UNCERTAIN, Exporter, Outcome, RetryPolicy, send_with_retry
from gateway.ops.metrics import GatewayMetrics

EXPORTED = "exported"
DROPPED = "dropped"
ELSEWHERE = "elsewhere"

log = logging.getLogger("gateway.export")


@dataclass
class Item:
    resolved: Resolved
    done: Callable[[str], None]


class ExportPipeline:
    def __init__(self, exporter: Exporter, metrics: GatewayMetrics, queue_size: int = 64, max_batches: int = 32,
                 linger_s: float = 0.05, retry: RetryPolicy | None = None, workers: int = 1) -> None:
        self.exporter = exporter
        self.metrics = metrics
        self.queue: queue.Queue[Item] = queue.Queue(maxsize=queue_size)
        self.max_batches = max_batches
        self.linger_s = linger_s
        self.retry = retry or RetryPolicy()
        self.stopping = threading.Event()
        self.on_exported: Callable[[list[Resolved]], None] | None = None
        self.settled_elsewhere: Callable[[Resolved], bool] | None = None
        self._threads = [threading.Thread(target=self._run, name="exporter-%d" % i, daemon=True)
                         for i in range(workers)]
        self.metrics.queue_capacity.set(queue_size)

    def depth(self) -> int:
        return self.queue.qsize()

    def healthy(self) -> bool:
        return all(thread.is_alive() for thread in self._threads) and not self.stopping.is_set()

    def start(self) -> ExportPipeline:
        for thread in self._threads:
            thread.start()
        return self

    def submit(self, item: Item, timeout: float | None = None) -> bool:
        """Queue one batch, blocking while the queue is full; False after `timeout` or when stopping."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stopping.is_set():
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                return False
            try:
                self.queue.put(item, timeout=wait)
                return True
            except queue.Full:
                continue
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Let the workers flush what is queued for up to `timeout`, then abandon the rest (unacked)."""
        deadline = time.monotonic() + timeout
        while self.queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stopping.set()
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self.exporter.close()

    # ------------------------------------------------------------ worker

    def _take(self) -> list[Item]:
        try:
            items = [self.queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.linger_s
        while len(items) < self.max_batches:
            try:
                items.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return items

    def _run(self) -> None:
        while not self.stopping.is_set():
            items = self._take()
            try:
                if items:
                    self._export(items)
            except Exception:  # a bug must not stop the exporter; the batches stay unacked
                self.metrics.export_failures.inc(reason="internal")
                log.exception("export crashed", extra={"fields": {"event": "export_crashed"}})

    def _export(self, items: list[Item]) -> None:
        good = self._pending(items)
        if not good:
            return
        try:
            request = encode(i.resolved for i in good)
        except ValueError:
            good = [item for item in good if self._convertible(item)]
            if not good:
                return
            request = encode(i.resolved for i in good)
        last: list[Outcome] = []

        def on_retry(outcome: Outcome, delay: float) -> None:
            last[:] = [outcome]
            self._on_retry(outcome, delay)

        def refresh() -> object:
            nonlocal good, request
            left = self._pending(good)
            if not left:
                return None
            reason = last[0].reason if last else ""
            if reason in UNCERTAIN:  # the last attempt may have been stored: this one may double it
                self.metrics.resent.inc(len(left), reason=reason)
                self.metrics.samples_resent.inc(sum(i.resolved.samples() for i in left))
            if len(left) != len(good):
                good = left
                request = encode(i.resolved for i in good)
            return request

        outcome = send_with_retry(self.exporter, request, self.retry, self.stopping, on_retry, refresh)
        if not good or outcome.reason == "settled":
            return
        samples = sum(i.resolved.samples() for i in good)
        if outcome.ok:
            self.metrics.export_requests.inc()
            self.metrics.samples.inc(samples - outcome.rejected_points)
            if outcome.rejected_points:
                self.metrics.dropped.inc(outcome.rejected_points)
            fate = EXPORTED
            if self.on_exported is not None:
                self.on_exported([item.resolved for item in good])
        elif outcome.retryable:
            return  # stopping: leave the messages unacked for redelivery
        else:
            self.metrics.export_failures.inc(reason=outcome.reason)
            self.metrics.dropped.inc(samples)
            log.error("export failed, %d batches dropped", len(good), extra={"fields": {
                "event": "export_failed", "reason": outcome.reason, "samples": samples}})
            fate = DROPPED
        for item in good:
            item.done(fate)

    def _pending(self, items: list[Item]) -> list[Item]:
        """The items no other replica has exported (those are settled here as ELSEWHERE)."""
        if self.settled_elsewhere is None:
            return items
        left = []
        for item in items:
            if self.settled_elsewhere(item.resolved):
                item.done(ELSEWHERE)
            else:
                left.append(item)
        return left

    def _convertible(self, item: Item) -> bool:
        """Whether one batch converts; a batch that does not is dropped on its own."""
        try:
            encode([item.resolved])
            return True
        except ValueError as exc:
            self.metrics.rejected.inc(reason="convert")
            log.warning("batch dropped: %s", exc, extra={"fields": {
                "event": "rejected", "device": item.resolved.device, "reason": "convert"}})
            item.done(DROPPED)
            return False

    def _on_retry(self, outcome: Outcome, delay: float) -> None:
        self.metrics.export_failures.inc(reason=outcome.reason)
        self.metrics.retries.inc()
        log.warning("export retry in %.2f s", delay, extra={"fields": {
            "event": "export_retry", "reason": outcome.reason, "delay_s": round(delay, 3)}})
