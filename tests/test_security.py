"""The production broker config (deploy/mosquitto) with real certificates: who may do what.

mutual TLS, certificate CN as identity, per-device ACL. A device with a valid certificate cannot
publish as another device nor read another device's commands; a client without a certificate
cannot connect; and the real agent and gateway work through it end to end.
"""

from __future__ import annotations

import json
import os
import queue
import ssl
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mosquitto import start_production_broker, stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy", "mosquitto")
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    proc, port, certs = start_production_broker(tmp, ["dev-a", "dev-b"])
    yield {"port": port, "certs": Path(certs), "tmp": tmp}
    stop(proc)


def client(broker, name: str | None, messages: queue.Queue | None = None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name or "anonymous")
    certs = broker["certs"]
    if name is None:
        c.tls_set(ca_certs=str(certs / "ca.crt"))
    else:
        c.tls_set(ca_certs=str(certs / "ca.crt"), certfile=str(certs / (name + ".crt")), keyfile=str(certs / (name + ".key")))
    if messages is not None:
        c.on_message = lambda _c, _u, m: messages.put((m.topic, m.payload))
    return c


def connected(c: mqtt.Client, port: int) -> mqtt.Client:
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + 5
    while not c.is_connected() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert c.is_connected()
    return c


def subscribe(c: mqtt.Client, topic: str) -> list:
    granted = queue.Queue()
    c.on_subscribe = lambda _c, _u, mid, codes, props: granted.put([rc.value for rc in codes])
    c.subscribe(topic, qos=1)
    return granted.get(timeout=5)


def drain(q: queue.Queue, seconds: float) -> list:
    time.sleep(seconds)
    out = []
    while not q.empty():
        out.append(q.get())
    return out


def test_device_cannot_publish_as_another_device(broker):
    seen: queue.Queue = queue.Queue()
    gateway = connected(client(broker, "edge-gateway-1", seen), broker["port"])
    assert subscribe(gateway, "edge/+/data") == [1]
    device = connected(client(broker, "dev-a"), broker["port"])
    device.publish("edge/dev-a/data", b"mine", qos=1).wait_for_publish(5)
    device.publish("edge/dev-b/data", b"spoofed", qos=1).wait_for_publish(5)
    device.publish("edge/dev-b/birth", b"spoofed", qos=1, retain=True).wait_for_publish(5)
    got = drain(seen, 1.0)
    assert ("edge/dev-a/data", b"mine") in got
    assert all(payload != b"spoofed" for _, payload in got)
    for c in (gateway, device):
        c.loop_stop()
        c.disconnect()


def test_device_cannot_read_another_devices_commands(broker):
    a_seen: queue.Queue = queue.Queue()
    b_seen: queue.Queue = queue.Queue()
    dev_a = connected(client(broker, "dev-a", a_seen), broker["port"])
    dev_b = connected(client(broker, "dev-b", b_seen), broker["port"])
    # mosquitto 2.0 grants the subscription and enforces `read` on every delivery
    subscribe(dev_a, "edge/dev-b/cmd")
    subscribe(dev_a, "edge/+/cmd")
    assert subscribe(dev_a, "edge/dev-a/cmd") == [1]
    assert subscribe(dev_b, "edge/dev-b/cmd") == [1]
    operator = connected(client(broker, "edge-operator"), broker["port"])
    operator.publish("edge/dev-b/cmd", b"for b only", qos=1).wait_for_publish(5)
    dev_a.publish("edge/dev-b/cmd", b"forged by a", qos=1).wait_for_publish(5)  # devices cannot command
    assert drain(b_seen, 1.0) == [("edge/dev-b/cmd", b"for b only")]
    assert drain(a_seen, 0.1) == []
    for c in (dev_a, dev_b, operator):
        c.loop_stop()
        c.disconnect()


def test_client_without_certificate_cannot_connect(broker):
    c = client(broker, None)
    with pytest.raises((ssl.SSLError, OSError)):
        c.connect("127.0.0.1", broker["port"])
        for _ in range(50):  # the server refuses the handshake or drops the connection
            c.loop(0.05)
            if c.is_connected():
                break
        assert not c.is_connected()
        raise OSError("not connected")
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain")
    with pytest.raises(OSError):
        plain.connect("127.0.0.1", broker["port"])
        for _ in range(40):
            plain.loop(0.05)
        assert not plain.is_connected()
        raise OSError("not connected")


def test_agent_and_gateway_through_mutual_tls(broker):
    certs, tmp, port = broker["certs"], broker["tmp"], broker["port"]
    out = tmp / "otlp.jsonl"
    url = "mqtts://127.0.0.1:%d" % port
    gateway = subprocess.Popen([BIN + "/edge-gateway", "run", "--broker", url, "--ca", str(certs / "ca.crt"),
                                "--cert", str(certs / "edge-gateway-1.crt"), "--key", str(certs / "edge-gateway-1.key"),
                                "--client-id", "edge-gateway-1", "--metrics-port", "0", "--output", str(out)],
                               stdout=open(tmp / "gw.log", "wb"), stderr=subprocess.STDOUT)
    agent = subprocess.Popen([BIN + "/edge-agent", "run", "--broker", url, "--device-id", "dev-a",
                              "--ca", str(certs / "ca.crt"), "--cert", str(certs / "dev-a.crt"),
                              "--key", str(certs / "dev-a.key"), "--interval", "0.5", "--batch", "1"],
                             stdout=open(tmp / "agent.log", "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        devices = set()
        while time.monotonic() < deadline and "dev-a" not in devices:
            time.sleep(0.3)
            if out.exists():
                for line in out.read_text().splitlines():
                    for rm in json.loads(line).get("resourceMetrics", []):
                        for attr in rm["resource"]["attributes"]:
                            if attr["key"] == "service.instance.id":
                                devices.add(attr["value"]["stringValue"])
        assert "dev-a" in devices, (tmp / "gw.log").read_text()[-2000:] + (tmp / "agent.log").read_text()[-2000:]
    finally:
        for proc in (agent, gateway):
            proc.terminate()
            proc.wait(10)
