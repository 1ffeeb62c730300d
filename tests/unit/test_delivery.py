"""Delivery receipts on the agent's side, in process: the agent with a transport that records what it
publishes and acknowledges when told (the broker's side of the contract), receipts built with the
gateway's own encoder (edge_wire.receipt.encode_receipt). tests/integration/test_reliability.py runs the real
processes; this file pins the rules down one by one.

- with receipts a batch leaves only on its receipt, one batch is out at a time (order), what gets
  no receipt goes again after `resend_s` (doubling), after a reconnect at once;
- "auto" waits for receipts once a gateway has sent one, remembers it, and trusts the PUBACK again
  after `fallback_s` without one; a refused batch is dropped and counted lost;
- a spool keeps the birth each spooled batch needs across restarts and publishes it on connecting;
  a gateway lacking a dictionary gets the births again, and a batch whose birth is gone is given up;
- a full spool disk drops the oldest spooled batches, counted, and the agent runs on from RAM;
- tick timestamps never go back, whatever the wall clock does.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import agent as agent_module
from edge_agent import config
from edge_agent.agent import Agent
from edge_agent.collectors.seriescache import SeriesCache
from edge_agent.store.spool import Spool
from edge_wire import COUNTER
from edge_wire.birth import boot_tag
from edge_wire.decode import WireError, decode, parse_batch, parse_birth
from edge_wire.receipt import EXPORTED, REFUSED, WANTED, encode_receipt, parse_receipt, runs_of

EXPORTED, REFUSED, WANTED = EXPORTED, REFUSED, WANTED


class Counters:
    name = "network"
    source = "procfs"

    def __init__(self, n=3):
        self.cache = SeriesCache("procfs")
        self.n = n
        self.value = 0

    def collect(self):
        self.value += 10
        return [(self.cache.get("c", COUNTER, "1", {"i": str(i)}), self.value) for i in range(self.n)]

    def close(self):
        pass


class Broker:
    """A connected transport: records publishes, PUBACKs what `ack_all` says, delivers receipts."""

    chunked = False

    def __init__(self):
        self.connected = True
        self.sent = []  # (kind, payload, retain)
        self.pubacked = set()
        self.ack_all = True
        self.subscriptions = []
        self.on_message = None

    def publish(self, topic, payload, qos=1, retain=False):
        if not self.connected:
            return None
        self.sent.append((topic.rsplit("/", 1)[1], payload, retain))
        if self.ack_all:
            self.pubacked.add(len(self.sent))
        return len(self.sent)

    def acked(self, token):
        return token in self.pubacked

    def subscribe(self, topic, qos=1):
        self.subscriptions.append((topic, qos))

    def start(self, on_connect, on_message):
        self.on_message = on_message

    def poll(self, timeout_s):
        pass

    def stop(self):
        pass

    def data(self):
        return [parse_batch(decode(p)) for kind, p, _ in self.sent if kind == "data"]

    def births(self):
        return [(parse_birth(decode(p)), retain) for kind, p, retain in self.sent if kind == "birth"]


def make(tmp_path, ack="gateway", spool_bytes=0, resend_s=5.0, fallback_s=3600, collectors=None, **values):
    state = tmp_path / "state"
    cfg = config.build(dict({"device_id": "dev-d", "state_dir": str(state), "commands": {"enabled": False},
                             "delivery": {"ack": ack, "resend_s": resend_s, "fallback_s": fallback_s},
                             "buffer": {"spool_max_bytes": spool_bytes}}, **values))
    os.makedirs(state, exist_ok=True)
    spool = Spool(str(state / "spool"), spool_bytes) if spool_bytes else None
    info = {"device": "dev-d", "boot_id": "b-1", "boot_time_ms": 0, "collectors": {"network": "procfs"}}
    logged = []
    agent = Agent(cfg, collectors or [Counters()], Broker(), info, spool=spool,
                  log=lambda event, **f: logged.append((event, f)))
    agent.logged = logged
    return agent


def batches(agent, n):
    for _ in range(n):
        agent.sample(["network"])
        agent.flush()


def receipt(agent, runs, boot="b-1"):
    agent.on_message("edge/dev-d/delivery", encode_receipt(boot_tag(boot), runs))


@pytest.fixture
def clock(monkeypatch):
    """The agent's monotonic clock, in ms, moved by the test."""
    now = [1_000_000]
    from edge_agent.store import receipts

    monkeypatch.setattr(agent_module, "mono_ms", lambda: now[0])
    monkeypatch.setattr(receipts, "mono_ms", lambda: now[0])
    return now


def test_with_receipts_a_batch_leaves_on_its_receipt_and_one_is_out_at_a_time(tmp_path, clock):
    agent = make(tmp_path)
    agent.on_connect()
    batches(agent, 3)
    agent.pump()
    agent.pump()
    seqs = [b.seq for b in agent.transport.data()]
    assert len(seqs) == 1 and len(agent.outbox) == 3  # PUBACKed, but no receipt yet: nothing else goes
    receipt(agent, [(seqs[0], 1, EXPORTED)])
    agent.pump()
    agent.pump()
    assert len(agent.outbox) == 2 and [b.seq for b in agent.transport.data()] == [seqs[0], seqs[0] + 1]
    receipt(agent, [(seqs[0] + 1, 1, EXPORTED)])
    agent.pump()
    agent.pump()
    receipt(agent, [(seqs[0] + 2, 1, EXPORTED), (seqs[0] + 3, 5, EXPORTED)])  # what it lists, no more
    assert len(agent.outbox) == 0 and agent.outbox.sent == 3
    assert [b.seq for b in agent.transport.data()] == [seqs[0], seqs[0] + 1, seqs[0] + 2]  # in order


def test_without_a_receipt_a_batch_goes_again_later_and_later_and_at_once_after_a_reconnect(tmp_path, clock):
    agent = make(tmp_path, resend_s=2)
    agent.on_connect()
    batches(agent, 1)
    agent.pump()
    agent.pump()  # PUBACK seen: the receipt is awaited from now
    sends = []
    for step_ms in range(0, 20000, 250):
        clock[0] = 1_000_000 + step_ms
        agent.pump()
        sends.append(len(agent.transport.data()))
    times = [250 * i for i in range(1, len(sends)) if sends[i] > sends[i - 1]]
    # 2 s, then 4 s, then 8 s without a receipt, each counted from the PUBACK (seen at the next pass)
    assert times[:3] == [2000, 2250 + 4000, 6500 + 8000], times
    before = len(agent.transport.data())
    agent.on_connect()  # the broker may have lost it with its session
    agent.pump()
    assert len(agent.transport.data()) == before + 1
    seq = agent.transport.data()[0].seq
    assert {b.seq for b in agent.transport.data()} == {seq}  # the same batch, byte for byte
    assert len({p for kind, p, _ in agent.transport.sent if kind == "data"}) == 1


def test_a_refused_batch_is_dropped_and_reported_lost(tmp_path, clock):
    agent = make(tmp_path)
    agent.on_connect()
    batches(agent, 2)
    agent.pump()
    agent.pump()
    first = agent.transport.data()[0]
    receipt(agent, [(first.seq, 1, REFUSED)])
    assert agent.outbox.lost() == (1, 3) and len(agent.outbox) == 1
    batches(agent, 1)  # encoded after the refusal: it reports the loss
    agent.pump()
    agent.pump()
    second = agent.transport.data()[-1]
    assert second.seq == first.seq + 1 and "lost" not in second.ext  # encoded before it
    receipt(agent, [(second.seq, 1, EXPORTED)])
    agent.pump()
    assert agent.transport.data()[-1].ext["lost"] == [1, 3]


def test_auto_waits_for_receipts_once_a_gateway_sends_them_and_remembers(tmp_path, clock):
    agent = make(tmp_path, ack="auto")
    agent.on_connect()
    batches(agent, 2)
    agent.pump()
    agent.pump()
    assert len(agent.outbox) == 0  # no gateway has sent receipts: the PUBACK delivers (older gateways)
    receipt(agent, [(agent.transport.data()[0].seq, 1, EXPORTED)])
    assert agent.outbox.receipts and ("delivery", {"ack": "gateway receipt"}) in agent.logged
    assert (tmp_path / "state" / "delivery").read_text() == "receipts"
    again = make(tmp_path, ack="auto")  # a restart: it knows
    assert again.outbox.receipts


def test_auto_trusts_the_puback_again_when_receipts_stop_coming(tmp_path, clock):
    agent = make(tmp_path, ack="auto", fallback_s=60)
    agent.on_connect()
    receipt(agent, [(1, 1, EXPORTED)])  # a receipting gateway serves this device
    batches(agent, 3)
    agent.pump()
    agent.pump()
    clock[0] += 59000
    agent.pump()
    assert agent.outbox.receipts and len(agent.outbox) == 3
    clock[0] += 2000
    agent.pump()  # 61 s without a receipt while the broker acknowledged: an older gateway
    assert not agent.outbox.receipts and not (tmp_path / "state" / "delivery").exists()
    agent.pump()
    assert len(agent.outbox) == 0
    event = [f for e, f in agent.logged if e == "delivery"][-1]
    assert event["ack"] == "broker puback" and event["batches"] == 1


def test_the_stop_spools_what_has_no_receipt_and_the_next_run_sends_it_with_its_birth(tmp_path, clock):
    agent = make(tmp_path, spool_bytes=1 << 20)
    agent.on_connect()
    batches(agent, 3)
    agent.pump()
    agent.pump()
    first = agent.transport.data()[0]
    receipt(agent, [(first.seq, 1, EXPORTED)])
    old_birth = agent.transport.births()[-1][0]
    agent.transport.connected = False  # the broker went away: the stop keeps the rest
    agent.shutdown()
    assert agent.stats["unsent"] == 2
    spool_dir = tmp_path / "state" / "spool"
    assert sorted(p.suffix for p in spool_dir.iterdir()) == [".birth", ".seg"]

    # the next run: a new dictionary run (another base), the old batches first, with their birth
    later = make(tmp_path, spool_bytes=1 << 20, collectors=[Counters(n=5)])
    later.transport.connected = False  # it starts offline; the birth grows with its first batch
    later.sample(["network"])
    later.flush()
    later.transport.connected = True
    later.on_connect()
    births = later.transport.births()
    assert [(b.base, retain) for b, retain in births] == [(old_birth.base, False), (later.table.base, True)]
    assert births[0][0].dict_epoch == old_birth.dict_epoch and len(births[0][0].series) == 3
    for _ in range(6):
        later.pump()
        if later.transport.data():
            receipt(later, [(later.transport.data()[-1].seq, 1, EXPORTED)])
    sent = [b.seq for b in later.transport.data()]
    assert sent == [first.seq + 1, first.seq + 2, later.table.base], sent
    assert len(later.outbox) == 0
    assert sorted(p.suffix for p in spool_dir.iterdir()) == [".birth"]  # the old run's birth went with its batches


def test_a_gateway_lacking_a_dictionary_gets_the_births_again(tmp_path, clock):
    agent = make(tmp_path)
    agent.on_connect()
    batches(agent, 1)
    agent.pump()
    agent.pump()
    seq = agent.transport.data()[0].seq
    before = len(agent.transport.births())
    receipt(agent, [(seq, 1, WANTED)])
    receipt(agent, [(seq, 1, WANTED)])  # at most every 10 s
    assert len(agent.transport.births()) == before + 1 and len(agent.outbox) == 1
    clock[0] += 10000
    receipt(agent, [(seq, 1, WANTED)])
    assert len(agent.transport.births()) == before + 2


def test_a_batch_whose_birth_is_gone_is_given_up_and_counted(tmp_path, clock):
    agent = make(tmp_path, spool_bytes=1 << 20)
    agent.on_connect()
    batches(agent, 2)
    agent.transport.connected = False
    agent.shutdown()  # both spooled
    for path in (tmp_path / "state" / "spool").glob("*.birth"):
        path.unlink()  # a failed disk took the archive
    later = make(tmp_path, spool_bytes=1 << 20)
    later.on_connect()
    later.pump()
    seq = later.transport.data()[0].seq
    receipt(later, [(seq, 1, WANTED)])
    assert len(later.outbox) == 0 and later.outbox.lost() == (2, 6)
    assert ("dictionary_lost", {"seq": seq, "batches": 2, "samples": 6}) in later.logged


@pytest.mark.root  # mounts a tmpfs
def test_a_full_spool_disk_drops_the_oldest_spooled_batches_and_runs_on_from_ram(tiny_disk, tmp_path, clock):
    agent = make(tiny_disk, spool_bytes=1 << 30, collectors=[Counters(n=40)], buffer={"max_batches": 4,
                                                                                     "spool_chunk": 2})
    agent.transport.connected = False  # offline: RAM goes to the spool every 2 batches
    for _ in range(200):  # far more than 64 KB
        batches(agent, 1)
        agent.pump()
    made = agent.stats["batches"]
    lost = agent.outbox.lost()
    assert lost[0] > 0, "the disk never filled"
    on_disk = sum(int(n.split("-")[1]) for n in os.listdir(tiny_disk / "state" / "spool") if n.endswith(".seg"))
    # every batch made is on disk, in RAM, or counted lost: none vanished
    assert on_disk + len(agent.outbox.entries) + lost[0] == made, (on_disk, len(agent.outbox.entries), lost)
    errors = [f for e, f in agent.logged if e == "spool_error"]
    assert not errors or "No space" in errors[0]["error"]
    agent.transport.connected = True
    batch = None
    for _ in range(3):
        agent.on_connect()
        batches(agent, 1)
        agent.pump()
        batch = agent.transport.data()[-1]
    assert batch is not None


def test_tick_timestamps_never_go_back(tmp_path, clock, monkeypatch):
    agent = make(tmp_path)
    wall = [1_800_000_000_000]
    monkeypatch.setattr(agent_module, "wall_ms", lambda: wall[0])
    for step in (1000, 1000, -30000, 1000, 1000, 40000, 1000, -50):  # back 30 s; then back 50 ms
        wall[0] += step
        agent.sample(["network"])
    ticks = agent.builder.ticks
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
    # the ticks while the clock was behind the last one are skipped; a step back of a few ms is not
    assert len(ticks) == 5 and agent.stats["clock_skips"] == 3 and ticks[-1] == ticks[-2] + 1
    assert ("clock_backwards", {"dropped_ticks": 1}) in agent.logged


def test_the_receipt_format_round_trips_and_rejects_garbage():
    runs = [(5, 3, EXPORTED), (100, 1, REFUSED), (7, 1, WANTED)]
    payload = encode_receipt(0xDEADBEEF, runs)
    assert len(payload) == 5 + 10 * 3
    assert parse_receipt(payload) == (0xDEADBEEF, runs)
    assert parse_receipt(encode_receipt(1, [(10, 20000, EXPORTED)]))[1] == [(10, 16383, 0), (16393, 3617, 0)]
    for bad in (b"", b"\x02" + payload[1:], payload[:-1], payload[:5] + b"\x00" * 8 + b"\xc0\x01"):
        with pytest.raises(WireError):
            parse_receipt(bad)
    assert json.dumps(runs_of([3, 1, 2, 7, 9, 8])) == "[[1, 3, 0], [7, 3, 0]]"


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_hostile_receipts_never_raise_and_settle_only_what_they_name(payload):
    agent = make(pytest_tmp())
    agent.on_connect()
    batches(agent, 2)
    agent.pump()
    agent.pump()
    before = [e.seq for entries in agent.outbox.lists() for e in entries]
    agent.on_message("edge/dev-d/delivery", payload)  # whatever it is
    after = [e.seq for entries in agent.outbox.lists() for e in entries]
    assert set(after) <= set(before)


def test_crafted_receipts_are_ignored_or_settle_only_their_runs(tmp_path, clock):
    agent = make(tmp_path)
    agent.on_connect()
    batches(agent, 2)
    seqs = [e.seq for e in agent.outbox.entries]
    boot = boot_tag("b-1")
    version2 = b"\x02" + encode_receipt(boot, [(seqs[0], 1, EXPORTED)])[1:]
    kind3 = encode_receipt(boot, [(seqs[0], 1, EXPORTED)])[:13] + bytes([0xC0, 0x01])
    many = encode_receipt(boot, [(s, 1, EXPORTED) for s in range(10 ** 6, 10 ** 6 + 10000)])
    for payload in (b"", b"\x01", version2, kind3, many, encode_receipt(boot, [(1, 5, EXPORTED)])):
        agent.on_message("edge/dev-d/delivery", payload)
    assert [e.seq for e in agent.outbox.entries] == seqs and agent.outbox.lost() == (0, 0)


def pytest_tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="edge-delivery-"))
