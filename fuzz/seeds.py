"""Real encoder output for the fuzz harnesses: the messages each seed corpus starts from.

`python fuzz/seeds.py` (re)writes fuzz/corpus/<harness>/ from edge_wire and
edge_agent.commands.handler; the harnesses import the builders to set up their state the same way.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from edge_agent import config  # noqa: E402
from edge_agent.commands.handler import CommandHandler  # noqa: E402
from edge_agent.model import Series, SeriesTable  # noqa: E402
from edge_wire import COUNTER, GAUGE, HISTOGRAM  # noqa: E402
from edge_wire.batch import BatchBuilder  # noqa: E402
from edge_wire.birth import boot_tag, encode_birth  # noqa: E402
from edge_wire.command import sign  # noqa: E402

DEVICE = "dev-1"
BOOT_ID = "4f3c2a10-1111-2222-3333-444455556666"
BOOT_TIME_MS = 1_700_000_000_000
NOW = 1_763_740_800
DEVICE_KEY = "device-secret"
FLEET_KEY = "hex:00112233445566778899aabbccddeeff"
TOPICS = ("edge/dev-7/cmd", "edge/_fleet/cmd", "edge/_group/edge-west/cmd", "edge/dev-8/cmd")


def same(a: object, b: object) -> bool:
    """Equality where NaN equals NaN and a list is a list (msgpack gives lists for tuples too)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def table() -> tuple[SeriesTable, list[Series]]:
    t = SeriesTable(0)
    t.base = 0
    series = [
        Series("system.network.io", COUNTER, "By", {"device": "eth0", "direction": "receive"}, 1, None, "procfs"),
        Series("system.cpu.time", COUNTER, "s", {"cpu": "total", "state": "user"}, 0.01, None, "procfs"),
        Series("system.cpu.utilization", GAUGE, "1", {"cpu": "total"}, 0.0001, None, "procfs"),
        Series("system.memory.usage", GAUGE, "By", {"state": "used"}, 1024, None, "procfs"),
        Series("test.latency", HISTOGRAM, "s", {}, 0.001, [0.01, 0.1, 1], "ebpf"),
    ]
    for s in series:
        t.intern(s)
    return t, series


def birth(t: SeriesTable | None = None) -> bytes:
    t = t or table()[0]
    info = {"device": DEVICE, "boot_id": BOOT_ID, "boot_time_ms": BOOT_TIME_MS, "agent": "0.1.0", "os": "linux",
            "platform": "cpython-3.11", "collectors": {"cpu": "procfs", "network": "netlink"},
            "interval_ms": 1000, "sampling": {"policy": "fixed"}}
    return encode_birth(info, t)


def batches() -> list[bytes]:
    _, (rx, cpu, util, mem, lat) = table()
    out = []
    for compress in (False, True):
        b = BatchBuilder()
        for i in range(3):
            b.add_tick(BOOT_TIME_MS + 60_000 + 1000 * i, [
                (rx, 1000 + 500 * i), (cpu, 12345 + 100 * i), (util, 2500 - i), (mem, 4096 + i),
                (lat, (3 + i, 250 + i, (1, 1 + i, 1, 0)))])
        out.append(b.encode(DEVICE, boot_tag(BOOT_ID), 1 << 40, 0, compress))
    b = BatchBuilder()
    b.add_tick(BOOT_TIME_MS, [(rx, 1), (util, -5)])
    b.add_tick(BOOT_TIME_MS + 1000, [(util, 7)])
    out.append(b.encode(DEVICE, boot_tag(BOOT_ID), 2, 0, ext={"lost": [1, 10], "iv": [[5000, 2]]}))
    return out


class Collector:
    def __init__(self, name: str) -> None:
        self.name = name
        self.source = "procfs"

    def collect(self) -> list:
        return []

    def close(self) -> None:
        pass


class Offline:
    connected = False

    def publish(self, *args):
        return None


def agent():
    """A real Agent with a CommandHandler, as tests/support/agent.py builds it; nothing persisted."""
    from edge_agent.agent import Agent

    state = tempfile.mkdtemp(prefix="fuzz-agent-")
    cfg = config.build({"device_id": "dev-7", "group": "edge-west", "state_dir": state,
                        "commands": {"device_key": DEVICE_KEY, "fleet_key": FLEET_KEY, "require_signature": True}})

    def factory(section):
        chosen = [Collector(n) for n in section if section[n]["enabled"]]
        return chosen, {c.name: "procfs" for c in chosen}

    collectors, effective = factory(cfg["collectors"])
    info = {"device": "dev-7", "boot_id": "b", "boot_time_ms": 0, "collectors": effective}
    handler = CommandHandler(cfg, "dev-7", lambda: NOW)
    a = Agent(cfg, collectors, Offline(), info, commands=handler, collector_factory=factory)
    return a, handler


def command_bodies() -> list[dict]:
    base = {"ts": NOW, "nonce": "0123456789abcdef", "target": "dev-7"}
    return [dict(base, id="c-%d" % i, cmd=cmd, args=args) for i, (cmd, args) in enumerate([
        ("ping", {}), ("get_config", {}), ("rebirth", {}), ("flush", {}),
        ("set_sampling", {"policy": "adaptive", "interval_ms": 5000}),
        ("set_sampling", {"policy": "adaptive", "adaptive_share": 0.1, "max_interval_ms": 60000}),
        ("set_collectors", {"network": {"enabled": False}}),
        ("set_collectors", {"cpu": {"backend": "procfs", "per_cpu": False}}),
    ])]


def write_corpus(root: str) -> dict[str, int]:
    """Seed files, one input each, in the form the harnesses read them."""
    seeds: dict[str, list[bytes]] = {
        "gateway_decode": [b"\x00" + birth()] + [b"\x01" + p for p in batches()] + [b"\x02" + birth()],
        "umsgpack": [birth()] + batches() + [b"\x93\xc0\xc3\xcb" + b"\x3f\xf0" + b"\x00" * 6 + b"\x81\xa1k\xc4\x01x"],
        "agent_command": [],
    }
    for body in command_bodies():
        seeds["agent_command"].append(b"\x00\x00" + sign(body, DEVICE_KEY))  # a whole envelope
        seeds["agent_command"].append(b"\x01\x00" + json.dumps(body).encode())  # a body, signed by the harness
    seeds["agent_command"].append(b"\x01\x01" + json.dumps(dict(command_bodies()[0], target="*")).encode())
    counts = {}
    for name, items in seeds.items():
        directory = os.path.join(root, name)
        os.makedirs(directory, exist_ok=True)
        for i, data in enumerate(items):
            with open(os.path.join(directory, "seed-%02d" % i), "wb") as f:
                f.write(data)
        counts[name] = len(items)
    return counts


if __name__ == "__main__":
    print(write_corpus(os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")))
