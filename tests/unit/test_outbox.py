"""Store-and-forward: order, exact drop accounting, spool segments, restart, damaged files."""

import os

from edge_agent.store.outbox import Outbox
from edge_agent.store.spool import Spool, SpoolOutbox


class Broker:
    """Accepts publishes and acknowledges them when told to (the transport's side of the contract)."""

    def __init__(self):
        self.sent = []
        self.acks = set()

    def send_all(self, outbox, now=0, window=8):
        while True:
            batch = outbox.unsent(window, now)
            if not batch:
                return
            for entry in batch:
                entry.token = len(self.sent) + 1
                self.sent.append(entry.seq)
                self.acks.add(entry.token)
            outbox.collect_acks(lambda token: token in self.acks)


def push_n(outbox, first, n, samples=10):
    for seq in range(first, first + n):
        outbox.push(seq, b"batch-%d" % seq + b"." * 100, samples)


def test_ram_only_drops_oldest_and_counts_exactly():
    outbox = Outbox(max_batches=5)
    push_n(outbox, 0, 12)
    assert (outbox.dropped_batches, outbox.dropped_samples) == (7, 70)
    broker = Broker()
    broker.send_all(outbox)
    assert broker.sent == [7, 8, 9, 10, 11]
    assert len(outbox) == 0


def test_window_limits_in_flight():
    outbox = Outbox()
    push_n(outbox, 0, 20)
    first = outbox.unsent(8, 0)
    for i, entry in enumerate(first):
        entry.token = i + 1
    assert len(first) == 8 and outbox.unsent(8, 0) == []
    assert [e.seq for e in outbox.unsent(8, 200000)] == list(range(8))  # unacked too long: resent


def test_spool_keeps_order_across_restart(tmp_path):
    spool_dir = str(tmp_path / "spool")
    outbox = SpoolOutbox(4, Spool(spool_dir, 1 << 20), spool_chunk=3)
    push_n(outbox, 100, 10)
    outbox.offline()  # broker unreachable: RAM goes to disk in segments
    assert len(os.listdir(spool_dir)) >= 2
    outbox.save()  # clean stop
    restarted = SpoolOutbox(4, Spool(spool_dir, 1 << 20), spool_chunk=3)
    push_n(restarted, 110, 2)
    broker = Broker()
    broker.send_all(restarted)
    assert broker.sent == list(range(100, 112))
    assert os.listdir(spool_dir) == []  # every segment acknowledged and deleted
    assert restarted.lost() == (0, 0)


def test_spool_cap_drops_oldest_segments_exactly(tmp_path):
    record = 16 + len(b"batch-100" + b"." * 100)
    spool = Spool(str(tmp_path / "spool"), max_bytes=record * 6)  # room for 6 batches
    outbox = SpoolOutbox(2, spool, spool_chunk=2)
    push_n(outbox, 100, 20, samples=7)
    outbox.offline()
    broker = Broker()
    broker.send_all(outbox)
    batches, samples = outbox.lost()
    assert len(broker.sent) + batches == 20 and batches > 0
    assert samples == 7 * batches
    assert broker.sent == sorted(broker.sent) and broker.sent[-1] == 119


def test_damaged_segment_tail_is_ignored(tmp_path):
    spool = Spool(str(tmp_path / "spool"), 1 << 20)
    outbox = SpoolOutbox(10, spool)
    push_n(outbox, 1, 3)
    outbox.spill()
    name = spool.segments()[0]
    with open(spool.path(name), "ab") as f:
        f.write(b"\x00\x00\x01\x00partial")  # a record cut short
    open(spool.path("00000000000000000099-1-1.seg.tmp"), "wb").close()  # an interrupted write
    spool2 = Spool(str(tmp_path / "spool"), 1 << 20)
    assert [seq for seq, _, _ in spool2.read(name)] == [1, 2, 3]
    assert not any(n.endswith(".tmp") for n in os.listdir(spool2.directory))
