"""Store-and-forward buffer for encoded data batches, in RAM (edge_agent/spool.py adds a disk spool).

Batches wait here, oldest first, until the broker acknowledges them (QoS 1 PUBACK):

    spool segments (oldest) ──► front (one segment loaded) ──┐      (spool.SpoolOutbox only)
                                                              ├──► transport, oldest first
    push() ──► RAM queue (newest) ────────────────────────────┘

The RAM queue holds `max_batches`; beyond that the OLDEST batch not in flight is dropped and
counted (a batch handed to the transport is the transport's to deliver). spool.SpoolOutbox moves
the oldest RAM batches to disk in one segment instead (also while offline, every `spool_chunk`
batches, so a power cut loses at most that many), and its spool drops its oldest segments past
its byte cap, counted likewise. Drops are reported in the next batches (`ext.lost`, from
`lost()`), never silent. MicroPython-compatible; a device without a spool never loads spool.py.
"""


class Entry:
    def __init__(self, seq, payload, samples):
        self.seq = seq
        self.payload = payload
        self.samples = samples
        self.token = None  # transport token while in flight
        self.sent_ms = 0


class Outbox:
    def __init__(self, max_batches=360):
        self.max_batches = max_batches
        self.entries = []  # RAM, oldest first
        self.dropped_batches = 0  # dropped here, or by the agent (out of memory)
        self.dropped_samples = 0
        self.sent = 0

    def lost(self):
        """(batches, samples) dropped since start: what `ext.lost` reports."""
        return self.dropped_batches, self.dropped_samples

    def __len__(self):
        return len(self.entries)

    def push(self, seq, payload, samples):
        self.entries.append(Entry(seq, payload, samples))
        # drop the oldest batch not in flight. One in flight is the transport's to deliver (it
        # sends it again after a reconnect), so dropping it would count a batch as lost that still
        # arrives; RAM may exceed max_batches by the window.
        while len(self.entries) > self.max_batches:
            i = 0
            while i < len(self.entries) and self.entries[i].token is not None:
                i += 1
            if i == len(self.entries):
                break
            old = self.entries.pop(i)
            self.dropped_batches += 1
            self.dropped_samples += old.samples

    def queue(self):
        """Every batch waiting, oldest first."""
        return self.entries

    def unsent(self, window, now_ms, resend_ms=120000):
        """Entries to publish now: the oldest not in flight, keeping at most `window` in flight.

        The transport retransmits unacknowledged messages itself across reconnects; an entry still
        unacknowledged after `resend_ms` is handed out again in case the transport lost it (the
        gateway drops the duplicate).
        """
        in_flight = 0
        out = []
        for entry in self.queue():
            if entry.token is not None and now_ms - entry.sent_ms < resend_ms:
                in_flight += 1
            elif in_flight + len(out) < window:
                out.append(entry)
        return out

    def collect_acks(self, acked):
        """Remove the in-flight entries that `acked(token)` confirms; return how many."""
        keep = []
        for entry in self.entries:
            if entry.token is None or not acked(entry.token):
                keep.append(entry)
        done = len(self.entries) - len(keep)
        self.entries = keep
        self.sent += done
        return done

    def offline(self):
        """Called while the broker is unreachable (SpoolOutbox writes RAM batches to disk)."""

    def save(self):
        """Called on a clean stop (SpoolOutbox keeps what is unacknowledged for the next run)."""
