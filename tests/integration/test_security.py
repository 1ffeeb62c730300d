"""The production broker config (deploy/mosquitto) with real certificates: who may do what.

mutual TLS, certificate CN as identity, per-device ACL. A device with a valid certificate cannot
publish as another device, read another device's commands or another group's, nor forge a
delivery receipt; a client without a certificate cannot connect; each kind of client connects only
on its own listener (devices: fleet CA, 8883; gateways and operators: service CA, 8884); each
certificate is good for its role only (a device's cannot serve as the broker's); the real agent and
gateway work through it end to end (delivery receipts included); no credential reaches a log; a
signed command cannot be replayed after the agent restarts, even without a state directory.
"""

from __future__ import annotations

import json
import os
import queue
import ssl
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from testbed import production_broker
from testbed.mosquitto import MOSQUITTO, free_port, stop, wait_for
from tests.support import ROOT

DEPLOY = os.path.join(ROOT, "deploy", "mosquitto")
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    # the production ACL, and dev-a in group "west" as provisioning would add it
    running = production_broker.start(tmp, ("dev-a", "dev-b"), acl_extra="\nuser dev-a\ntopic read edge/_group/west/cmd\n")
    yield {"port": running.device_port, "service_port": running.service_port, "certs": running.certs, "tmp": tmp,
           "conf": running.conf}
    running.stop()


SERVICES = ("edge-gateway-1", "edge-gateway-2", "edge-operator")


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


def port_of(broker, name: str | None) -> int:
    return broker["service_port"] if name in SERVICES else broker["port"]


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
    gateway = connected(client(broker, "edge-gateway-1", seen), broker["service_port"])
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
    operator = connected(client(broker, "edge-operator"), broker["service_port"])
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


@pytest.mark.parametrize("name, listener", [("dev-a", "service_port"), ("edge-gateway-1", "port"),
                                            ("edge-operator", "port")])
def test_each_kind_of_client_connects_only_on_its_listener(broker, name, listener):
    """A device cannot reach the services' listener (where client ids are free), nor a service the
    devices' one: each listener trusts one CA."""
    c = client(broker, name)
    with pytest.raises((ssl.SSLError, OSError)):
        c.connect("127.0.0.1", broker[listener])
        for _ in range(40):
            c.loop(0.05)
            if c.is_connected():
                break
        assert not c.is_connected()
        raise OSError("not connected")
    assert port_of(broker, name) != broker[listener]


def test_agent_and_gateway_through_mutual_tls(broker):
    certs, tmp, port = broker["certs"], broker["tmp"], broker["port"]
    out = tmp / "otlp.jsonl"
    url = "mqtts://127.0.0.1:%d" % port
    service = "mqtts://127.0.0.1:%d" % broker["service_port"]
    gateway = subprocess.Popen([BIN + "/edge-gateway", "run", "--broker", service, "--ca", str(certs / "ca.crt"),
                                "--cert", str(certs / "edge-gateway-1.crt"), "--key", str(certs / "edge-gateway-1.key"),
                                "--metrics-port", "0", "--output", str(out)],
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
        # the gateway's receipts pass the ACL: the agent waits for them from then on
        wait_for(lambda: 'ack="gateway receipt"' in (tmp / "agent.log").read_text(), 10, "a delivery receipt")
    finally:
        for proc in (agent, gateway):
            proc.terminate()
            proc.wait(10)


def test_group_commands_reach_only_the_groups_devices(broker):
    """Issue 12: every device could read every group's commands."""
    a_seen: queue.Queue = queue.Queue()
    b_seen: queue.Queue = queue.Queue()
    dev_a = connected(client(broker, "dev-a", a_seen), broker["port"])  # in group west (the ACL says)
    dev_b = connected(client(broker, "dev-b", b_seen), broker["port"])  # in no group
    for device in (dev_a, dev_b):
        subscribe(device, "edge/_group/west/cmd")
        subscribe(device, "edge/_group/+/cmd")
        subscribe(device, "edge/_fleet/cmd")
    operator = connected(client(broker, "edge-operator"), broker["service_port"])
    operator.publish("edge/_group/west/cmd", b"for west", qos=1).wait_for_publish(5)
    operator.publish("edge/_group/east/cmd", b"for east", qos=1).wait_for_publish(5)
    operator.publish("edge/_fleet/cmd", b"for all", qos=1).wait_for_publish(5)
    got_a = sorted(set(drain(a_seen, 1.0)))
    assert got_a == [("edge/_fleet/cmd", b"for all"), ("edge/_group/west/cmd", b"for west")], got_a
    assert sorted(set(drain(b_seen, 0.1))) == [("edge/_fleet/cmd", b"for all")]
    for c in (dev_a, dev_b, operator):
        c.loop_stop()
        c.disconnect()


def test_only_gateways_write_delivery_receipts(broker):
    """A receipt makes a device forget batches: a device must not be able to forge one for another."""
    a_seen: queue.Queue = queue.Queue()
    dev_a = connected(client(broker, "dev-a", a_seen), broker["port"])
    assert subscribe(dev_a, "edge/dev-a/delivery") == [1]
    subscribe(dev_a, "edge/dev-b/delivery")
    dev_b = connected(client(broker, "dev-b"), broker["port"])
    gateway = connected(client(broker, "edge-gateway-1"), broker["service_port"])
    dev_b.publish("edge/dev-a/delivery", b"forged", qos=1).wait_for_publish(5)
    gateway.publish("edge/dev-b/delivery", b"for b", qos=1).wait_for_publish(5)
    gateway.publish("edge/dev-a/delivery", b"for a", qos=1).wait_for_publish(5)
    assert drain(a_seen, 1.0) == [("edge/dev-a/delivery", b"for a")]
    for c in (dev_a, dev_b, gateway):
        c.loop_stop()
        c.disconnect()


def test_each_certificate_is_good_for_its_role_only(broker, tmp_path):
    """deploy/mosquitto/gen-certs.sh: the server certificate serves TLS (serverAuth), client
    certificates authenticate clients (clientAuth), the CA signs. A device's certificate and key
    cannot pose as the broker: the agent refuses a broker that presents one."""
    certs = broker["certs"]

    def verify(name, purpose):
        ca = "service-ca.crt" if name in SERVICES else "ca.crt"
        return subprocess.run(["openssl", "verify", "-CAfile", str(certs / ca), "-purpose", purpose,
                               str(certs / (name + ".crt"))], capture_output=True, text=True).returncode == 0

    assert verify("server", "sslserver") and not verify("server", "sslclient")
    for name in ("dev-a", "edge-gateway-1", "edge-operator"):
        assert verify(name, "sslclient") and not verify(name, "sslserver"), name
    text = subprocess.run(["openssl", "x509", "-in", str(certs / "ca.crt"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "CA:TRUE" in text and "Certificate Sign" in text

    # a broker that presents dev-a's certificate (dev-a's key stolen, say) is refused by the agent
    port = free_port()
    conf = broker["conf"].replace("listener %d 127.0.0.1" % broker["port"], "listener %d 127.0.0.1" % port).replace(
        "listener %d 127.0.0.1" % broker["service_port"], "listener %d 127.0.0.1" % free_port())
    conf = conf.replace(str(certs / "server.crt"), str(certs / "dev-a.crt")).replace(
        str(certs / "server.key"), str(certs / "dev-a.key"))
    (tmp_path / "rogue.conf").write_text(conf)
    rogue = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "rogue.conf")], stdout=open(tmp_path / "rogue.log", "wb"),
                             stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: socket_open(port), 10, "the rogue broker")
        agent = subprocess.run([BIN + "/edge-agent", "run", "--broker", "mqtts://localhost:%d" % port,
                                "--device-id", "dev-b", "--ca", str(certs / "ca.crt"), "--cert", str(certs / "dev-b.crt"),
                                "--key", str(certs / "dev-b.key"), "--duration", "4", "--log-format", "json"],
                               capture_output=True, text=True, timeout=30)
        # (the same agent and certificates connect to the real broker: test_agent_and_gateway_through_mutual_tls)
        assert '"mqtt_connected"' not in agent.stderr and "Traceback" not in agent.stderr, agent.stderr[-2000:]
        assert agent.returncode == 1 and "TLS" in agent.stderr.strip().splitlines()[-1], agent.stderr[-2000:]
    finally:
        stop(rogue)


def socket_open(port):
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_no_credential_reaches_a_log(tmp_path, mosquitto_broker):
    """MQTT user names and passwords, OTLP headers (API keys), command keys: in no log line, on no
    path (start, connection, command, stop), in neither process."""
    from edge_wire.command import sign
    from testbed.otlp_receiver import OtlpReceiver

    secrets_ = {"mqtt": "mqtt-pa55-Zq8", "otlp": "otlp-t0ken-Yx7", "key": "c0mmand-key-Wv6", "user": "us3r-Name-K2"}
    receiver = OtlpReceiver()
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
               OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20" + secrets_["otlp"])
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"username": secrets_["user"], "password": secrets_["mqtt"],
                                  "commands": {"device_key": secrets_["key"]}}))
    url = "mqtt://%s:%s@127.0.0.1:%d" % (secrets_["user"], secrets_["mqtt"], mosquitto_broker)
    gateway = subprocess.Popen([BIN + "/edge-gateway", "run", "--broker", url, "--metrics-port", "0",
                                "--log-format", "json"], env=env, stdout=open(tmp_path / "gw.log", "wb"),
                               stderr=subprocess.STDOUT)
    agent = subprocess.Popen([BIN + "/edge-agent", "run", "--broker", "mqtt://127.0.0.1:%d" % mosquitto_broker,
                              "--device-id", "dev-s", "--config", str(config), "--interval", "0.5", "--batch", "1"],
                             stdout=open(tmp_path / "agent.log", "wb"), stderr=subprocess.STDOUT)
    ops = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ops-s")
    ops.connect("127.0.0.1", mosquitto_broker)
    ops.loop_start()
    try:
        wait_for(lambda: receiver.points("dev-s"), 20, "data through the gateway")
        body = {"id": "c-s1", "cmd": "ping", "args": {}, "ts": int(time.time()), "nonce": "nonce-s-0001",
                "target": "dev-s"}
        ops.publish("edge/dev-s/cmd", sign(body, secrets_["key"]), qos=1)
        ops.publish("edge/dev-s/cmd", sign(dict(body, nonce="nonce-s-0002"), "wrong"), qos=1)  # rejected, logged
        time.sleep(1.5)
    finally:
        ops.loop_stop()
        for proc in (agent, gateway):
            proc.terminate()
            proc.wait(10)
        receiver.stop()
    logs = (tmp_path / "gw.log").read_text() + (tmp_path / "agent.log").read_text()
    assert "command_rejected" in logs and '"started"' in logs, logs[-3000:]
    for what, secret in secrets_.items():
        assert secret not in logs, "%s in a log:\n%s" % (what, logs[-3000:])


def test_a_command_cannot_be_replayed_after_a_restart_without_a_state_dir(tmp_path, mosquitto_broker):
    """Issue 12: with the default (empty) state_dir a signed command was accepted again after a restart."""
    key = "hex:00112233445566778899aabbccddeeff"
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"commands": {"device_key": key}}))
    acks: queue.Queue = queue.Queue()
    ops = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ops-r")
    ops.on_message = lambda c, u, m: acks.put(json.loads(m.payload))
    ops.connect("127.0.0.1", mosquitto_broker)
    ops.subscribe("edge/dev-r/ack", 1)
    ops.loop_start()

    def start():
        proc = subprocess.Popen([BIN + "/edge-agent", "run", "--broker", "mqtt://127.0.0.1:%d" % mosquitto_broker,
                                 "--device-id", "dev-r", "--config", str(config)],
                                stdout=open(tmp_path / "agent.log", "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: (tmp_path / "agent.log").read_text().count("connected") > start.count, 15, "the agent")
        start.count += 1
        return proc

    start.count = 0

    def ack_for(payload, command_id):
        ops.publish("edge/dev-r/cmd", payload, qos=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                ack = acks.get(timeout=0.5)
            except queue.Empty:
                continue
            if ack["id"] == command_id:
                return ack
        raise AssertionError("no ack for " + command_id)

    from edge_wire.command import sign

    try:
        agent = start()
        captured = sign({"id": "c-r1", "cmd": "set_sampling", "args": {"interval_ms": 2000}, "ts": int(time.time()),
                         "nonce": "nonce-r-0001", "target": "dev-r"}, key)
        assert ack_for(captured, "c-r1")["status"] == "ok"
        agent.terminate()
        agent.wait(10)
        time.sleep(1.1)  # a restart, as soon as a supervisor makes it
        agent = start()
        ack = ack_for(captured, "c-r1")  # the same bytes again: within the 300 s window, nonce forgotten
        assert ack["status"] == "error" and ack["reason"] == "replayed", ack
    finally:
        ops.loop_stop()
        agent.terminate()
        agent.wait(10)
