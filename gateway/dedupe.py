"""Duplicate and gap detection on (device, boot, seq).

A batch is remembered once the exporter accepted it. A window of recent sequence numbers per
(device, boot) tells a redelivered batch from a new one; a jump ahead of the highest number seen
is a gap (counted once; a late batch that fills it later is still accepted).

This assumes the agent never reuses a sequence number within one boot, which is the agent's
side of the at-least-once contract.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class SeqTracker:
    def __init__(self, window: int = 4096, max_streams: int = 100000) -> None:
        self.window = window
        self.max_streams = max_streams
        self._streams: OrderedDict[tuple[str, int], tuple[int, set[int]]] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, device: str, boot: int, seq: int) -> bool:
        with self._lock:
            stream = self._streams.get((device, boot))
            return stream is not None and seq in stream[1]

    def mark(self, device: str, boot: int, seq: int) -> int:
        """Remember an accepted batch; returns how many sequence numbers it skipped (the gap)."""
        with self._lock:
            key = (device, boot)
            highest, seen = self._streams.pop(key, (seq - 1, set()))
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
            return gap
