"""On-disk spool for batches the broker has not acknowledged: segments, written whole, deleted whole.

Flash wears with small writes, so the spool never appends a batch at a time. The outbox moves a
run of its oldest batches into ONE new segment file (written to a temporary name and renamed, so
a power cut leaves a whole segment or none), and deletes a segment only when every batch in it
was acknowledged. The segment's name carries what is needed without reading it:

    <first seq, 20 digits>-<batches>-<samples>.seg

and its content is records of `>IQI` (payload length, seq, samples) followed by the payload.
When the spool would exceed `max_bytes`, its oldest segments are deleted and their batches and
samples counted as dropped. `SpoolOutbox` is the outbox (edge_agent/outbox.py) that uses it.
MicroPython-compatible.
"""

import os
import struct

from edge_agent.outbox import Entry, Outbox
from edge_agent.statefile import ensure_dir

RECORD = ">IQI"
RECORD_SIZE = struct.calcsize(RECORD)


class Spool:
    def __init__(self, directory, max_bytes):
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped_batches = 0
        self.dropped_samples = 0
        ensure_dir(directory)
        for name in os.listdir(directory):
            if name.endswith(".tmp"):
                os.remove(self.path(name))  # a write that a crash interrupted
        # the listing is kept in memory: the outbox asks for it on every pump
        self.names = sorted([n for n in os.listdir(directory) if n.endswith(".seg")])

    def path(self, name):
        return self.directory + "/" + name

    def segments(self):
        """Segment names, oldest first."""
        return list(self.names)

    def size(self):
        return sum([os.stat(self.path(n))[6] for n in self.segments()])

    def write(self, entries, protect=None):
        """Write entries (objects with seq, payload, samples) as one segment; return its name.

        `protect` names a segment that must not be deleted to make room (it is being sent)."""
        if not entries:
            return None
        samples = sum([e.samples for e in entries])
        name = "%020d-%d-%d.seg" % (entries[0].seq, len(entries), samples)
        data = bytearray()
        for e in entries:
            pieces = e.payload if isinstance(e.payload, list) else [e.payload]
            data.extend(struct.pack(RECORD, sum([len(p) for p in pieces]), e.seq, e.samples))
            for piece in pieces:
                data.extend(piece)
        self.make_room(len(data), protect)
        tmp = self.path(name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self.path(name))
        self.names.append(name)
        self.names.sort()
        return name

    def make_room(self, incoming, protect=None):
        """Delete the oldest segments until `incoming` more bytes fit under max_bytes."""
        names = [n for n in self.segments() if n != protect]
        total = self.size()
        while names and total + incoming > self.max_bytes:
            oldest = names.pop(0)
            total -= os.stat(self.path(oldest))[6]
            parts = oldest[:-4].split("-")
            self.dropped_batches += int(parts[1])
            self.dropped_samples += int(parts[2])
            self.remove(oldest)

    def read(self, name):
        """The (seq, payload, samples) records of a segment; a damaged tail is ignored."""
        with open(self.path(name), "rb") as f:
            data = f.read()
        records = []
        pos = 0
        while pos + RECORD_SIZE <= len(data):
            length, seq, samples = struct.unpack(RECORD, data[pos:pos + RECORD_SIZE])
            end = pos + RECORD_SIZE + length
            if end > len(data):
                break
            records.append((seq, data[pos + RECORD_SIZE:end], samples))
            pos = end
        return records

    def remove(self, name):
        if name in self.names:
            self.names.remove(name)
        try:
            os.remove(self.path(name))
        except OSError:
            pass


class SpoolOutbox(Outbox):
    """The outbox with a spool: RAM batches past `max_batches` (and, while offline, every
    `spool_chunk` batches) go to disk in one segment; the oldest segment is loaded (`front`) and
    sent before anything newer."""

    def __init__(self, max_batches, spool, spool_chunk=6):
        Outbox.__init__(self, max_batches)
        self.spool = spool
        self.spool_chunk = spool_chunk
        self.front = []  # the loaded spool segment's batches, older than everything in RAM
        self.front_segment = None

    def lost(self):
        return self.dropped_batches + self.spool.dropped_batches, self.dropped_samples + self.spool.dropped_samples

    def __len__(self):
        return len(self.front) + len(self.entries) + len(self.spool.names)

    def push(self, seq, payload, samples):
        if len(self.entries) >= self.max_batches:
            self.spill(max(len(self.entries) + 1 - self.max_batches, self.spool_chunk))
        # all of RAM in flight: the base outbox drops the oldest batch not in flight
        Outbox.push(self, seq, payload, samples)

    def spill(self, count=None):
        """Move the oldest `count` (default: all) RAM batches not in flight to one spool segment."""
        moved = [e for e in self.entries if e.token is None]
        if count is not None:
            moved = moved[:count]
        if not moved:
            return 0
        self.spool.write(moved, self.front_segment)
        self.entries = [e for e in self.entries if e.token is not None or e not in moved]
        return len(moved)

    def offline(self):
        """Keep at most `spool_chunk` batches only in RAM while the broker is unreachable."""
        if len([e for e in self.entries if e.token is None]) >= self.spool_chunk:
            self.spill()

    def queue(self):
        if not self.front:
            for name in self.spool.segments():
                records = self.spool.read(name)
                if records:
                    self.front = [Entry(seq, payload, samples) for seq, payload, samples in records]
                    self.front_segment = name
                    break
                self.spool.remove(name)  # empty or unreadable
        if self.spool.names == [self.front_segment] or not self.spool.names:
            return self.front + self.entries  # RAM batches go only after every older one on disk
        return self.front

    def collect_acks(self, acked):
        front = len(self.front)
        self.front = [e for e in self.front if e.token is None or not acked(e.token)]
        done = front - len(self.front) + Outbox.collect_acks(self, acked)
        self.sent += front - len(self.front)
        if self.front_segment is not None and not self.front:
            self.spool.remove(self.front_segment)  # every batch of the segment was acknowledged
            self.front_segment = None
        return done

    def save(self):
        """On a clean stop: everything still unacknowledged goes to the spool for the next run."""
        for entry in self.entries:
            entry.token = None
        if self.entries:
            self.spool.write(self.entries, self.front_segment)
            self.entries = []
