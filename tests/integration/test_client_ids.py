"""Client ids that cannot collide (issue 13), with the production broker (deploy/mosquitto) and
certificates from its gen-certs.sh: one gateway, and two replicas of a share group, run for a minute
beside two agents; the broker's log must show no session taken over. A control puts back what the
shipped config did before (the certificate's name forced as the client id of every client) and
sees the takeovers, and the gateway's mqtt_flapping line that names the cause.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from gateway.ops import identity
from testbed import production_broker
from testbed.mosquitto import free_port, stop, wait_for

BIN = os.path.dirname(sys.executable)


def gateway(broker, tmp, name, cert, *extra):
    log = tmp / ("%s.log" % name)
    proc = subprocess.Popen([BIN + "/edge-gateway", "run", "--broker", "mqtts://127.0.0.1:%d" % broker.service_port,
                             *broker.client_tls(cert), "--metrics-port", str(free_port()), "--log-format", "json",
                             "--output", str(tmp / ("%s.jsonl" % name)), *extra],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    return proc, log


def agent(broker, tmp, device):
    log = tmp / ("%s.log" % device)
    proc = subprocess.Popen([BIN + "/edge-agent", "run", "--broker", "mqtts://127.0.0.1:%d" % broker.device_port,
                             "--device-id", device, *broker.client_tls(device), "--interval", "1", "--batch", "2",
                             "--log-format", "json"], stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    return proc, log


def events(log):
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def devices_exported(path):
    found = set()
    if path.exists():
        for line in path.read_text().splitlines():
            for rm in json.loads(line).get("resourceMetrics", []):
                for attr in rm["resource"]["attributes"]:
                    if attr["key"] == "service.instance.id":
                        found.add(attr["value"]["stringValue"])
    return found


@pytest.mark.slow
def test_no_session_is_taken_over_in_a_minute_one_gateway_and_two_replicas(tmp_path):
    broker = production_broker.start(tmp_path)
    procs = []
    try:
        solo = gateway(broker, tmp_path, "solo", "edge-gateway-1", "--state-dir", str(tmp_path / "solo-state"))
        pair = [gateway(broker, tmp_path, "pair-%d" % i, "edge-gateway-%d" % i, "--share-group", "pair")
                for i in (1, 2)]
        agents = [agent(broker, tmp_path, d) for d in ("dev-a", "dev-b")]
        procs = [p for p, _ in [solo, *pair, *agents]]
        wait_for(lambda: devices_exported(tmp_path / "solo.jsonl") == {"dev-a", "dev-b"}, 30, "the solo gateway's export")
        started = time.monotonic()
        while time.monotonic() - started < 60:  # a minute of normal operation, watched
            assert all(p.poll() is None for p in procs), [p.returncode for p in procs]
            time.sleep(1)
        assert production_broker.takeovers(broker) == []
        ids = []
        for _proc, log in (solo, *pair):
            seen = events(log)
            connected = [e["client_id"] for e in seen if e.get("event") == "mqtt_connected"]
            assert len(connected) == 2, seen  # data and meta, each once: never kicked, never reconnected
            assert not [e for e in seen if e.get("event") in ("mqtt_disconnected", "mqtt_error", "mqtt_flapping")]
            assert {c for c in connected if c.endswith("-meta")} == {connected[0] + "-meta"} or \
                {c for c in connected if c.endswith("-meta")} == {connected[1] + "-meta"}
            ids += connected
        assert len(set(ids)) == 6  # unique per process and per connection
        kept = (tmp_path / "solo-state" / identity.FILE).read_text().strip()
        assert kept in ids and kept.startswith("edge-gateway-")  # the solo's id is kept for its next start
        started_line = [e for e in events(solo[1]) if e.get("event") == "started"][0]
        assert started_line["session"] == "persistent"
        assert [e for e in events(pair[0][1]) if e.get("event") == "started"][0]["session"] == "ends with this process"
        both = devices_exported(tmp_path / "pair-1.jsonl") | devices_exported(tmp_path / "pair-2.jsonl")
        assert both == {"dev-a", "dev-b"}
        for _proc, log in agents:
            seen = events(log)
            assert [e["event"] for e in seen if e["event"].startswith("mqtt_")] == ["mqtt_connected"], seen
        # on the devices' listener the broker forces the certificate's name as the client id
        text = broker.log.read_text()
        assert " as dev-a " in text and " as dev-b " in text
    finally:
        for proc in procs:
            stop(proc)
        broker.stop()


@pytest.mark.slow
def test_control_a_forced_client_id_makes_the_gateways_connections_fight(tmp_path):
    """What the shipped config did before: every client's id forced to its certificate's name."""
    def force(conf):  # the services' listener is the config's last section: this line joins it
        assert conf.rstrip().endswith("tls_version tlsv1.2")
        return conf.rstrip() + "\nuse_username_as_clientid true\n"

    broker = production_broker.start(tmp_path, edit=force)
    proc, log = gateway(broker, tmp_path, "forced", "edge-gateway-1")
    try:
        wait_for(lambda: len(production_broker.takeovers(broker)) >= 3, 30, "the two connections to fight")
        wait_for(lambda: [e for e in events(log) if e.get("event") == "mqtt_flapping"], 30, "the mqtt_flapping line")
    finally:
        stop(proc)
        broker.stop()
    flapping = [e for e in events(log) if e.get("event") == "mqtt_flapping"][0]
    assert "another client uses the same client id" in flapping["msg"]
    assert "use_username_as_clientid" in flapping["hint"]


def test_gateway_client_ids(tmp_path):
    assert identity.client_id("gw-7", None) == ("gw-7", True)
    first, stable = identity.client_id(None, None, "host")
    second, _ = identity.client_id(None, None, "host")
    assert not stable and first != second and first.startswith("edge-gateway-host-")
    kept, stable = identity.client_id(None, str(tmp_path), "host.example.org")
    assert stable and kept.startswith("edge-gateway-host-") and identity.client_id(None, str(tmp_path))[0] == kept
    assert identity.client_id("gw-7", str(tmp_path)) == ("gw-7", True)  # given outright: as given
