"""On-disk spool for batches not yet delivered: segments, written whole, deleted whole.

Flash wears with small writes, so the spool never appends a batch at a time. The outbox moves a
run of its oldest batches into ONE new segment file (written to a temporary name and renamed, so
a power cut leaves a whole segment or none), and deletes a segment only when every batch in it
was delivered. The segment's name carries what is needed without reading it:

    <first seq, 20 digits>-<batches>-<samples>.seg

and its content is records of `>IQI` (payload length, seq, samples) followed by the payload.
When the spool would exceed `max_bytes`, or the disk is full, its oldest segments are deleted and
their batches and samples counted as dropped; when not even that makes room, the batches stay in
RAM (whose cap then drops the oldest, counted) and the agent runs on.

A spooled batch refers to the series dictionary of the agent run that made it, which may end (a
stop, a crash, a reboot) before the batch is delivered. So the spool also keeps each run's latest
birth message, `<first seq of the run, 20 digits>.birth` (the bytes the agent published, written
before any batch that needs it), for as long as a segment of that run is on disk; the agent
publishes those births again on connecting and when a gateway asks for them (docs/wire-format.md).

`SpoolOutbox` is the outbox (edge_agent/store/outbox.py) that uses it. MicroPython-compatible.
"""

import os
import struct

from edge_agent.store.outbox import Entry, Outbox
from edge_agent.store.statefile import ensure_dir

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
                self.delete(name)  # a write that a crash interrupted
        # the listings are kept in memory: the outbox asks for them on every pump
        names = sorted(os.listdir(directory))
        self.names = [n for n in names if n.endswith(".seg")]
        self.bases = [int(n[:-6]) for n in names if n.endswith(".birth")]  # archived runs, oldest first
        self.epoch = None  # of the running agent's birth archived last
        self.current = None  # the running agent's run (its base), once its birth is archived
        self.prune()

    def path(self, name):
        return self.directory + "/" + name

    def segments(self):
        """Segment names, oldest first."""
        return list(self.names)

    def size(self):
        total = 0
        for name in self.names:
            try:
                total += os.stat(self.path(name))[6]
            except OSError:
                pass
        return total

    def write(self, entries, protect=None):
        """Write entries (objects with seq, payload, samples) as one segment; return its name.

        `protect` names a segment that must not be deleted to make room (it is being sent). Makes
        room under `max_bytes` first; a full disk deletes the oldest segments too (counted) until the
        write fits. OSError when it does not fit even then: the entries were not written."""
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
        while True:
            try:
                self.store(name, [data])
                break
            except OSError:  # the disk is full (or failing): the oldest data goes first
                if not self.drop_oldest(protect):
                    raise
        self.names.append(name)
        self.names.sort()
        return name

    def store(self, name, pieces):
        """Write a file atomically (temporary name, then rename); nothing is left of a failed write."""
        tmp = self.path(name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                for piece in pieces:
                    f.write(piece)
            os.rename(tmp, self.path(name))
        except OSError:
            self.delete(name + ".tmp")
            raise

    def make_room(self, incoming, protect=None):
        """Delete the oldest segments until `incoming` more bytes fit under max_bytes."""
        total = self.size()
        while total + incoming > self.max_bytes:
            freed = self.drop_oldest(protect)
            if not freed:
                break
            total -= freed

    def drop_oldest(self, protect=None):
        """Delete the oldest segment but `protect`, counting its batches as dropped; its size (0: none)."""
        for name in self.names:
            if name != protect:
                return self.discard(name)
        return 0

    def discard(self, name):
        """Delete a segment, counting its batches as dropped; its size."""
        try:
            size = os.stat(self.path(name))[6]
        except OSError:
            size = 1
        parts = name[:-4].split("-")
        self.dropped_batches += int(parts[1])
        self.dropped_samples += int(parts[2])
        self.remove(name)
        return size

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
        self.delete(name)

    def delete(self, name):
        try:
            os.remove(self.path(name))
        except OSError:
            pass

    # ------------------------------------------------------------ the births spooled batches need

    def birth(self, base, payload=None):
        """Archive `payload` (bytes or pieces) as the latest birth of the run that starts at `base`;
        without a payload, read that birth as a list of 512-byte pieces (no large block on a small
        heap)."""
        name = "%020d.birth" % base
        if payload is not None:
            self.store(name, payload if isinstance(payload, list) else [payload])
            self.current = base
            if base not in self.bases:
                self.bases.append(base)
                self.bases.sort()
            return None
        pieces = []
        with open(self.path(name), "rb") as f:
            while True:
                piece = f.read(512)
                if not piece:
                    return pieces
                pieces.append(piece)

    def prune(self):
        """Delete the archived births of earlier runs that no segment needs any more (the running
        agent's run aside); `bases` is then what spooled batches need."""
        current = self.current
        for i in range(len(self.bases) - 1, -1, -1):
            base = self.bases[i]
            if base == current:
                continue
            end = self.bases[i + 1] if i + 1 < len(self.bases) else None
            if current is not None and current > base and (end is None or current < end):
                end = current
            needed = False
            for name in self.names:
                first = int(name[:20])
                needed = needed or (first >= base and (end is None or first < end))
            if not needed:
                del self.bases[i]
                self.delete("%020d.birth" % base)


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
        self.front_size = 0  # batches the front segment was loaded with
        self.log = None  # the agent's log, for a spool that fails
        self.errors = 0  # failed spool writes

    def lost(self):
        return self.dropped_batches + self.spool.dropped_batches, self.dropped_samples + self.spool.dropped_samples

    def __len__(self):
        """Batches not delivered: loaded, in RAM, and in the other segments (their names say how many)."""
        n = len(self.front) + len(self.entries)
        for name in self.spool.names:
            if name != self.front_segment:
                n += int(name[:-4].split("-")[1])
        return n

    def lists(self):
        return (self.front, self.entries)

    def push(self, seq, payload, samples):
        if len(self.entries) >= self.max_batches:
            self.spill(max(len(self.entries) + 1 - self.max_batches, self.spool_chunk))
        # all of RAM out, or the spool failed: the base outbox drops the oldest batch not out
        Outbox.push(self, seq, payload, samples)

    def spill(self, count=None, everything=False):
        """Move the oldest `count` (default: all) RAM batches not out (`everything`: out or not) to
        one spool segment. A spool that cannot take them leaves them in RAM (logged, counted)."""
        moved = [e for e in self.entries if everything or e.token is None]
        if count is not None:
            moved = moved[:count]
        if not moved:
            return 0
        try:
            self.spool.write(moved, self.front_segment)
        except OSError as exc:
            self.errors += 1
            if self.log is not None and self.errors & (self.errors - 1) == 0:  # 1st, 2nd, 4th, 8th... failure
                self.log("spool_error", error=str(exc), failures=self.errors, kept_in_ram=len(self.entries))
            return 0
        for e in moved:
            e.token = None
            e.tries = 0
        self.entries = [e for e in self.entries if e not in moved]
        return len(moved)

    def offline(self):
        """Keep at most `spool_chunk` batches only in RAM while the broker is unreachable; a batch that
        was out goes too (it may not have reached the broker, and a crash would lose it)."""
        if len(self.entries) >= self.spool_chunk:
            self.spill(everything=True)

    def queue(self):
        if not self.front:
            for name in self.spool.segments():
                try:
                    records = self.spool.read(name)
                except OSError:
                    records = None
                if records:
                    self.front = [Entry(seq, payload, samples) for seq, payload, samples in records]
                    self.front_segment = name
                    self.front_size = len(records)
                    break
                self.spool.remove(name)  # empty or unreadable
        if self.spool.names == [self.front_segment] or not self.spool.names:
            return self.front + self.entries  # RAM batches go only after every older one on disk
        return self.front

    def settled(self):
        if self.front_segment is not None and not self.front:
            self.spool.remove(self.front_segment)  # every batch of the segment was delivered
            self.front_segment = None
            self.spool.prune()

    def rebirth(self, seq, current):
        """The archived run (its base) whose birth covers our batch `seq` of an earlier run, for a
        gateway that lacks it. With none left (an archive lost to a failed disk), no gateway can
        ever resolve that run's batches: they are given up, counted lost, rather than sent forever."""
        if not [e for entries in self.lists() for e in entries if e.seq == seq]:
            return None  # delivered meanwhile (through another replica), or not ours
        bases = self.spool.bases
        older = [b for b in bases if b <= seq]
        if older:
            return older[-1]
        ends = [b for b in bases if b > seq] + ([current] if current is not None else [])
        end = min(ends) if ends else 1 << 64  # up to the next run we have a birth for
        before = self.lost()
        for entries in self.lists():
            for entry in [e for e in entries if e.seq < end]:
                entries.remove(entry)
                self.drop(entry)
        self.settled()
        for name in self.spool.segments():
            if int(name[:20]) < end and name != self.front_segment:
                self.spool.discard(name)
        lost = self.lost()
        if self.log is not None:
            self.log("dictionary_lost", seq=seq, batches=lost[0] - before[0], samples=lost[1] - before[1])
        return None

    def save(self):
        """On a clean stop: everything undelivered goes to the spool for the next run (the loaded
        segment rewritten without what was delivered from it)."""
        if self.front_segment is not None and len(self.front) < self.front_size:
            try:
                self.spool.write(self.front, self.front_segment)
                self.spool.remove(self.front_segment)
                self.front_segment = None
                self.front = []
            except OSError:
                pass  # the whole segment stays: what was delivered goes again, the gateway drops it
        for entry in self.entries:
            entry.token = None
        if self.entries:
            try:
                self.spool.write(self.entries, self.front_segment)
                self.entries = []
            except OSError as exc:
                if self.log is not None:
                    self.log("spool_error", error=str(exc), unsaved=len(self.entries))
