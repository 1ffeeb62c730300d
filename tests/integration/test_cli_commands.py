"""The commands people expect (issue 13): `edge-agent config check|default`, `edge-gateway keygen`,
`--help` with defaults, `edge-agent replay` through argparse with a table beside --json, `once`
listing only its flags; passwords from the environment or a file, never in a log."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edge_agent import config
from edge_agent.cli.config_doc import describe, render_default
from edge_wire.command import key_bytes
from testbed.mosquitto import MOSQUITTO, start_mosquitto, stop, wait_for
from tests.support import ROOT

BIN = os.path.dirname(sys.executable)
AGENT, GATEWAY = BIN + "/edge-agent", BIN + "/edge-gateway"


def run(*argv, env=None, timeout=60):
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_config_default_is_every_default_explained_and_loads(tmp_path):
    text = run(AGENT, "config", "default").stdout
    assert text == render_default()
    path = tmp_path / "agent.json"
    path.write_text(text)
    assert config.load(str(path)) == config.build()
    assert run(AGENT, "config", "check", str(path)).stdout.strip() == "%s: ok" % path
    assert all(describe(key) for key, _default, _rule in config.rules())  # no key left unexplained
    assert '  # one series per CPU (false: the total only)\n      "per_cpu": true,' in text.replace("    #", "  #")


def test_config_check_reports_each_problem_by_key_and_exits_2(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text('# a comment\n{"interval_s": "fast",\n "brokr": "mqtt://x"}\n')
    proc = run(AGENT, "config", "check", str(path))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["edge-agent: bad configuration", "  config file %s:" % path,
                                        "    config key 'brokr': unknown key",
                                        "    config key 'interval_s': must be a number, got \"fast\""]
    path.write_text('{"interval_s": 1,\n# fine\n "batch_s": }')
    proc = run(AGENT, "config", "check", str(path))
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr and "line 3" in proc.stderr  # lines kept


def test_once_help_lists_only_what_once_uses():
    text = run(AGENT, "once", "--help").stdout
    flags = sorted(set(word.split("=")[0].strip("[],") for word in text.split() if word.startswith("--")))
    assert flags == ["--compress", "--config", "--device-id", "--help", "--interval", "--json", "--proc-root", "--ticks"]


def test_help_shows_defaults_and_never_a_secret():
    env = {"EDGE_GATEWAY_MQTT_PASSWORD": "s3cret-gw", "EDGE_AGENT_MQTT_PASSWORD": "s3cret-agent",
           "EDGE_COMMAND_KEY": "hex:5ec2e7", "EDGE_GATEWAY_PROMETHEUS_PASSWORD": "s3cret-prom"}
    def help_of(*argv):
        return " ".join(run(*argv, "--help", env=env).stdout.split())  # as one line: argparse wraps

    agent = help_of(AGENT, "run")
    assert "(default: 1.0) [config: interval_s]" in agent and "(default: mqtt://127.0.0.1:1883)" in agent
    gateway = help_of(GATEWAY, "run")
    assert "(default: 9464)" in gateway and "(default: mqtt://localhost:1883)" in gateway
    tune = help_of(GATEWAY, "tune")
    assert "(default: 10.0)" in tune
    for text in (agent, gateway, tune, help_of(GATEWAY, "devices")):
        assert "s3cret" not in text and "5ec2e7" not in text


def test_keygen_makes_a_key_that_tune_and_the_agent_accept(tmp_path):
    proc = run(GATEWAY, "keygen")
    key = proc.stdout.strip()
    assert key.startswith("hex:") and len(key_bytes(key)) == 32 and proc.stdout.count("\n") == 1
    assert "commands.device_key" in proc.stderr and "EDGE_COMMAND_KEY" in proc.stderr
    assert run(GATEWAY, "keygen").stdout.strip() != key
    fleet = run(GATEWAY, "keygen", "--for", "fleet")
    assert "commands.fleet_key" in fleet.stderr and "--all" in fleet.stderr
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"commands": {"device_key": key, "fleet_key": fleet.stdout.strip()}}))
    assert run(AGENT, "config", "check", str(path)).returncode == 0


def test_replay_is_argparse_with_a_table_and_json(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("timestamp,value\n" + "".join("%d,%d\n" % (t, (t % 50) * (t % 7)) for t in range(600)))
    table = run(AGENT, "replay", "--policy", "adaptive", str(trace))
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].startswith("trace %s: 600 samples, step 1s, gauge" % trace)
    header = [line for line in lines if "KEPT" in line][0].split()
    assert header == ["KEPT", "SHARE", "ERR", "MEAN", "ERR", "P99", "P99", "PEAKS", "MISSED", "P95", "PEAKS", "MISSED",
                      "UNSAMPLED", "STALE", "MAX"]
    rows = {line.split()[0]: line.split() for line in lines[lines.index([x for x in lines if "KEPT" in x][0]) + 1:]}
    assert set(rows) == {"adaptive", "uniform", "deadband", "adam"}
    result = json.loads(run(AGENT, "replay", "--policy", "adaptive", "--json", str(trace)).stdout)
    assert rows["adaptive"][1] == str(result["samples_kept"])
    assert rows["uniform"][1] == str(result["baselines"]["uniform"]["samples_kept"])
    assert rows["adaptive"][8:11] == [str(result["peaks95_missed"]), "/", str(result["peaks95"])]
    floor = json.loads(run(AGENT, "replay", "--policy", "adaptive", "--baseline", "deadband,optimum", "--batch", "5",
                           "--json", str(trace)).stdout)
    assert floor["batch"] == 5 and set(floor["baselines"]) == {"deadband", "optimum"}
    assert floor["baselines"]["optimum"]["err_mean"] <= floor["baselines"]["deadband"]["err_mean"]
    assert run(AGENT, "replay", "--help").returncode == 0
    bad = run(AGENT, "replay", "--policy", "adaptive", "--baseline", "nope", str(trace))
    assert bad.returncode == 2 and bad.stderr.strip() == ("edge-agent replay: --baseline: unknown nope "
                                                          "(choose from uniform, deadband, adam, optimum, all, none)")
    module = run(sys.executable, "-m", "edge_agent.cli.replay", "--policy", "adaptive", "--json", str(trace))
    assert json.loads(module.stdout) == result  # the same parser and evaluation as `edge-agent replay`
    usage = run(sys.executable, "-m", "edge_agent.cli.replay", "--policy", "adaptive", "--nope", str(trace))
    assert usage.returncode == 2 and "unrecognized arguments: --nope" in usage.stderr  # argparse's own line
    missing = run(AGENT, "replay", "--policy", "fixed", str(tmp_path / "missing.csv"))
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "edge-agent replay: %s: cannot read it (No such file or directory)" % (tmp_path / "missing.csv"))


# ------------------------------------------------------------------------ passwords


@pytest.fixture
def password_broker(tmp_path):
    passwords = tmp_path / "passwords"
    for user, password in (("agent", "s3cret-agent"), ("gw", "s3cret-gw")):
        subprocess.run([os.path.join(os.path.dirname(MOSQUITTO), "mosquitto_passwd") if os.path.exists(
            os.path.join(os.path.dirname(MOSQUITTO), "mosquitto_passwd")) else "mosquitto_passwd",
            "-b", *(["-c"] if not passwords.exists() else []), str(passwords), user, password], check=True)
    proc, port = start_mosquitto(tmp_path, "allow_anonymous false\npassword_file %s\n%s" % (
        passwords, "user root\n" if os.geteuid() == 0 else ""))
    yield port
    stop(proc)


def test_passwords_from_the_environment_or_a_file_never_in_the_logs(tmp_path, password_broker):
    port = password_broker
    url = "mqtt://127.0.0.1:%d" % port
    pw = tmp_path / "pw"
    pw.write_text("s3cret-agent\n")
    conf = tmp_path / "agent.json"
    conf.write_text(json.dumps({"broker": url, "username": "agent", "password_file": str(pw)}))
    for how, argv, env in (
            ("environment", ["--broker", url, "--username", "agent"], {"EDGE_AGENT_MQTT_PASSWORD": "s3cret-agent"}),
            ("flag file", ["--broker", url, "--username", "agent", "--password-file", str(pw)], {}),
            ("config file", ["--config", str(conf)], {})):
        proc = run(AGENT, "run", "--device-id", "pw", "--duration", "1.5", *argv, env=env)
        assert proc.returncode == 0 and "mqtt_connected " in proc.stderr, (how, proc.stderr)
        assert "s3cret" not in proc.stderr, how
    wrong = run(AGENT, "run", "--device-id", "pw", "--duration", "1.5", "--broker", url, "--username", "agent",
                env={"EDGE_AGENT_MQTT_PASSWORD": "wrong-one"})
    assert wrong.returncode == 1 and "wrong-one" not in wrong.stderr
    assert wrong.stderr.strip().splitlines()[-1] == (
        "edge-agent: never connected to %s: the broker at 127.0.0.1:%d refused the connection: Not authorized"
        % (url, port))

    gw_pw = tmp_path / "gw-pw"
    gw_pw.write_text("s3cret-gw")
    log = tmp_path / "gateway.log"
    gateway = subprocess.Popen([GATEWAY, "run", "--broker", url, "--username", "gw", "--password-file", str(gw_pw),
                                "--metrics-port", "0", "--output", "/dev/null", "--log-format", "json"],
                               stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        wait_for(lambda: log.read_text().count('"mqtt_connected"') == 2, 15, "the gateway connected with its file")
    finally:
        stop(gateway)
    devices = run(GATEWAY, "devices", "--broker", url, "--username", "gw", env={"EDGE_GATEWAY_MQTT_PASSWORD": "s3cret-gw"})
    assert devices.returncode == 0, devices.stderr
    assert "s3cret" not in log.read_text() + devices.stdout + devices.stderr


def test_firmware_build_runs_in_the_project_environment_or_says_what_to_run(tmp_path):
    root = ROOT
    other = "/usr/bin/python3"  # not the venv's interpreter: the build re-runs itself there
    proc = subprocess.run([other, "-m", "firmware", "build", "--help"], cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "--out" in proc.stdout, proc.stderr
    copy = tmp_path / "checkout"
    copy.mkdir()
    subprocess.run(["cp", "-r", os.path.join(root, "firmware"), str(copy)], check=True)
    proc = subprocess.run([other, "-m", "firmware", "build"], cwd=str(copy), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("python -m firmware: the project's environment is missing: run bin/setup, then "
                                   ".venv/bin/python -m firmware build")


def test_gateway_on_a_terminal_without_exporter_logs_batches_not_json(tmp_path, mosquitto_broker):
    """No OTEL_*, --output nor remote write, stdout a terminal: a line per batch, no OTLP JSON flood."""
    import pty

    from tests.support.gateway import send_device_data

    leader, follower = pty.openpty()
    log = tmp_path / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    gateway = subprocess.Popen([GATEWAY, "run", "--broker", "mqtt://127.0.0.1:%d" % mosquitto_broker,
                                "--metrics-port", "0", "--log-format", "json"],
                               stdout=follower, stderr=open(log, "wb"), env=env)
    os.close(follower)
    try:
        wait_for(lambda: log.read_text().count('"mqtt_connected"') == 2, 15, "the gateway connected")
        send_device_data(mosquitto_broker)
        wait_for(lambda: log.read_text().count('"event":"batch"') >= 2, 15, "the batch lines")
    finally:
        stop(gateway)
    os.set_blocking(leader, False)
    try:
        screen = os.read(leader, 1 << 20)
    except OSError:  # nothing was written to the terminal
        screen = b""
    os.close(leader)
    assert b"resourceMetrics" not in screen and len(screen) < 1000, screen[:200]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    started = [e for e in lines if e.get("event") == "started"][0]
    assert started["exporter"] == "none"
    warning = [e for e in lines if e.get("event") == "no_exporter"][0]
    assert warning["level"] == "warning" and "OTEL_EXPORTER_OTLP_ENDPOINT" in warning["hint"]
