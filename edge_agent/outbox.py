"""Store-and-forward buffer for encoded data batches.

Batches wait here, oldest first, until the broker acknowledges them (QoS 1 PUBACK). While the
broker is unreachable they pile up to `max_batches`; beyond that the OLDEST is dropped and the
loss is counted (batches and samples), so the agent can report it in its next batch instead of
losing data silently. An optional `spool` (see edge_agent/spool.py) keeps batches across agent
restarts; the RAM queue is the working set either way.

MicroPython-compatible.
"""


class Entry:
    def __init__(self, seq, payload, samples):
        self.seq = seq
        self.payload = payload
        self.samples = samples
        self.token = None  # transport token while in flight
        self.sent_ms = 0


class Outbox:
    def __init__(self, max_batches=360, spool=None):
        self.max_batches = max_batches
        self.entries = []
        self.spool = spool
        self.dropped_batches = 0
        self.dropped_samples = 0
        self.sent = 0
        if spool is not None:
            for seq, payload, samples in spool.load():
                self._append(Entry(seq, payload, samples))

    def __len__(self):
        return len(self.entries)

    def push(self, seq, payload, samples):
        entry = Entry(seq, payload, samples)
        self._append(entry)
        if self.spool is not None:
            self.spool.append(seq, payload, samples)

    def _append(self, entry):
        while len(self.entries) >= self.max_batches:
            old = self.entries.pop(0)
            self.dropped_batches += 1
            self.dropped_samples += old.samples
        self.entries.append(entry)

    def unsent(self, window, now_ms, resend_ms=120000):
        """Entries to publish now: the oldest not in flight, keeping at most `window` in flight.

        The transport retransmits unacknowledged messages itself across reconnects; an entry still
        unacknowledged after `resend_ms` is handed out again in case the transport lost it (the
        gateway drops the duplicate).
        """
        in_flight = 0
        out = []
        for entry in self.entries:
            if entry.token is not None and now_ms - entry.sent_ms < resend_ms:
                in_flight += 1
            elif in_flight + len(out) < window:
                out.append(entry)
        return out

    def collect_acks(self, acked):
        """Remove the in-flight entries whose token `acked(token)` confirms; return how many."""
        keep = []
        done = 0
        for entry in self.entries:
            if entry.token is not None and acked(entry.token):
                done += 1
                if self.spool is not None:
                    self.spool.ack(entry.seq)
            else:
                keep.append(entry)
        if done:
            self.entries = keep
            self.sent += done
        return done

    def bytes_queued(self):
        return sum([len(e.payload) for e in self.entries])
