"""Store-and-forward buffer for encoded data batches: RAM, plus an optional disk spool.

Batches wait here, oldest first, until the broker acknowledges them (QoS 1 PUBACK):

    spool segments (oldest) ──► front (one segment loaded) ──┐
                                                              ├──► transport, oldest first
    push() ──► RAM queue (newest) ────────────────────────────┘

Without a spool, the RAM queue holds `max_batches`; beyond that the OLDEST batch not in flight is
dropped and counted (a batch handed to the transport is the transport's to deliver). With a spool, the oldest RAM batches are moved to disk in one segment instead (also
while offline, every `spool_chunk` batches, so a power cut loses at most that many), and the
spool drops its oldest segments past its byte cap, counted likewise. Drops are reported in the
next batches (`ext.lost`), never silent. MicroPython-compatible.
"""


class Entry:
    def __init__(self, seq, payload, samples):
        self.seq = seq
        self.payload = payload
        self.samples = samples
        self.token = None  # transport token while in flight
        self.sent_ms = 0


class Outbox:
    def __init__(self, max_batches=360, spool=None, spool_chunk=6):
        self.max_batches = max_batches
        self.spool = spool
        self.spool_chunk = spool_chunk
        self.entries = []  # RAM, oldest first
        self.front = []  # the loaded spool segment's batches, older than everything in RAM
        self.front_segment = None
        self.own_dropped_batches = 0
        self.own_dropped_samples = 0
        self.sent = 0

    @property
    def dropped_batches(self):
        return self.own_dropped_batches + (self.spool.dropped_batches if self.spool else 0)

    @property
    def dropped_samples(self):
        return self.own_dropped_samples + (self.spool.dropped_samples if self.spool else 0)

    def __len__(self):
        return len(self.front) + len(self.entries) + (len(self.spool.names) if self.spool else 0)

    def push(self, seq, payload, samples):
        self.entries.append(Entry(seq, payload, samples))
        if len(self.entries) <= self.max_batches:
            return
        if self.spool is not None:
            self.spill(max(len(self.entries) - self.max_batches, self.spool_chunk))
        # no spool, or all of RAM in flight: drop the oldest batch not in flight. One in flight is
        # the transport's to deliver (it sends it again after a reconnect), so dropping it would
        # count a batch as lost that still arrives; RAM may exceed max_batches by the window.
        while len(self.entries) > self.max_batches:
            i = 0
            while i < len(self.entries) and self.entries[i].token is not None:
                i += 1
            if i == len(self.entries):
                break
            old = self.entries.pop(i)
            self.own_dropped_batches += 1
            self.own_dropped_samples += old.samples

    def spill(self, count=None):
        """Move the oldest `count` (default: all) RAM batches not in flight to one spool segment."""
        if self.spool is None:
            return 0
        moved = [e for e in self.entries if e.token is None]
        if count is not None:
            moved = moved[:count]
        if not moved:
            return 0
        self.spool.write(moved, self.front_segment)
        self.entries = [e for e in self.entries if e.token is not None or e not in moved]
        return len(moved)

    def offline(self):
        """Called while the broker is unreachable: keep at most `spool_chunk` batches only in RAM."""
        if self.spool is not None and len([e for e in self.entries if e.token is None]) >= self.spool_chunk:
            self.spill()

    def _load_front(self):
        if self.front or self.spool is None:
            return
        for name in self.spool.segments():
            records = self.spool.read(name)
            if records:
                self.front = [Entry(seq, payload, samples) for seq, payload, samples in records]
                self.front_segment = name
                return
            self.spool.remove(name)  # empty or unreadable

    def unsent(self, window, now_ms, resend_ms=120000):
        """Entries to publish now: the oldest not in flight, keeping at most `window` in flight.

        The transport retransmits unacknowledged messages itself across reconnects; an entry still
        unacknowledged after `resend_ms` is handed out again in case the transport lost it (the
        gateway drops the duplicate).
        """
        self._load_front()
        queue = self.front
        if self.spool is None or self.spool.names == [self.front_segment] or not self.spool.names:
            queue = self.front + self.entries  # RAM batches go only after every older one on disk
        in_flight = 0
        out = []
        for entry in queue:
            if entry.token is not None and now_ms - entry.sent_ms < resend_ms:
                in_flight += 1
            elif in_flight + len(out) < window:
                out.append(entry)
        return out

    def collect_acks(self, acked):
        """Remove the in-flight entries that `acked(token)` confirms; return how many."""
        done = 0
        for queue in (self.front, self.entries):
            keep = []
            for entry in queue:
                if entry.token is not None and acked(entry.token):
                    done += 1
                else:
                    keep.append(entry)
            queue[:] = keep
        if self.front_segment is not None and not self.front:
            self.spool.remove(self.front_segment)  # every batch of the segment was acknowledged
            self.front_segment = None
        self.sent += done
        return done

    def save(self):
        """On a clean stop: everything still unacknowledged goes to the spool for the next run."""
        if self.spool is None:
            return
        for entry in self.entries:
            entry.token = None
        if self.entries:
            self.spool.write(self.entries, self.front_segment)
            self.entries = []
