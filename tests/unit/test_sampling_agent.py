"""The adaptive look-ahead inside a real Agent, and what the gateway makes of it (real decoding and OTLP).

The agent runs in-process on a synthetic collector (a noisy gauge, a busy counter, a flat gauge) with
its wall clock stepped one second a tick (edge_agent.agent.wall_ms injected), batches every 10 ticks,
the transport keeping what is published. The batches go through gateway.decode.resolve and gateway.convert.otlp as
in `edge-gateway run`. Checked: what is sent is thinned and exact, the stats add up, and the OTLP
output is honest about gaps: no series is ever silent for longer than the `edge.sampling.interval`
it was last given, and when a series is back at the base interval (a command set `fixed`) the gauge
says so instead of keeping the longer interval.
"""

from __future__ import annotations

import random

from edge_agent import agent as agent_module
from edge_agent import config
from edge_agent.agent import Agent
from edge_agent.collectors.seriescache import SeriesCache
from edge_agent.commands.handler import set_sampling
from edge_agent.sampling.sampler import Sampler
from edge_wire import COUNTER, GAUGE
from gateway.convert.otlp import INTERVAL_METRIC, to_request
from gateway.decode.resolve import Dictionaries

T0 = 1_700_000_000_000


class Synthetic:
    name = "cpu"
    source = "procfs"

    def __init__(self):
        cache = SeriesCache("procfs")
        self.walk = cache.get("test.walk", GAUGE, "1", {"k": "walk"})
        self.bytes = cache.get("test.bytes", COUNTER, "By", {"k": "bytes"})
        self.flat = cache.get("test.flat", GAUGE, "1", {"k": "flat"})
        self.rng = random.Random(11)
        self.x, self.total, self.i = 5000, 0, 0
        self.totals = []

    def collect(self):
        self.i += 1
        self.x += self.rng.randint(-60, 60)
        self.total += 1000 if (self.i // 150) % 2 else 9000
        self.totals.append(self.total)
        return [(self.walk, self.x), (self.bytes, self.total), (self.flat, 42)]

    def close(self):
        pass


class Keep:
    connected = True

    def __init__(self):
        self.sent = []

    def publish(self, topic, payload, qos=1, retain=False):
        self.sent.append((topic.rsplit("/", 1)[1], bytes(payload)))
        return len(self.sent)

    def acked(self, token):
        return True

    def subscribe(self, topic, qos=1):
        pass

    def start(self, on_connect, on_message):
        pass

    def poll(self, timeout_s):
        pass

    def stop(self):
        pass


def run_agent(monkeypatch, ticks, sampling, switch_at=None):
    clock = [T0]
    monkeypatch.setattr(agent_module, "wall_ms", lambda: clock[0])
    cfg = config.build({"device_id": "dev-a", "interval_s": 1.0, "batch_s": 10.0, "commands": {"enabled": False}})
    info = {"device": "dev-a", "boot_id": "b-1", "boot_time_ms": T0 - 3_600_000, "collectors": {"cpu": "procfs"}}
    collector = Synthetic()
    transport = Keep()
    a = Agent(cfg, [collector], transport, info, sampler=Sampler(sampling))
    for i in range(ticks):
        if i == switch_at:
            assert set_sampling(a, {"policy": "fixed"}) == []
        a.sample(["cpu"], i * 1000)
        if i % 10 == 9:
            a.flush()
            a.pump()
        clock[0] += 1000
    return a, collector, transport


def otlp_points(transport):
    """{(metric name, k attribute): [(time ms, value)]} and the interval points, in arrival order."""
    dicts = Dictionaries()
    points, intervals = {}, []
    for kind, payload in transport.sent:
        if kind == "birth":
            dicts.add_birth("dev-a", payload)
        elif kind == "data":
            request = to_request([dicts.resolve("dev-a", payload)])
            for metric in request.resource_metrics[0].scope_metrics[0].metrics:
                data = metric.sum.data_points if metric.HasField("sum") else metric.gauge.data_points
                for p in data:
                    attrs = {a.key: a.value.string_value or a.value.int_value for a in p.attributes}
                    if metric.name == INTERVAL_METRIC:
                        if "metric.name" not in attrs:  # the device's base interval, in every batch
                            assert p.as_int == 1000
                            continue
                        intervals.append((p.time_unix_nano // 1_000_000, attrs["k"], p.as_int))
                    elif metric.name.startswith("test."):  # (not the gateway's own, e.g. the agent's losses)
                        points.setdefault(attrs["k"], []).append((p.time_unix_nano // 1_000_000, p.as_int))
    return points, intervals


def test_adaptive_agent_sends_a_share_exactly_and_the_gateway_is_honest_about_gaps(monkeypatch):
    a, collector, transport = run_agent(monkeypatch, 1500, {"policy": "adaptive", "interval_ms": 1000,
                                                             "max_interval_ms": 60000})
    points, intervals = otlp_points(transport)
    read = a.stats["samples_read"]
    sent = sum(len(v) for v in points.values())
    assert read == 3 * 1500 and a.stats["samples_kept"] == sent  # what the stats say is what went out
    assert len(points["walk"]) < 0.3 * 1500 and len(points["bytes"]) < 0.3 * 1500
    assert len(points["flat"]) <= 1500 / 60 + 2  # a flat series: its heartbeat only
    for t, v in points["bytes"]:  # a counter's sent readings are its exact running totals
        assert collector.totals[(t - T0) // 1000] == v
    given = {}  # series -> the interval last given, applies to the gap after the last point before it
    for k, series in points.items():
        for (t1, _), (t2, _) in zip(series, series[1:], strict=False):
            told = [iv for at, key, iv in intervals if key == k and at <= t1 + 10_000]
            assert told, k
            assert t2 - t1 <= told[-1], (k, t1, t2, told[-1])
            given[k] = told[-1]
    assert given == {"walk": 60000, "bytes": 60000, "flat": 60000}


def test_back_at_the_base_interval_the_interval_gauge_says_so(monkeypatch):
    a, _, transport = run_agent(monkeypatch, 400, {"policy": "adaptive", "interval_ms": 1000,
                                                    "max_interval_ms": 60000}, switch_at=200)
    points, intervals = otlp_points(transport)
    after = [(at, key, iv) for at, key, iv in intervals if at >= T0 + 200_000]
    assert {key for _, key, iv in after if iv == 1000} == {"walk", "bytes", "flat"}  # said once each
    assert not [1 for _, _, iv in after if iv != 1000]
    assert len(after) == 3
    assert len([t for t, _ in points["walk"] if t >= T0 + 200_000]) == 200  # every reading since
