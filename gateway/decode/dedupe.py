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
restart (gateway/decode/state.py).

Small per stream, whatever its age: (highest, lowest, holes), where `holes` is an integer whose bit
i is set when highest - i was not seen, within the window. A stream without gaps is three small
integers (about 150 bytes with its key), not a set of the last 4096 numbers (up to 300 KB).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class SeqTracker:
    def __init__(self, window: int = 4096, max_streams: int = 100000, gaps: bool = True) -> None:
        self.window = window
        self.max_streams = max_streams
        self.gaps = gaps  # False with shared subscriptions: each replica sees only part of a stream
        self.evicted = 0  # streams forgotten because max_streams was reached (the oldest used first)
        self._mask = (1 << window) - 1
        # (device, boot) -> (highest, lowest seen, holes); dict order is the order of last use
        self._streams: dict[tuple[str, int], tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    def seen(self, device: str, boot: int, seq: int) -> bool:
        with self._lock:
            stream = self._streams.get((device, boot))
        if stream is None:
            return False
        highest, low, holes = stream
        return low <= seq <= highest and not holes >> (highest - seq) & 1

    def mark(self, device: str, boot: int, seq: int, base: int | None = None) -> int:
        """Remember an accepted batch; returns how many sequence numbers it skipped (the gap).

        `base` is the first sequence number of the batch's agent run (its birth's `base`)."""
        key = (device, boot)
        with self._lock:
            stream = self._streams.pop(key, None)
            gap = 0
            if stream is None:
                highest, low, holes = seq, seq, 0
            else:
                highest, low, holes = stream
                last = highest
                if base is not None and last < base <= seq:
                    last = base - 1  # a new agent run: the jump to its base is no loss
                gap = max(0, seq - last - 1)
                if seq < highest - self.window:  # far behind: the stream restarted, start over
                    highest, low, holes, gap = seq, seq, 0, 0
                elif seq > highest:  # bits move up; the numbers skipped are holes, seq is seen
                    shift = seq - highest
                    if shift >= self.window:  # a jump past the window (never shift by 2**64 bits)
                        holes = self._mask & ~1
                    else:
                        holes = (holes << shift | ((1 << (shift - 1)) - 1) << 1) & self._mask
                    highest = seq
                elif seq >= low:
                    holes &= ~(1 << (highest - seq))
                else:  # before the first one seen: what lies between is not seen
                    holes |= ((1 << (low - seq)) - 1) << (highest - low + 1)
                    holes &= ~(1 << (highest - seq)) & self._mask
                    low = seq
                low = max(low, highest - self.window + 1)
            self._streams[key] = (highest, low, holes)
            while len(self._streams) > self.max_streams:
                del self._streams[next(iter(self._streams))]
                self.evicted += 1
            return gap if self.gaps else 0

    def forget(self, devices: Iterable[str]) -> int:
        """Drop the streams of `devices` (gone for long); returns how many."""
        devices = set(devices)
        with self._lock:
            keys = [key for key in self._streams if key[0] in devices]
            for key in keys:
                del self._streams[key]
        return len(keys)

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)

    def snapshot(self) -> list[list]:
        """Every stream as [device, boot, highest, [[first, last], ...]]: seen numbers as ranges."""
        with self._lock:
            streams = list(self._streams.items())
        out = []
        for (device, boot), (highest, low, holes) in streams:
            missing = []
            while holes:
                bit = holes & -holes
                holes ^= bit
                missing.append(highest - (bit.bit_length() - 1))
            ranges: list[list[int]] = []
            first = low
            for hole in sorted(missing):
                if hole > first:
                    ranges.append([first, hole - 1])
                first = max(first, hole + 1)
            if first <= highest:
                ranges.append([first, highest])
            out.append([device, boot, highest, ranges])
        return out

    def restore(self, streams: list[list]) -> None:
        """Load what `snapshot()` produced (entries that do not fit the shape are skipped)."""
        with self._lock:
            for entry in streams:
                try:
                    device, boot, highest, ranges = entry
                    highest = int(highest)
                    floor = highest - self.window + 1
                    spans = [(max(int(a), floor), min(int(b), highest)) for a, b in ranges]
                    spans = [(a, b) for a, b in spans if a <= b]
                    low = min([a for a, _ in spans], default=highest + 1)
                    holes = (1 << (highest - low + 1)) - 1 if spans else 0
                    for a, b in spans:
                        holes &= ~(((1 << (b - a + 1)) - 1) << (highest - b))
                except (TypeError, ValueError):
                    continue
                self._streams[(str(device), int(boot))] = (highest, low, holes)
            while len(self._streams) > self.max_streams:
                del self._streams[next(iter(self._streams))]
                self.evicted += 1
