"""The device interpreters `python -m firmware build` makes (MicroPython from Debian's source, the agent
frozen in, static), each run as the .ipk's procd service runs it: the launcher (firmware/files/
edge-agent-mpy) with the binary where the package puts it, at that architecture's heap (firmware.
interpreter.ARCHES: 64K on x86_64 (the launcher's default), 48K on the 32-bit ones), x86_64 and i686
natively, armhf and mips under qemu-user.

Against the production broker config (deploy/mosquitto: mutual TLS, certificate CN as identity, ACL)
and the gateway (also through mutual TLS), each binary: sends metrics that arrive as OTLP; applies a
signed command and acks it; stops cleanly on SIGTERM with every batch delivered (none left unsent),
having run without a MemoryError. The launcher replaces itself with the interpreter (one process:
nothing to orphan) and runs the frozen agent even with stray sources in its folder and the current one.
Natively, an idle agent under TLS takes under 1 % of a core (it waits in select.poll: MicroPython
would poll a TLS socket every millisecond). A server certificate from an unknown CA is one clear line
per attempt, retried, not an exit.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from edge_agent import __version__
from edge_wire.command import sign
from edge_wire.decode import decode, parse_batch
from firmware.interpreter import ARCHES
from testbed import production_broker
from testbed.mosquitto import free_port, stop, wait_for
from testbed.otlp_receiver import OtlpReceiver, point_value
from tests.support import ROOT

BIN = os.path.dirname(sys.executable)
LAUNCHER = os.path.join(ROOT, "firmware", "files", "edge-agent-mpy")
DEVICE_KEY = "hex:00112233445566778899aabbccddeeff"
WANTED = {"system.cpu.time", "system.cpu.utilization", "system.memory.usage", "system.memory.limit",
          "system.linux.memory.available", "system.network.io"}


def device(arch):
    return "dev-" + arch.replace("_", "-")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device-tls")
    running = production_broker.start(tmp, [device(arch) for arch in ARCHES])
    # devices on their listener, the gateway and the operator on the services' one
    yield running.device_port, running.service_port, str(running.certs)
    running.stop()


def tls_client(port, certs, name, on_message=None):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    client.tls_set(ca_certs=os.path.join(certs, "ca.crt"), certfile=os.path.join(certs, name + ".crt"),
                   keyfile=os.path.join(certs, name + ".key"))
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def installed(firmware_dist, arch, tmp_path):
    """The package's library folder: `micropython` as the .ipk installs it (under qemu-user when foreign),
    beside stray edge_agent sources that must not be run."""
    out, _log = firmware_dist
    binary = os.path.join(str(out), "micropython-edge-agent-%s-%s" % (__version__, arch))
    lib = tmp_path / "lib"
    lib.mkdir()
    qemu = ARCHES[arch].qemu
    if qemu:
        if not shutil.which(qemu):
            pytest.fail("%s is missing: bin/setup installs qemu-user-static" % qemu)
        (lib / "micropython").write_text("#!/bin/sh\nexec %s %s \"$@\"\n" % (shutil.which(qemu), binary))
        (lib / "micropython").chmod(0o755)
    else:
        (lib / "micropython").symlink_to(binary)
    for folder in (lib / "edge_agent", tmp_path / "edge_agent"):
        folder.mkdir()
        (folder / "__init__.py").write_text("raise SystemExit('a stray source shadowed the frozen agent')\n")
    return lib, binary


def write_config(path, arch, port, certs, tmp_path, ca=None):
    path.write_text(json.dumps({
        "device_id": device(arch), "broker": "mqtts://127.0.0.1:%d" % port,  # a certificate with an IP address
        "tls": {"ca": ca or os.path.join(certs, "ca.crt"), "cert": os.path.join(certs, device(arch) + ".crt"),
                "key": os.path.join(certs, device(arch) + ".key")},
        "interval_s": 0.5, "batch_s": 2.0, "state_dir": str(tmp_path / "state"),
        "commands": {"device_key": DEVICE_KEY},
        "collectors": {"load": {"enabled": False}, "system": {"enabled": False}},
    }))


def launch(arch, lib, config, cwd, log_path):
    env = dict(os.environ, EDGE_AGENT_LIB=str(lib), EDGE_AGENT_HEAP_EVERY_S="5")
    env.pop("MICROPYTHON", None)
    env.pop("EDGE_AGENT_HEAP", None)
    if ARCHES[arch].heap != "64K":  # as the .ipk's service sets it; 64K is the launcher's own default
        env["EDGE_AGENT_HEAP"] = ARCHES[arch].heap
    return subprocess.Popen(["/bin/sh", LAUNCHER, str(config)], env=env, cwd=str(cwd),
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command(operator, acks, dev, cmd, args, command_id, timeout):
    body = {"id": command_id, "cmd": cmd, "args": args, "ts": int(time.time()),
            "nonce": "n-%s-%d" % (command_id, time.monotonic_ns()), "target": dev}
    operator.publish("edge/%s/cmd" % dev, sign(body, DEVICE_KEY), qos=1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ack = json.loads(acks.get(timeout=0.5))
        except queue.Empty:
            continue
        if ack.get("id") == command_id:
            return ack
    raise AssertionError("no ack for %s" % command_id)


@pytest.mark.parametrize("arch", list(ARCHES))
def test_device_binary_end_to_end(arch, broker, firmware_dist, tmp_path):
    port, service_port, certs = broker
    dev = device(arch)
    slow = 3 if ARCHES[arch].qemu else 1  # emulated: TLS handshakes and start-up take longer
    lib, binary = installed(firmware_dist, arch, tmp_path)
    receiver = OtlpReceiver()
    gateway = subprocess.Popen(
        [BIN + "/edge-gateway", "run", "--broker", "mqtts://127.0.0.1:%d" % service_port, "--ca", certs + "/ca.crt",
         "--cert", certs + "/edge-gateway-1.crt", "--key", certs + "/edge-gateway-1.key",
         "--client-id", "edge-gateway-1", "--metrics-port", str(free_port())],
        env=dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf"),
        stdout=open(tmp_path / "gateway.out", "wb"), stderr=subprocess.STDOUT)
    batches: queue.Queue = queue.Queue()
    acks: queue.Queue = queue.Queue()
    # another gateway's identity: the ACL lets gateways read device data and acks
    watcher = tls_client(service_port, certs, "edge-gateway-2",
                         lambda c, u, m: (acks if m.topic.endswith("/ack") else batches).put(m.payload))
    watcher.subscribe([("edge/%s/data" % dev, 1), ("edge/%s/ack" % dev, 1)])
    operator = tls_client(service_port, certs, "edge-operator")
    config = tmp_path / "config.json"
    write_config(config, arch, port, certs, tmp_path)
    log_path = tmp_path / "agent.out"
    agent = launch(arch, lib, config, tmp_path, log_path)
    try:
        time.sleep(0.5)
        exe = os.path.realpath("/proc/%d/exe" % agent.pid)
        assert exe in (os.path.realpath(binary), os.path.realpath(shutil.which(ARCHES[arch].qemu or "sh"))), exe
        wait_for(lambda: WANTED <= {p[1] for p in receiver.points(dev)}, 40 * slow, "%s's metrics as OTLP" % arch)
        point = [p for p in receiver.points(dev) if p[1] == "system.memory.limit"][-1]
        with open("/proc/meminfo") as f:
            assert point_value(point[5]) == int(f.readline().split()[1]) * 1024

        ack = command(operator, acks, dev, "set_sampling", {"interval_ms": 1000}, "fw-%s-1" % arch, 20 * slow)
        assert ack["status"] == "ok" and ack["config"]["sampling"]["interval_ms"] == 1000, ack
        seen = set()

        def slower_ticks():  # a batch made after the change: its ticks 1 s apart
            while not batches.empty():
                payload = bytes(batches.get())
                seen.add(payload)
                ticks = parse_batch(decode(payload)).ticks
                if len(ticks) >= 2 and min(b - a for a, b in zip(ticks, ticks[1:], strict=False)) >= 900:
                    return True
            return False

        wait_for(slower_ticks, 15 * slow, "ticks 1 s apart after the command")
        if not ARCHES[arch].qemu:  # waits in select.poll: an idle TLS connection costs no CPU
            before, started = cpu_seconds(agent.pid), time.monotonic()
            time.sleep(3)
            share = (cpu_seconds(agent.pid) - before) / (time.monotonic() - started)
            assert share < 0.01, "%.1f %% of a core (MicroPython polls a TLS socket every ms)" % (100 * share)
        # mid-batch: ticks wait in the builder when the stop comes (emulated, a tick can come late: 3.6 s is
        # one regular batch more, then a tick; 1.2 s under qemu sometimes saw no tick, so no stop batch)
        time.sleep(1.2 * slow)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        log = log_path.read_text()
        stops = [line for line in log.splitlines() if line.startswith("agent_stop ")]
        assert stops, log[-3000:]
        fields = dict(word.split("=", 1) for word in stops[0].split()[1:])

        def all_arrived():
            while not batches.empty():
                seen.add(bytes(batches.get()))
            return len(seen) == int(fields["batches"])

        wait_for(all_arrived, 10, "every batch of the stopped agent")  # the last one made by the stop
        assert fields["unsent"] == "0" and int(fields["batches"]) >= 3, fields
        assert "memory_error" not in log and "MemoryError" not in log and "Traceback" not in log, log[-3000:]
        assert "mqtt_error" not in log and "shadowed" not in log, log[-3000:]
        heap = [dict(w.split("=", 1) for w in line.split()[1:]) for line in log.splitlines() if line.startswith("heap ")]
        assert heap and all(int(h["alloc"]) + int(h["free"]) <= int(ARCHES[arch].heap[:-1]) * 1024 for h in heap)
        # the RAM buffer fits the heap: a batch per 8 KB of it, not the 360 configured (mpy_setup.cap_buffer)
        capped = [dict(w.split("=", 1) for w in line.split()[1:]) for line in log.splitlines()
                  if line.startswith("buffer_capped ")]
        room = (int(heap[0]["alloc"]) + int(heap[0]["free"])) // 8192
        assert capped == [{"max_batches": str(room), "configured": "360", "reason": "heap"}], log
    finally:
        if agent.poll() is None:
            agent.kill()
        for client in (watcher, operator):
            client.loop_stop()
            client.disconnect()
        stop(gateway)
        receiver.stop()
        print("---- agent\n", log_path.read_text()[-3000:])


def test_a_server_certificate_from_an_unknown_ca_is_reported_and_retried(broker, firmware_dist, tmp_path):
    port, _service_port, certs = broker
    other = tmp_path / "other-ca"
    other.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other",
                    "-keyout", str(other / "ca.key"), "-out", str(other / "ca.crt")], check=True, capture_output=True)
    lib, _binary = installed(firmware_dist, "x86_64", tmp_path)
    config = tmp_path / "config.json"
    write_config(config, "x86_64", port, certs, tmp_path, ca=str(other / "ca.crt"))
    log_path = tmp_path / "agent.out"
    agent = launch("x86_64", lib, config, tmp_path, log_path)
    try:
        errors = lambda: [line for line in log_path.read_text().splitlines() if line.startswith("mqtt_error ")]  # noqa: E731
        wait_for(lambda: len(errors()) >= 2, 20, "two failed attempts")
        assert agent.poll() is None, "the agent exited"
        assert "TLS: " in errors()[0] and "retry_s=" in errors()[0], errors()
        agent.send_signal(signal.SIGINT)  # Ctrl-C, with -m too (patches/0001)
        assert agent.wait(15) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
    log = log_path.read_text()
    assert "Traceback" not in log and "agent_stop " in log, log
