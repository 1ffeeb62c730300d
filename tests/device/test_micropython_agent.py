"""The MicroPython agent end to end as the .mpy bundle on a stock interpreter (the PyPI `micropython`):
mosquitto, the gateway, OTLP.

The device modules (firmware/manifest.py) are compiled with mpy-cross (as `python -m firmware build`
does for the bundle) into a directory that holds nothing but .mpy files, and `micropython
-X heapsize=HEAP -m edge_agent.device.main` runs from an empty working directory with
MICROPYPATH=<that directory>:.frozen, so no source can be imported. The gateway (`edge-gateway run`)
exports OTLP/HTTP to tests/otlp_receiver.OtlpReceiver. A signed set_sampling command changes the
interval and is acked "ok"; a badly signed one is rejected.

HEAP is the launcher's default for a stock interpreter (firmware/files/edge-agent-mpy), which this
job, signed commands included, passes in: on a stock interpreter bytecode loaded from .mpy lives in
the heap. The agent's own interpreter, with the modules frozen in, runs in 64K
(tests/device/test_device_binary.py).

Also, on CPython: agent.EveryInterval reads exactly when sampling.Sampler's fixed policy reads.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from edge_agent.agent import EveryInterval
from edge_agent.sampling.sampler import Sampler
from edge_wire.command import sign
from edge_wire.decode import decode, parse_batch
from firmware import manifest
from firmware.build import compile_mpy
from testbed.mosquitto import free_port, wait_for
from testbed.otlp_receiver import OtlpReceiver, point_value
from tests.support import ROOT

BIN = os.path.dirname(sys.executable)
MICROPYTHON = os.path.join(BIN, "micropython")
HEAP = "160K"
DEVICE = "mpy-e2e"
DEVICE_KEY = "hex:0f1e2d3c4b5a69788796a5b4c3d2e1f0"


# ---------------------------------------------------------------- CPython: EveryInterval == Sampler(fixed)


def schedule(sampler, times):
    return [(t, bool(sampler.due(t))) for t in times]


def test_every_interval_reads_when_the_fixed_sampler_reads():
    times = [0, 10, 999, 1000, 1500, 2000, 2001, 5300, 5999, 6300, 7300, 7301, 8300]
    fixed = Sampler({"policy": "fixed", "interval_ms": 1000})
    every = EveryInterval(interval_ms=1000)
    assert schedule(every, times) == schedule(fixed, times)
    # a change applies from the last read, as Sampler._reschedule does
    assert every.update({"interval_ms": 2500}) == fixed.update({"interval_ms": 2500}) == []
    assert every.next_due_ms() == fixed.next_due_ms()
    later = [8400, 10799, 10800, 13300, 20000, 20001, 22500]
    assert schedule(every, later) == schedule(fixed, later)
    # the same validation
    assert every.update({"interval_ms": 5}) == fixed.update({"interval_ms": 5}) != []
    assert every.snapshot()["interval_ms"] == fixed.snapshot()["interval_ms"] == 2500
    assert every.snapshot()["policy"] == "fixed"
    assert not every.covers({"policy": "adaptive"}) and not every.covers({"cpu_base_ms": 500})


# ---------------------------------------------------------------- the bundle under micropython


@pytest.fixture
def bundle(tmp_path):
    mpy, _version = compile_mpy(manifest.sources())
    lib = tmp_path / "lib"
    for rel, data in mpy.items():
        target = lib / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    assert {p.suffix for p in lib.rglob("*") if p.is_file()} == {".mpy"}
    return lib


@pytest.fixture
def pipeline(tmp_path, mosquitto_broker, bundle):
    port = mosquitto_broker
    receiver = OtlpReceiver()
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    gateway = subprocess.Popen(
        [BIN + "/edge-gateway", "run", "--broker", "mqtt://127.0.0.1:%d" % port, "--metrics-port", str(free_port())],
        env=env, stdout=open(tmp_path / "gateway.out", "wb"), stderr=subprocess.STDOUT)
    work = tmp_path / "device"
    work.mkdir()
    config = work / "config.json"
    config.write_text(json.dumps({
        "device_id": DEVICE, "broker": "mqtt://127.0.0.1:%d" % port, "interval_s": 0.5, "batch_s": 2.0,
        "state_dir": str(work / "state"), "commands": {"device_key": DEVICE_KEY},
        "collectors": {"load": {"enabled": False}, "system": {"enabled": False}},
    }))
    agent = subprocess.Popen(
        [MICROPYTHON, "-X", "heapsize=" + HEAP, "-m", "edge_agent.device.main", str(config)],
        env=dict(os.environ, MICROPYPATH="%s:.frozen" % bundle, EDGE_AGENT_HEAP_EVERY_S="5"),
        cwd=str(work), stdout=open(tmp_path / "agent.out", "wb"), stderr=subprocess.STDOUT)
    acks: queue.Queue = queue.Queue()
    batches: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mpy-e2e-ops")

    def on_message(c, u, m):
        (acks if m.topic.endswith("/ack") else batches).put((time.monotonic(), m.payload))

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe([("edge/%s/ack" % DEVICE, 1), ("edge/%s/data" % DEVICE, 1)])
    client.loop_start()
    yield {"receiver": receiver, "client": client, "acks": acks, "batches": batches, "agent": agent,
           "log": tmp_path / "agent.out"}
    client.loop_stop()
    client.disconnect()
    for proc in (agent, gateway):
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    receiver.stop()
    for name in ("agent.out", "gateway.out"):
        print("----", name, "\n", (tmp_path / name).read_text()[-3000:])


def mem_total_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    raise AssertionError("no MemTotal")


def command(pipeline, key, cmd, args, command_id):
    body = {"id": command_id, "cmd": cmd, "args": args, "ts": int(time.time()),
            "nonce": "n-%s-%d" % (command_id, time.monotonic_ns()), "target": DEVICE}
    pipeline["client"].publish("edge/%s/cmd" % DEVICE, sign(body, key), qos=1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            _, payload = pipeline["acks"].get(timeout=0.5)
        except queue.Empty:
            continue
        ack = json.loads(payload)
        if ack.get("id") == command_id:
            return ack
    raise AssertionError("no ack for %s" % command_id)


def tick_gaps(batches, seconds):
    ticks = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            _, payload = batches.get(timeout=0.2)
        except queue.Empty:
            continue
        ticks.extend(parse_batch(decode(payload)).ticks)
    return [b - a for a, b in zip(ticks, ticks[1:], strict=False)]


@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="the micropython binary is part of the venv")
def test_mpy_bundle_reaches_otlp_and_obeys_signed_commands(pipeline):
    receiver = pipeline["receiver"]
    wanted = {"system.cpu.time", "system.cpu.utilization", "system.memory.usage", "system.memory.limit",
              "system.linux.memory.available", "system.network.io", "system.network.packets",
              "system.network.errors", "system.network.dropped"}
    wait_for(lambda: wanted <= {p[1] for p in receiver.points(DEVICE)}, 30, "the MicroPython agent's metrics")
    points = receiver.points(DEVICE)
    resource = points[0][0]
    assert resource["service.instance.id"] == DEVICE
    by_key = {}
    for _resource, name, unit, _metric, attrs, point in points:
        by_key.setdefault((name, tuple(sorted(attrs.items()))), []).append((unit, point))
    unit, point = by_key[("system.memory.limit", ())][-1]
    assert unit == "By" and point_value(point) == mem_total_kib() * 1024
    assert all(0.0 <= point_value(p) <= 1.0 for _u, p in by_key[("system.cpu.utilization", (("cpu", "cpu0"), ("state", "idle")))])
    unit, point = by_key[("system.cpu.time", (("cpu", "cpu0"), ("state", "idle")))][-1]
    assert unit == "s" and point_value(point) > 0
    assert abs(point.time_unix_nano / 1e9 - time.time()) < 30

    # a signed command changes the interval: acked ok, the next ticks are 2 s apart
    ack = command(pipeline, DEVICE_KEY, "set_sampling", {"interval_ms": 2000}, "mpy-tune-1")
    assert ack["status"] == "ok" and ack["config"]["sampling"]["interval_ms"] == 2000, ack
    while not pipeline["batches"].empty():
        pipeline["batches"].get()
    gaps = tick_gaps(pipeline["batches"], 7)
    assert gaps and min(gaps) >= 1900, gaps

    # a bad signature is rejected, acked with its reason, and changes nothing
    ack = command(pipeline, "hex:" + "00" * 16, "set_sampling", {"interval_ms": 500}, "mpy-bad-1")
    assert ack["status"] == "error" and ack["reason"] == "bad_signature", ack
    assert ack["config"]["sampling"]["interval_ms"] == 2000

    assert pipeline["agent"].poll() is None, "the agent exited"
    log = pipeline["log"].read_text()
    assert "MemoryError" not in log and "Traceback" not in log, log[-2000:]
    heap = [line for line in log.splitlines() if line.startswith("heap ")]
    assert heap and all("alloc=" in line for line in heap)


# ---------------------------------------------------------------- MemoryError is survived on the device

# Runs the bundle's mpy_main with Agent.flush and Agent.step wrapped: on some passes the heap is filled
# with 256-byte blocks, then 16-byte ones, until allocation fails (a heap as full as it gets), the real
# method runs in what is left, and the ballast is freed afterwards. Only this driver is a source file.
SQUEEZE_DRIVER = """
import sys
from edge_agent.device import main as mpy_main
from edge_agent.agent import Agent

def squeezed(real, every, phase):
    count = [0]
    def method(self):
        count[0] += 1
        if count[0] %% every != phase:
            return real(self)
        sys.stderr.write("squeeze pass=%%d\\n" %% count[0])  # before the squeeze: only the agent runs in it
        ballast = None
        for size in (256, 16):  # big blocks, then whatever room is left: nothing fits afterwards
            try:
                while True:
                    ballast = [ballast, bytearray(size)]  # linked: no list to grow
            except MemoryError:
                pass
        try:
            return real(self)
        finally:
            ballast = None
    return method

Agent.flush = squeezed(Agent.flush, %(flush_every)d, 1)
Agent.step = squeezed(Agent.step, %(step_every)d, 5)
Agent.publish_birth = squeezed(Agent.publish_birth, 1000, 1)  # the first birth
sys.exit(mpy_main.main(sys.argv))
"""


@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="the micropython binary is part of the venv")
def test_mpy_agent_survives_memory_errors_and_keeps_sending(tmp_path, mosquitto_broker, bundle):
    port = mosquitto_broker
    work = tmp_path / "device"
    work.mkdir()
    config = work / "config.json"
    config.write_text(json.dumps({
        "device_id": "mpy-squeeze", "broker": "mqtt://127.0.0.1:%d" % port, "interval_s": 0.5, "batch_s": 2.0,
        "state_dir": str(work / "state"), "commands": {"device_key": DEVICE_KEY},
        "collectors": {"load": {"enabled": False}, "system": {"enabled": False}},
    }))
    driver = work / "squeeze.py"
    driver.write_text(SQUEEZE_DRIVER % {"flush_every": 3, "step_every": 11})
    received: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mpy-squeeze-sub")
    client.on_message = lambda c, u, m: received.put((time.monotonic(), m.topic, m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe([("edge/mpy-squeeze/data", 1), ("edge/mpy-squeeze/birth", 1)])
    client.loop_start()
    log_path = tmp_path / "agent.out"
    agent = subprocess.Popen(
        [MICROPYTHON, "-X", "heapsize=" + HEAP, str(driver), str(config)],
        env=dict(os.environ, MICROPYPATH="%s:.frozen" % bundle), cwd=str(work),
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    lost = []
    births = []
    try:
        def lost_reported():
            while not received.empty():
                _, topic, payload = received.get()
                if topic.endswith("/birth"):
                    births.append(payload)
                else:
                    assert births, "a data batch came before the birth it refers to"
                    lost.append(parse_batch(decode(payload)).ext.get("lost"))
            return any(entry and entry[0] >= 2 for entry in lost)

        # the squeezed flushes drop their batch (the `memory_error` log line itself may not fit in a
        # squeezed heap: the batches that follow are what reports the loss, exactly)
        wait_for(lost_reported, 60, "two batches lost to memory reported in ext.lost")
        assert agent.poll() is None, "the agent exited"
    finally:
        client.loop_stop()
        client.disconnect()
        if agent.poll() is None:
            agent.send_signal(2)
            agent.wait(15)
    log = log_path.read_text()
    print(log[-3000:])
    assert "Traceback" not in log and "squeeze pass=" in log
    reported = [entry for entry in lost if entry]
    assert reported[-1][0] >= 2 and reported[-1][1] > 0, lost
    assert [entry[0] for entry in reported] == sorted(entry[0] for entry in reported)  # counts only grow
    stop = [line for line in log.splitlines() if line.startswith("agent_stop ")]
    assert stop, "no clean stop after the memory errors"


LAUNCHER = os.path.join(ROOT, "firmware", "files", "edge-agent-mpy")


@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="the micropython binary is part of the venv")
def test_launcher_stops_the_agent_cleanly_on_sigterm(tmp_path, mosquitto_broker, bundle):
    """procd and systemd stop a service with SIGTERM, which MicroPython cannot handle: the launcher
    passes it on as SIGINT, so the agent sends its pending ticks before it exits (none is lost)."""
    port = mosquitto_broker
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "device_id": "mpy-term", "broker": "mqtt://127.0.0.1:%d" % port, "interval_s": 0.5, "batch_s": 2.0,
        "state_dir": str(tmp_path / "state"), "commands": {"enabled": False},
        "collectors": {"load": {"enabled": False}, "system": {"enabled": False}},
    }))
    batches: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mpy-term-sub")
    client.on_message = lambda c, u, m: batches.put(m.payload)
    client.connect("127.0.0.1", port)
    client.subscribe("edge/mpy-term/data", 1)
    client.loop_start()
    log_path = tmp_path / "agent.out"
    launcher = subprocess.Popen(
        ["/bin/sh", LAUNCHER, str(config)],
        env=dict(os.environ, EDGE_AGENT_LIB=str(bundle), MICROPYTHON=MICROPYTHON),  # its default heap
        cwd=str(tmp_path), stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: not batches.empty(), 30, "a first batch from the launched agent")
        time.sleep(1.2)  # mid-batch: ticks are waiting in the builder when the stop comes
        launcher.terminate()
        assert launcher.wait(15) == 0
        time.sleep(0.5)
    finally:
        client.loop_stop()
        client.disconnect()
        if launcher.poll() is None:
            launcher.kill()
    log = log_path.read_text()
    print(log[-2000:])
    stop = [line for line in log.splitlines() if line.startswith("agent_stop ")]
    assert stop, "no clean stop: SIGTERM ended the agent at once"
    fields = dict(word.split("=", 1) for word in stop[0].split()[1:])
    received = set()
    while not batches.empty():
        received.add(bytes(batches.get()))
    # every batch made arrived, the last one (flushed by the stop) included; nothing left unsent
    assert fields["unsent"] == "0" and int(fields["batches"]) == len(received) >= 2, (fields, len(received))


@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="the micropython binary is part of the venv")
def test_a_heap_too_small_to_start_is_a_clear_error(tmp_path, bundle):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"device_id": "mpy-small", "broker": "mqtt://127.0.0.1:1",
                                  "state_dir": str(tmp_path / "state")}))
    proc = subprocess.run([MICROPYTHON, "-X", "heapsize=40K", "-m", "edge_agent.device.main", str(config)],
                          env=dict(os.environ, MICROPYPATH="%s:.frozen" % bundle), cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "out of memory while starting in a 39 KB heap" in proc.stderr and "-X heapsize=" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="the micropython binary is part of the venv")
def test_no_orphan_when_the_launcher_is_killed(tmp_path, mosquitto_broker, bundle):
    """On a stock interpreter the launcher is the agent's parent (it passes signals on); killed outright
    (SIGKILL: nothing to pass on), the agent notices and stops cleanly instead of running on beside the
    launcher its supervisor starts next."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "device_id": "mpy-orphan", "broker": "mqtt://127.0.0.1:%d" % mosquitto_broker, "interval_s": 0.5,
        "batch_s": 2.0, "state_dir": str(tmp_path / "state"), "commands": {"enabled": False},
        "collectors": {"load": {"enabled": False}, "system": {"enabled": False}},
    }))
    log_path = tmp_path / "agent.out"
    launcher = subprocess.Popen(["/bin/sh", LAUNCHER, str(config)],
                                env=dict(os.environ, EDGE_AGENT_LIB=str(bundle), MICROPYTHON=MICROPYTHON),
                                cwd=str(tmp_path), stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    agent = None
    try:
        wait_for(lambda: "connected " in log_path.read_text(), 30, "the launched agent to connect")
        children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1, children
        agent = int(children[0])
        launcher.kill()
        launcher.wait(5)
        wait_for(lambda: not os.path.exists("/proc/%d" % agent) or open("/proc/%d/stat" % agent).read().split()[2]
                 == "Z", 15, "the orphaned agent to stop")
        agent = None
    finally:
        if agent is not None:
            os.kill(agent, 9)
    log = log_path.read_text()
    assert "launcher_gone pid=%d" % launcher.pid in log, log[-2000:]
    assert "agent_stop " in log and "Traceback" not in log, log[-2000:]
