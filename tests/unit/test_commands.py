"""Signed commands: what is accepted, what is rejected (and acked), what persists."""

import hashlib
import hmac as std_hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent import config
from edge_agent.agent import Agent
from edge_agent.commands.handler import CommandHandler, load_overrides
from edge_wire.command import hmac_sha256, sign
from tests.support.agent import DEVICE_KEY, FLEET_KEY, NOW, Offline, make_agent


def body(cmd="ping", args=None, target="dev-7", ts=NOW, nonce="0123456789abcdef", cid="c-1"):
    return {"id": cid, "cmd": cmd, "args": args or {}, "ts": ts, "nonce": nonce, "target": target}


def send(handler, agent, payload, topic="edge/dev-7/cmd"):
    return json.loads(handler.handle(topic, payload, agent))


@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_matches_the_standard_library(key, message):
    assert hmac_sha256(key, message) == std_hmac.new(key, message, hashlib.sha256).digest()


def test_ping_with_device_key(tmp_path):
    agent, handler, _, _ = make_agent(tmp_path)
    ack = send(handler, agent, sign(body(), DEVICE_KEY))
    assert ack["status"] == "ok" and ack["id"] == "c-1" and ack["result"]["pong"] is True
    assert ack["config"]["collectors"]["cpu"] == "procfs"


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "malformed"),
    (json.dumps({"body": json.dumps(body())}).encode(), "unsigned"),
    (sign(body(), "wrong-key"), "bad_signature"),
    (sign(body(ts=NOW - 301), DEVICE_KEY), "stale"),
    (sign(body(ts=NOW + 3600), DEVICE_KEY), "stale"),
    (sign(body(target="dev-8"), DEVICE_KEY), "misaddressed"),
    (sign(body(cmd="reboot"), DEVICE_KEY), "unknown_command"),
    (sign(body(nonce="short"), DEVICE_KEY), "malformed"),
    (sign(dict(body(), ts="soon"), DEVICE_KEY), "malformed"),
    (b"x" * 5000, "malformed"),
])
def test_rejections_are_acked_and_counted(tmp_path, payload, reason):
    agent, handler, _, _ = make_agent(tmp_path)
    ack = send(handler, agent, payload)
    assert ack["status"] == "error" and ack["reason"] == reason, ack
    assert handler.rejected == {reason: 1}


def test_tampered_body_is_rejected(tmp_path):
    agent, handler, _, _ = make_agent(tmp_path)
    envelope = json.loads(sign(body(cmd="set_sampling", args={"policy": "fixed"}), DEVICE_KEY))
    envelope["body"] = envelope["body"].replace("fixed", "adaptive")
    ack = send(handler, agent, json.dumps(envelope).encode())
    assert ack["reason"] == "bad_signature"


def test_replay_is_rejected_even_after_restart(tmp_path):
    agent, handler, _, _ = make_agent(tmp_path)
    payload = sign(body(), DEVICE_KEY)
    assert send(handler, agent, payload)["status"] == "ok"
    assert send(handler, agent, payload)["reason"] == "replayed"
    agent2, handler2, _, _ = make_agent(tmp_path)  # same state dir: a restarted agent
    assert send(handler2, agent2, payload)["reason"] == "replayed"


def test_fleet_and_group_topics_need_the_fleet_key(tmp_path):
    agent, handler, _, _ = make_agent(tmp_path)
    assert "edge/_group/edge-west/cmd" in handler.topics()
    fleet = body(target="*", nonce="fleet-nonce-0001")
    assert send(handler, agent, sign(fleet, DEVICE_KEY), "edge/_fleet/cmd")["reason"] == "bad_signature"
    assert send(handler, agent, sign(fleet, FLEET_KEY), "edge/_fleet/cmd")["status"] == "ok"
    group = body(target="group:edge-west", nonce="group-nonce-0001")
    assert send(handler, agent, sign(group, FLEET_KEY), "edge/_group/edge-west/cmd")["status"] == "ok"
    # a device command replayed onto the fleet topic does not match its target
    other = body(nonce="moved-nonce-0001")
    assert send(handler, agent, sign(other, FLEET_KEY), "edge/_fleet/cmd")["reason"] == "misaddressed"


def test_set_collectors_applies_validates_and_persists(tmp_path):
    agent, handler, _, built = make_agent(tmp_path)
    bad = send(handler, agent, sign(body("set_collectors", {"cpu": {"backend": "magic"}}, nonce="n-bad-000001"), DEVICE_KEY))
    assert bad["status"] == "error" and "cpu.backend: must be one of" in bad["message"]
    assert len(built) == 1  # nothing rebuilt
    ok = send(handler, agent, sign(body("set_collectors", {"network": {"enabled": False}}, nonce="n-ok-0000001"), DEVICE_KEY))
    assert ok["status"] == "ok"
    assert "network" not in agent.collectors and "network" not in ok["config"]["collectors"]
    assert load_overrides(str(tmp_path)) == {"collectors": {"network": {"enabled": False}}}


def test_signing_can_only_be_turned_off_explicitly(tmp_path):
    agent, handler, _, _ = make_agent(tmp_path, require=False)
    unsigned = json.dumps({"body": json.dumps(body())}).encode()
    assert send(handler, agent, unsigned)["status"] == "ok"
    # a present but wrong signature is still rejected
    assert send(handler, agent, sign(body(nonce="another-nonce-1"), "wrong"))["reason"] == "bad_signature"


def test_a_command_signed_before_the_agent_started_is_refused_without_a_state_dir(tmp_path):
    """Issue 12: with the default empty state_dir a command could be replayed after a restart."""
    cfg = config.build({"device_id": "dev-7", "commands": {"device_key": DEVICE_KEY}})
    clock = [NOW]
    handler = CommandHandler(cfg, "dev-7", lambda: clock[0])
    agent = Agent(cfg, [], Offline(), {"device": "dev-7", "boot_id": "b", "boot_time_ms": 0, "collectors": {}},
                  commands=handler)
    captured = sign(body(ts=NOW), DEVICE_KEY)
    assert send(handler, agent, captured)["status"] == "ok"
    clock[0] = NOW + 60  # a minute later the agent restarts, remembering nothing
    restarted = CommandHandler(cfg, "dev-7", lambda: clock[0])
    agent2 = Agent(cfg, [], Offline(), {"device": "dev-7", "boot_id": "b", "boot_time_ms": 0, "collectors": {}},
                   commands=restarted)
    ack = send(restarted, agent2, captured)  # still within the 300 s skew: only its age refuses it
    assert ack["status"] == "error" and ack["reason"] == "replayed" and "start" in ack["message"]
    fresh = sign(body(ts=NOW + 60, nonce="fresh-nonce-0001"), DEVICE_KEY)
    assert send(restarted, agent2, fresh)["status"] == "ok"


def test_forgetting_old_nonces_reopens_nothing(tmp_path, monkeypatch):
    """Issue 12: after MAX_NONCES newer commands within the window an old one was accepted again."""
    from edge_agent.commands import handler as commands

    monkeypatch.setattr(commands, "MAX_NONCES", 8)
    agent, handler, clock, _ = make_agent(tmp_path)
    first = sign(body(ts=NOW, nonce="nonce-first-0"), DEVICE_KEY)
    assert send(handler, agent, first)["status"] == "ok"
    for i in range(10):
        clock[0] = NOW + 1 + i
        assert send(handler, agent, sign(body(ts=NOW + 1 + i, nonce="nonce-later-%02d" % i), DEVICE_KEY))["status"] == "ok"
    assert "nonce-first-0" not in handler.nonces  # forgotten ...
    agent.started_ms -= 3600 * 1000  # (this test's clock runs ahead of the monotonic one)
    ack = send(handler, agent, first)
    assert ack["reason"] == "replayed" and "forgotten" in ack["message"]  # ... yet refused
    agent2, handler2, _, _ = make_agent(tmp_path)  # and after a restart (the floor is persisted)
    handler2.now_s = lambda: NOW + 20
    agent2.started_ms -= 3600 * 1000  # started long before: only the floor can refuse it
    assert send(handler2, agent2, first)["reason"] == "replayed"


@pytest.mark.parametrize("key", ["hex:zz5ecret", "hex:abc5ecret1", "hex:5ec", "hex:"])
def test_a_malformed_hex_key_is_a_config_error_that_does_not_show_the_key(key):
    """Issue 12: a malformed `hex:` key passed the check and crashed the agent at the first command."""
    with pytest.raises(config.ConfigError) as info:
        config.build({"commands": {"device_key": key, "fleet_key": "text-key"}})
    assert "config key 'commands.device_key'" in str(info.value) and "5ec" not in str(info.value)
    config.build({"commands": {"device_key": "hex:00ff", "fleet_key": "any text"}})  # these are fine
