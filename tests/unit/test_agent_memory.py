"""The agent survives MemoryError (a small, fragmented MicroPython heap), on CPython with injected failures:
the birth is tried again and data waits for it, a batch that cannot be encoded is dropped and reported in
`ext.lost`, the loop carries on. tests/device/test_micropython_agent.py provokes the real thing under micropython."""

from edge_agent import config, lifecycle
from edge_agent.agent import Agent
from edge_agent.collectors.seriescache import SeriesCache
from edge_wire import GAUGE
from edge_wire.batch import BatchBuilder
from edge_wire.birth import encode_birth_into
from edge_wire.decode import decode, parse_batch, parse_birth


class Gauges:
    name = "memory"
    source = "procfs"

    def __init__(self, n=3):
        cache = SeriesCache("procfs")
        self.series = [cache.get("g", GAUGE, "1", {"i": str(i)}) for i in range(n)]
        self.value = 0

    def collect(self):
        self.value += 1
        return [(s, self.value) for s in self.series]

    def close(self):
        pass


class Pieces:
    """A connected transport that takes payloads in pieces, like umqtt, and acks at once."""

    chunked = True
    connected = True

    def __init__(self):
        self.sent = []
        self.fail = 0  # the next `fail` publishes raise MemoryError

    def publish(self, topic, payload, qos=1, retain=False):
        if self.fail:
            self.fail -= 1
            raise MemoryError("fake")
        assert isinstance(payload, (bytes, list))
        self.sent.append((topic.rsplit("/", 1)[1], b"".join(payload) if isinstance(payload, list) else payload))
        return len(self.sent)

    def acked(self, token):
        return True

    def subscribe(self, topic, qos=1):
        pass

    def start(self, on_connect, on_message):
        self.on_connect = on_connect

    def poll(self, timeout_s):
        pass

    def stop(self):
        pass


def make_agent():
    cfg = config.build({"device_id": "dev-m", "commands": {"enabled": False}})
    info = {"device": "dev-m", "boot_id": "b", "boot_time_ms": 0, "collectors": {"memory": "procfs"}}
    logged = []
    agent = Agent(cfg, [Gauges()], Pieces(), info, log=lambda event, **f: logged.append((event, f)))
    return agent, logged


def test_a_birth_without_memory_is_sent_at_the_next_pass_and_data_waits_for_it(monkeypatch):
    agent, logged = make_agent()
    real = encode_birth_into
    calls = []

    def failing(out, info, table):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("fake")
        return real(out, info, table)

    monkeypatch.setattr(lifecycle, "encode_birth_into", failing)
    agent.sample(["memory"])
    agent.flush()
    assert agent.birth_due and agent.stats["memory_errors"] == 1 and len(agent.outbox) == 1
    assert logged[-1] == ("memory_error", {"at": "birth"})
    agent.pump()  # the birth goes first, then the batch that refers to it
    assert [kind for kind, _ in agent.transport.sent] == ["birth", "data"]
    birth = parse_birth(decode(agent.transport.sent[0][1]))
    batch = parse_batch(decode(agent.transport.sent[1][1]))
    assert batch.dict_epoch == birth.dict_epoch and len(birth.series) == 3
    assert not agent.birth_due


def test_data_waits_while_the_birth_keeps_failing():
    agent, _ = make_agent()
    agent.sample(["memory"])
    agent.transport.fail = 2  # the flush's birth, then the retry at the first pump
    agent.flush()
    agent.pump()
    assert agent.transport.sent == [] and agent.birth_due and agent.stats["memory_errors"] == 2
    agent.pump()
    assert [kind for kind, _ in agent.transport.sent] == ["birth", "data"]


def test_a_batch_without_memory_is_dropped_and_reported_lost(monkeypatch):
    agent, logged = make_agent()
    for _ in range(3):
        agent.sample(["memory"])
    monkeypatch.setattr(BatchBuilder, "encode_into", lambda *a: (_ for _ in ()).throw(MemoryError("fake")))
    assert agent.flush() is None
    assert len(agent.builder) == 0 and agent.outbox.dropped_batches == 1 and agent.outbox.dropped_samples == 9
    assert logged[-1] == ("memory_error", {"at": "batch", "dropped_ticks": 3, "dropped_samples": 9})
    monkeypatch.undo()
    agent.sample(["memory"])
    payload = agent.flush()
    assert isinstance(payload, list)  # pieces for a chunked transport
    batch = parse_batch(decode(b"".join(payload)))
    assert batch.ext["lost"] == [1, 9] and len(batch.ticks) == 1


def test_a_tick_that_does_not_fit_drops_the_batch(monkeypatch):
    agent, _ = make_agent()
    agent.sample(["memory"])
    monkeypatch.setattr(BatchBuilder, "add_tick", lambda *a: (_ for _ in ()).throw(MemoryError("fake")))
    agent.sample(["memory"])
    assert len(agent.builder) == 0 and agent.outbox.dropped_batches == 1 and agent.outbox.dropped_samples == 6


def test_the_loop_carries_on_after_a_memory_error():
    agent, logged = make_agent()
    real = agent.step
    calls = []

    def step():
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("fake")
        return real() if len(calls) < 4 else agent.stop() or 0

    agent.step = step
    agent.run()
    assert len(calls) == 4 and agent.stats["memory_errors"] == 1
    assert ("memory_error", {"at": "loop"}) in logged


def test_the_stop_line_counts_what_was_left_unacknowledged():
    """Batches the stop cannot deliver are counted in stats["unsent"] (no later batch reports them)."""
    agent, _logged = make_agent()
    agent.transport.connected = False  # the broker is away: nothing can be delivered at the stop
    for _ in range(3):
        agent.sample(["memory"])
        agent.flush()
    agent.shutdown()
    assert agent.stats["batches"] == 3 and agent.stats["unsent"] == 3

    agent, _logged = make_agent()  # connected and acknowledged at once: nothing left
    agent.sample(["memory"])
    agent.flush()
    agent.shutdown()
    assert agent.stats["batches"] == 1 and agent.stats["unsent"] == 0
