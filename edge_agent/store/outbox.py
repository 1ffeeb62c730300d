"""Store-and-forward buffer for encoded data batches, in RAM (edge_agent/store/spool.py adds a disk spool).

Batches wait here, oldest first, until they are delivered:

    spool segments (oldest) ──► front (one segment loaded) ──┐      (spool.SpoolOutbox only)
                                                              ├──► transport, oldest first
    push() ──► RAM queue (newest) ────────────────────────────┘

What "delivered" means depends on `receipts` (docs/reliability.md):
- False (the broker's word): a batch leaves on its PUBACK; up to `window` batches are in flight;
- True (the gateway's word): a PUBACK only says the broker took it. The batch stays until the
  gateway's receipt says it was exported (`confirm`), and it is sent again when no receipt came
  `resend_ms` after its PUBACK (doubling for each try, up to 60 s) or after a reconnect.
  The agent keeps one batch out at a time, so batches reach the receiver in order even through
  replicas, re-sends and lost sessions.

The RAM queue holds `max_batches`; beyond that the OLDEST batch not out (handed to the transport
and not yet delivered) is dropped and counted: a batch that is out may still arrive, so dropping it
could count as lost a batch that is not. spool.SpoolOutbox moves the oldest RAM batches to disk in
one segment instead (also while offline, every `spool_chunk` batches, so a power cut loses at most
that many), and its spool drops its oldest segments past its byte cap or when the disk is full,
counted likewise. A batch the gateway refused (bad data) is dropped and counted too. Drops are
reported in the next batches (`ext.lost`, from `lost()`), never silent. MicroPython-compatible; a
device without a spool never loads spool.py.
"""

# Entry.token -1: the broker has the batch and the gateway's receipt is awaited. (Constants are
# written out: every module-level name stays interned on a device.)


class Entry:
    def __init__(self, seq, payload, samples):
        self.seq = seq
        self.payload = payload
        self.samples = samples
        self.token = None  # None: to send; a transport token: in flight to the broker; -1: at the broker
        self.sent_ms = 0  # when it was last handed to the transport
        self.tries = 0  # how often it was handed to the transport


class Outbox:
    def __init__(self, max_batches=360):
        self.max_batches = max_batches
        self.entries = []  # RAM, oldest first
        self.dropped_batches = 0  # dropped here, refused by the gateway, or by the agent (out of memory)
        self.dropped_samples = 0
        self.sent = 0  # delivered (PUBACK, or the gateway's receipt when `receipts`)
        self.receipts = False
        self.resend_ms = 5000
        self.waiting_ms = None  # mono ms of the first PUBACK since the last receipt (receipts only)

    def lost(self):
        """(batches, samples) dropped since start: what `ext.lost` reports."""
        return self.dropped_batches, self.dropped_samples

    def __len__(self):
        return len(self.entries)

    def push(self, seq, payload, samples):
        self.entries.append(Entry(seq, payload, samples))
        while len(self.entries) > self.max_batches:  # the oldest not out; RAM may exceed the cap by the window
            i = 0
            while i < len(self.entries) and self.entries[i].token is not None:
                i += 1
            if i == len(self.entries):
                break
            self.drop(self.entries.pop(i))

    def drop(self, batch):
        self.dropped_batches += 1
        self.dropped_samples += batch.samples

    def queue(self):
        """Every batch waiting, oldest first."""
        return self.entries

    def lists(self):
        """The lists entries live in (SpoolOutbox adds its loaded spool segment)."""
        return (self.entries,)

    def unsent(self, window, now_ms):
        """Entries to hand to the transport now, oldest first, keeping at most `window` out.

        A batch out is handed out again once it is due: unacknowledged by the broker for 120 s (the
        transport retransmits by itself; this is in case it lost the message), or acknowledged by
        the broker but without the gateway's receipt for `resend_ms` x 2^(tries-1), at most 60 s."""
        out = []
        busy = 0
        for entry in self.queue():
            if busy + len(out) >= window:
                break
            wait = 120000
            if entry.token == -1:
                wait = min(self.resend_ms << min(max(entry.tries - 1, 0), 8), 60000)
            if entry.token is None or now_ms - entry.sent_ms >= wait:
                out.append(entry)
            else:
                busy += 1
        return out

    def collect_acks(self, acked, now_ms=0):
        """Settle the entries whose PUBACK `acked(token)` confirms: removed, or (with receipts) -1, awaiting the receipt."""
        for entries in self.lists():
            keep = []
            for entry in entries:
                if entry.token is not None and entry.token != -1 and acked(entry.token):
                    if not self.receipts:
                        self.sent += 1
                        continue
                    entry.token = -1
                    entry.sent_ms = now_ms  # the receipt is due from now on
                    if self.waiting_ms is None:
                        self.waiting_ms = now_ms
                keep.append(entry)
            entries[:] = keep
        self.settled()

    def receipt(self, payload):
        """A gateway's delivery receipt (docs/wire-format.md): version 1, the boot tag, then runs of
        (first seq: 8 bytes, kind << 14 | count: 2 bytes), big-endian. Kind 0: exported; 1: refused
        (bad data: dropped and counted lost); 2: the gateway lacks their dictionary. Settles our
        batches in runs of kind 0 and 1; returns the first seq of a kind 2 run (or None)."""
        wanted = None
        if len(payload) < 15 or payload[0] != 1:
            return None
        for pos in range(5, len(payload) - 9, 10):
            first = int.from_bytes(payload[pos:pos + 8], "big")
            kind = payload[pos + 8] >> 6
            end = first + ((payload[pos + 8] & 0x3F) << 8 | payload[pos + 9])
            if kind > 1:  # 3: not (yet) defined, ignored
                if kind == 2:
                    wanted = first
                continue
            for entries in self.lists():
                keep = []
                for entry in entries:
                    if first <= entry.seq < end:
                        if kind:
                            self.drop(entry)
                        else:
                            self.sent += 1
                    else:
                        keep.append(entry)
                entries[:] = keep
            self.waiting_ms = None
        self.settled()
        return wanted

    def settled(self):
        """Called after batches left (SpoolOutbox deletes a segment once all of it is delivered)."""

    def offline(self):
        """Called while the broker is unreachable (SpoolOutbox writes RAM batches to disk)."""

    def save(self):
        """Called on a clean stop (SpoolOutbox keeps what is undelivered for the next run)."""
