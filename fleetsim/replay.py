"""Recorded agent output, replayed as the values of many devices.

`fleetsim/recording.msgpack` holds three minutes of a real `edge-agent` (this project's procfs
collectors on a Debian VM: 69 series, 1 s interval, 10 s batches): its birth and its data batches,
byte for byte as the agent sent them (see `record` in bench/wire_size.py). `Recording` decodes them
with the project's decoder into one list of samples per tick.

A simulated device replays that stream from its own starting point, in batches of `ticks`
consecutive recorded ticks (every `stride`-th one: a device sampling less often), over and over. Gauges repeat their recorded values; counters keep
rising: each pass over the recording adds what a pass adds (`span`), and each device's counters
start from their own base (one of `classes`), so that no two neighbours send the same totals.
Batches are encoded with the agent's own `BatchBuilder` and the agent's header encoding; the body
of a batch ([tick deltas, columns]) depends only on (start tick, pass, class), so it is encoded once
and shared by the devices that reach the same point: the simulator then costs little CPU beside
the gateway it measures.
"""

from __future__ import annotations

import os

from edge_agent.model import Series, SeriesTable
from edge_wire import COUNTER, VERSION
from edge_wire.batch import BatchBuilder
from edge_wire.decode import decode, parse_batch, parse_birth
from edge_wire.pack import pack_array_header, pack_into

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recording.msgpack")
COUNTER_BASE = 1_000_000  # per class, in the series' own units


def device_series(sid: int, info) -> Series:
    """The agent's Series (what its encoders take) of a decoded series (edge_wire.decode.SeriesInfo)."""
    series = Series(info.name, info.kind, info.unit, info.attrs, info.scale, info.bounds, info.source)
    series.id = sid
    if info.start:
        series.start = info.start
    return series


class Recording:
    def __init__(self, path: str = DEFAULT, ticks: int = 10, classes: int = 16, stride: int = 1) -> None:
        with open(path, "rb") as f:
            recording = decode(f.read(), max_size=1 << 24)
        birth = parse_birth(decode(recording["births"][-1]))
        self.birth = birth.raw  # the template of every simulated birth (its device fields replaced)
        self.series = [device_series(sid, birth.series[sid]) for sid in sorted(birth.series)]
        self.counters = {s.id for s in self.series if s.kind == COUNTER}
        self.samples_by_tick: list[dict[int, int]] = []
        self.deltas: list[int] = []  # ms from the previous tick
        times = []
        for payload in recording["batches"]:
            batch = parse_batch(decode(payload))
            first = len(self.samples_by_tick)
            for t in batch.ticks:
                times.append(t)
                self.samples_by_tick.append({})
            for sid, indexes, values in batch.columns:
                for i, value in zip(indexes, values, strict=True):
                    self.samples_by_tick[first + i][sid] = value
        # a device sampling every `stride` recorded ticks (every 5 s of a 1 s recording, say)
        self.samples_by_tick = self.samples_by_tick[::stride]
        times = times[::stride]
        self.deltas = [0] + [b - a for a, b in zip(times, times[1:], strict=False)]
        self.ticks = ticks
        usable = len(self.samples_by_tick) // ticks * ticks
        if usable < ticks:
            raise ValueError("the recording holds fewer than %d ticks" % ticks)
        del self.samples_by_tick[usable:], self.deltas[usable:]
        self.positions = usable // ticks  # batch starting points
        self.classes = classes
        self.span = {}  # counter id -> its rise over one pass, the wrap included
        for sid in self.counters:
            seen = [s[sid] for s in self.samples_by_tick if sid in s]
            if len(seen) >= 2:
                self.span[sid] = seen[-1] - seen[0] + max(0, (seen[-1] - seen[0]) // (len(seen) - 1))
            else:
                self.span[sid] = 0
        self._bodies: dict[tuple[int, int, int], tuple[bytes, list[int], int]] = {}

    def table(self, epoch: int) -> SeriesTable:
        """A dictionary of the recorded series (ids as recorded) at `epoch`, for `encode_birth`."""
        table = SeriesTable(epoch)
        table.series = list(self.series)
        table.base = epoch
        table.changed = False
        return table

    def body(self, batch_index: int, value_class: int) -> tuple[bytes, list[int], int]:
        """(encoded body, tick offsets from the first tick in ms, samples) of a device's batch number
        `batch_index` counted from the start of the recording (it wraps), for its value class."""
        position, lap = batch_index % self.positions, batch_index // self.positions
        key = (position, lap, value_class)
        found = self._bodies.get(key)
        if found is not None:
            return found
        builder = BatchBuilder()
        offsets = []
        offset = 0
        by_id = {s.id: s for s in self.series}
        for k in range(self.ticks):
            tick = position * self.ticks + k
            offset += self.deltas[tick] if k else 0
            offsets.append(offset)
            samples = []
            for sid, value in sorted(self.samples_by_tick[tick].items()):
                if sid in self.counters:
                    value += value_class * COUNTER_BASE + lap * self.span[sid]
                samples.append((by_id[sid], value))
            builder.add_tick(offset, samples)
        encoded = builder.encode("-", 0, 0, 0)
        head = bytearray()
        _header(head, "-", 0, 0, 0, 0, False)
        found = (encoded[len(head):], offsets, builder.samples)
        if len(self._bodies) > 4 * self.positions * self.classes:  # older passes are not reached again
            self._bodies.clear()
        self._bodies[key] = found
        return found


def _header(out: bytearray, device: str, boot: int, seq: int, epoch: int, t0: int, ext: bool) -> None:
    """A data batch's header as `BatchBuilder.encode_into` writes it."""
    pack_array_header(9 if ext else 8, out)
    for field in (VERSION, 0, device, boot, seq, epoch, t0):
        pack_into(field, out)


def batch_payload(body: bytes, device: str, boot: int, seq: int, epoch: int, t0: int, ext: dict | None) -> bytes:
    out = bytearray()
    _header(out, device, boot, seq, epoch, t0, bool(ext))
    out += body
    if ext:
        pack_into(ext, out)
    return bytes(out)
