"""Duplicate and gap detection on (device, boot, seq).

A batch is remembered once the exporter accepted it. A window of recent sequence numbers per
(device, boot) tells a redelivered batch from a new one; a jump ahead of the highest number seen
is a gap (counted once; a late batch that fills it later is still accepted).

Sequence numbers never repeat for a device (docs/wire-format.md), but an agent restart skips
ahead: the new run starts at its reserved block or at unix seconds * 256. A batch whose agent run
began after the highest number seen (`base` > highest, from its birth) therefore counts as a gap
only the numbers of its own run it skipped (seq - base), not the jump between the runs. The first
batch of a (device, boot) this tracker has never seen counts no gap: batches from before the
gateway knew the stream are not evidence of loss.

This assumes the agent never reuses a sequence number within one boot, which is the agent's
side of the at-least-once contract. `snapshot()` / `restore()` carry the state across a gateway
restart (gateway/state.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class SeqTracker:
    def __init__(self, window: int = 4096, max_streams: int = 100000, gaps: bool = True) -> None:
        self.window = window
        self.max_streams = max_streams
        self.gaps = gaps  # False with shared subscriptions: each replica sees only part of a stream
        self._streams: OrderedDict[tuple[str, int], tuple[int, set[int]]] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, device: str, boot: int, seq: int) -> bool:
        with self._lock:
            stream = self._streams.get((device, boot))
            return stream is not None and seq in stream[1]

    def mark(self, device: str, boot: int, seq: int, base: int | None = None) -> int:
        """Remember an accepted batch; returns how many sequence numbers it skipped (the gap).

        `base` is the first sequence number of the batch's agent run (its birth's `base`)."""
        with self._lock:
            key = (device, boot)
            highest, seen = self._streams.pop(key, (seq - 1, set()))
            if base is not None and highest < base <= seq:
                highest = max(highest, base - 1)  # a new agent run: the jump to its base is no loss
            gap = max(0, seq - highest - 1)
            if seq < highest - self.window:  # far behind: the stream restarted, start over
                highest, seen, gap = seq, set(), 0
            highest = max(highest, seq)
            seen.add(seq)
            if len(seen) > 2 * self.window:
                seen = {s for s in seen if s > highest - self.window}
            self._streams[key] = (highest, seen)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
            return gap if self.gaps else 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)

    def snapshot(self) -> list[list]:
        """Every stream as [device, boot, highest, [[first, last], ...]]: seen numbers as ranges."""
        with self._lock:
            streams = [(k, v[0], sorted(s for s in v[1] if s > v[0] - self.window)) for k, v in self._streams.items()]
        out = []
        for (device, boot), highest, seqs in streams:
            ranges: list[list[int]] = []
            for s in seqs:
                if ranges and ranges[-1][1] == s - 1:
                    ranges[-1][1] = s
                else:
                    ranges.append([s, s])
            out.append([device, boot, highest, ranges])
        return out

    def restore(self, streams: list[list]) -> None:
        """Load what `snapshot()` produced (entries that do not fit the shape are skipped)."""
        with self._lock:
            for entry in streams:
                try:
                    device, boot, highest, ranges = entry
                    seen = {s for first, last in ranges for s in range(max(first, highest - self.window + 1), last + 1)}
                except (TypeError, ValueError):
                    continue
                self._streams[(str(device), int(boot))] = (int(highest), seen)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
