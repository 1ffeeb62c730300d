"""Remote tuning end to end: a real agent, mosquitto, and `edge-gateway tune` / `devices`.

Commands change the read interval within one tick; bad signatures, stale or invalid commands
are rejected with the right ack and change nothing; accepted changes survive an agent restart.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time

import msgpack
import paho.mqtt.client as mqtt
import pytest

from edge_wire.command import sign
from edge_wire.decode import decode, parse_batch
from testbed.mosquitto import start_mosquitto, stop

BIN = os.path.dirname(sys.executable)
DEVICE_KEY = "hex:5e1f0a2b3c4d5e6f708192a3b4c5d6e7"
FLEET_KEY = "fleet-secret-for-tests"


@pytest.fixture
def setup(tmp_path):
    proc, port = start_mosquitto(tmp_path)
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({
        "group": "west", "interval_s": 0.5, "batch_s": 1, "state_dir": str(tmp_path / "state"),
        "commands": {"device_key": DEVICE_KEY, "fleet_key": FLEET_KEY},
        "collectors": {"network": {"enabled": False}},
    }))
    agents = []

    def start_agent():
        agent = subprocess.Popen([BIN + "/edge-agent", "run", "--config", str(config), "--device-id", "tuned-1",
                                  "--broker", "mqtt://127.0.0.1:%d" % port],
                                 stdout=open(tmp_path / "agent.log", "ab"), stderr=subprocess.STDOUT)
        agents.append(agent)
        return agent

    yield {"port": port, "start_agent": start_agent, "tmp": tmp_path}
    for agent in agents:
        if agent.poll() is None:
            agent.terminate()
            agent.wait(10)
    stop(proc)
    print((tmp_path / "agent.log").read_text()[-3000:])


def gateway(port, *words, key=DEVICE_KEY, timeout=8):
    result = subprocess.run([BIN + "/edge-gateway", *words, "--broker", "mqtt://127.0.0.1:%d" % port]
                            + (["--command-key", key, "--timeout", str(timeout)] if words[0] == "tune" else []),
                            capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


class DataWatch:
    """Subscribes to the device's data and records each batch's tick timestamps."""

    def __init__(self, port):
        self.batches: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch")
        self.client.on_message = lambda c, u, m: self.batches.put((time.monotonic(), m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("edge/tuned-1/data", qos=1)
        self.client.loop_start()

    def tick_gaps(self, seconds):
        """Tick-to-tick gaps (ms) across the batches received in the next `seconds`."""
        ticks = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                _, payload = self.batches.get(timeout=0.2)
            except queue.Empty:
                continue
            ticks.extend(parse_batch(decode(payload)).ticks)
        return [b - a for a, b in zip(ticks, ticks[1:], strict=False)]

    def drain(self):
        while not self.batches.empty():
            self.batches.get()

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def wait_online(port):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        code, out = gateway(port, "devices", "--json")
        rows = json.loads(out) if code == 0 and out.strip().startswith("[") else []
        if any(r["device"] == "tuned-1" and r["state"] == "online" and r["policy"] for r in rows):
            return rows
        time.sleep(0.3)
    raise AssertionError("agent never came online")


def test_tune_changes_interval_rejects_bad_commands_and_persists(setup):
    port = setup["port"]
    setup["start_agent"]()
    wait_online(port)
    watch = DataWatch(port)
    before = watch.tick_gaps(2.5)
    assert before and max(before) < 900, before  # 0.5 s ticks

    code, out = gateway(port, "tune", "tuned-1", "set_sampling", "interval_ms=2000")
    assert code == 0 and "ok" in out and "interval_ms=2000" in out, out
    watch.drain()
    after = watch.tick_gaps(7)
    assert after and min(after) >= 1900, after  # the very next ticks are 2 s apart

    code, out = gateway(port, "tune", "tuned-1", "ping", key="not-the-key")
    assert code == 1 and "bad_signature" in out, out
    code, out = gateway(port, "tune", "tuned-1", "set_sampling", "interval_ms=5")
    assert code == 1 and "invalid" in out and "interval_ms" in out, out
    code, out = gateway(port, "tune", "--group", "west", "ping", key=FLEET_KEY)
    assert code == 0 and "tuned-1" in out, out

    # a stale command, signed correctly but an hour old: rejected, acked, not applied
    acks: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ops")
    client.on_message = lambda c, u, m: acks.put(json.loads(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe("edge/tuned-1/ack", qos=1)
    client.loop_start()
    time.sleep(0.3)
    body = {"id": "old-1", "cmd": "set_sampling", "args": {"interval_ms": 800}, "ts": int(time.time()) - 3600,
            "nonce": "stale-nonce-0001", "target": "tuned-1"}
    client.publish("edge/tuned-1/cmd", sign(body, DEVICE_KEY), qos=1)
    ack = acks.get(timeout=10)
    assert ack["id"] == "old-1" and ack["reason"] == "stale"
    assert ack["config"]["sampling"]["interval_ms"] == 2000
    client.loop_stop()
    client.disconnect()
    watch.close()

    # the accepted change is what the fleet view shows, and what the state dir keeps
    rows = json.loads(gateway(port, "devices", "--json")[1])
    assert [r for r in rows if r["device"] == "tuned-1"][0]["interval_ms"] == 2000
    state = setup["tmp"] / "state" / "overrides.json"
    assert json.loads(state.read_text())["sampling"]["interval_ms"] == 2000


def test_accepted_change_survives_restart(setup):
    port = setup["port"]
    first = setup["start_agent"]()
    wait_online(port)
    code, out = gateway(port, "tune", "tuned-1", "set_sampling", "interval_ms=1500")
    assert code == 0, out
    first.terminate()
    first.wait(10)
    setup["start_agent"]()
    watch = DataWatch(port)
    gaps = watch.tick_gaps(6)
    watch.close()
    assert gaps and min(gaps) >= 1400, gaps
    birth = {}

    def on_birth(c, u, m):
        birth.update(msgpack.unpackb(m.payload, strict_map_key=False))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="birth-reader")
    client.on_message = on_birth
    client.connect("127.0.0.1", port)
    client.subscribe("edge/tuned-1/birth", qos=1)
    client.loop_start()
    time.sleep(1)
    client.loop_stop()
    assert birth["sampling"]["interval_ms"] == 1500 and birth["group"] == "west"
