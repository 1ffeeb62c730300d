"""One connection story on both sides (issue 13), with real processes and a real mosquitto: the
broker goes away for 35 s and comes back. The agent and the gateway log the disconnect with its
reason, every failed attempt with why and the delay before the next (1 s doubling to 16 s, minus
up to half at random: docs/reliability.md), the agent what it holds and when the backlog is
delivered; both are back within 16 s of the broker; /readyz fails at once, /healthz only after
--unhealthy-after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from testbed.mosquitto import free_port, start_mosquitto, stop, wait_for

BIN = os.path.dirname(sys.executable)
LONGEST_S = 16  # edge_wire.paho.RECONNECT_S
REFUSED = "connection refused by 127.0.0.1:%d: is the broker running, on this port?"


def events(path, name=None):
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if name is None or record.get("event") == name:
                out.append(record)
    return out


def get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None, {}


def check_delays(delays):
    """Each wait is in [d/2, d] for d = 1, 2, 4, 8, 16, 16, ... (rounded to 0.1 s in the log)."""
    d = 1
    for delay in delays:
        assert d / 2 - 0.05 <= delay <= d + 0.05, (delays, d)
        d = min(2 * d, LONGEST_S)


@pytest.mark.slow
def test_broker_outage_told_by_agent_and_gateway_with_health(tmp_path):
    broker, port = start_mosquitto(tmp_path)
    metrics = free_port()
    gateway_log, agent_log = tmp_path / "gateway.log", tmp_path / "agent.log"
    gateway = subprocess.Popen([BIN + "/edge-gateway", "run", "--broker", "mqtt://127.0.0.1:%d" % port,
                                "--metrics-port", str(metrics), "--log-format", "json", "--unhealthy-after", "5",
                                "--output", str(tmp_path / "out.jsonl")],
                               stdout=subprocess.DEVNULL, stderr=open(gateway_log, "wb"))
    agent = subprocess.Popen([BIN + "/edge-agent", "run", "--broker", "mqtt://127.0.0.1:%d" % port,
                              "--device-id", "story", "--interval", "0.5", "--batch", "1", "--log-format", "json"],
                             stdout=subprocess.DEVNULL, stderr=open(agent_log, "wb"))
    try:
        wait_for(lambda: len(events(gateway_log, "mqtt_connected")) == 2 and events(agent_log, "mqtt_connected"),
                 20, "both connected")
        wait_for(lambda: get(metrics, "/readyz")[0] == 200, 10, "ready")
        assert get(metrics, "/healthz")[0] == 200
        stop(broker)
        down_at = time.monotonic()
        wait_for(lambda: get(metrics, "/readyz")[0] == 503, 5, "/readyz failing")
        status, ready = get(metrics, "/readyz")
        assert ready["problem"] == "not connected to the broker" and ready["mqtt_connected"] is False
        assert get(metrics, "/healthz")[0] == 200 or time.monotonic() - down_at > 4  # a short outage is no reason
        wait_for(lambda: get(metrics, "/healthz")[0] == 503, 15, "/healthz failing after --unhealthy-after")
        status, health = get(metrics, "/healthz")
        assert health["problem"].startswith("the broker has been unreachable for ") and health["problem"].endswith(
            " s (limit 5 s)") and health["status"] == "unhealthy", health
        assert health["mqtt_error"] == REFUSED % port
        time.sleep(max(0.0, 35 - (time.monotonic() - down_at)))
        broker, _ = start_mosquitto(tmp_path, port=port)
        back_at = time.monotonic()
        wait_for(lambda: len(events(agent_log, "mqtt_connected")) == 2, LONGEST_S + 5, "the agent back")
        agent_back = time.monotonic() - back_at
        wait_for(lambda: len(events(gateway_log, "mqtt_connected")) == 4, LONGEST_S + 5, "the gateway back")
        gateway_back = time.monotonic() - back_at
        wait_for(lambda: events(agent_log, "backlog_delivered"), 20, "the backlog delivered")
        wait_for(lambda: get(metrics, "/healthz")[0] == 200 and get(metrics, "/readyz")[0] == 200, 5, "healthy again")
    finally:
        for proc in (agent, gateway):
            proc.terminate()
        assert agent.wait(15) == 0 and gateway.wait(15) == 0
        stop(broker)
    print("FIGURES agent back %.1f s, gateway back %.1f s after the broker" % (agent_back, gateway_back))
    assert agent_back <= LONGEST_S + 2 and gateway_back <= LONGEST_S + 2  # + connect time and the test's polling

    story = [e for e in events(agent_log) if e["event"] in (
        "mqtt_connected", "mqtt_disconnected", "mqtt_error", "buffering", "backlog_delivered")]
    names = [e["event"] for e in story]
    assert names[:2] == ["mqtt_connected", "mqtt_disconnected"], names
    assert names[-2:] == ["mqtt_connected", "backlog_delivered"], names
    assert "buffering" in names and set(names[2:-2]) == {"mqtt_error", "buffering"}, names
    down = story[1]
    assert down["reason"] == "connection lost" and down["broker"] == "mqtt://127.0.0.1:%d" % port
    errors = [e for e in story if e["event"] == "mqtt_error"]
    assert all(e["error"] == REFUSED % port for e in errors)
    assert [e["attempt"] for e in errors] == list(range(1, len(errors) + 1))
    check_delays([down["retry_s"]] + [e["retry_s"] for e in errors])
    assert len(errors) >= 4  # 35 s of outage: at least 1 + 2 + 4 + 8 s of waits before 16 s ones
    held = [e for e in story if e["event"] == "buffering"]
    assert held[0]["batches"] >= 1 and held[-1]["offline_s"] >= held[0]["offline_s"]
    assert story[-2]["offline_s"] >= 35 and story[-1]["batches"] >= 30  # ~35 batches of 1 s made offline

    data_id = events(gateway_log, "started")[0]["client_id"]
    for client_id in (data_id, data_id + "-meta"):
        mine = [e for e in events(gateway_log) if e.get("client_id") == client_id and e["event"].startswith("mqtt_")]
        names = [e["event"] for e in mine]
        assert names[:2] == ["mqtt_connected", "mqtt_disconnected"] and names[-2:] == [
            "mqtt_connected", "mqtt_disconnected"], names  # the last: the stop
        assert mine[-1]["reason"] == "stopping" and mine[1]["reason"] == "connection lost"
        failed = [e for e in mine if e.get("event") == "mqtt_error"]
        assert all(e["error"] == REFUSED % port for e in failed) and len(failed) >= 4
        check_delays([e["retry_s"] for e in mine[:-1] if e.get("event") in ("mqtt_disconnected", "mqtt_error")])
        assert [e for e in mine if e.get("event") == "mqtt_connected"][-1]["offline_s"] >= 35
