"""Every failure of a command-line tool is one line naming the thing (host, port, file, flag, key)
and a non-zero exit status (issue 13): real processes against a real mosquitto, or none at all.

Exit status: 2 when the command as given cannot work (a flag, a file, a port), 1 when it could not
do its job (the broker never reached, a device that did not answer).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from testbed import production_broker
from testbed.mosquitto import free_port, start_mosquitto, stop, wait_for

BIN = os.path.dirname(sys.executable)
AGENT, GATEWAY = BIN + "/edge-agent", BIN + "/edge-gateway"
REFUSED = "connection refused by 127.0.0.1:%d: is the broker running, on this port?"


def run(*argv, timeout=60, env=None):
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def last_line(proc):
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    broker = production_broker.start(tmp_path_factory.mktemp("prod"), ("dev-a",))
    yield broker
    broker.stop()


# ------------------------------------------------------------------------ the agent


def test_agent_broker_down_says_so_each_attempt_and_exits_1():
    port = free_port()
    proc = run(AGENT, "run", "--broker", "mqtt://127.0.0.1:%d" % port, "--device-id", "t", "--batch", "1",
               "--duration", "3.5")
    assert proc.returncode == 1
    assert last_line(proc) == "edge-agent: never connected to mqtt://127.0.0.1:%d: %s" % (port, REFUSED % port)
    attempts = [line for line in proc.stderr.splitlines() if line.startswith("mqtt_error ")]
    assert len(attempts) >= 2
    assert attempts[0].startswith('mqtt_error broker=mqtt://127.0.0.1:%d error="%s" attempt=1 retry_s=' % (
        port, REFUSED % port))
    assert any(line.startswith("buffering batches=") for line in proc.stderr.splitlines())


def test_agent_unknown_host():
    proc = run(AGENT, "run", "--broker", "mqtt://no-such-host.invalid:1883", "--device-id", "t", "--duration", "2")
    assert proc.returncode == 1
    assert re.fullmatch(r"edge-agent: never connected to mqtt://no-such-host.invalid:1883: cannot resolve host "
                        r"no-such-host.invalid \(.+\)", last_line(proc)), last_line(proc)


def test_agent_tls_against_a_plain_port(mosquitto_broker):
    port = mosquitto_broker
    proc = run(AGENT, "run", "--broker", "mqtts://127.0.0.1:%d" % port, "--device-id", "t", "--duration", "2")
    assert proc.returncode == 1
    assert re.fullmatch(r"edge-agent: never connected to mqtts://127.0.0.1:%d: TLS handshake with 127.0.0.1:%d "
                        r"failed \(.+\): is it a TLS port\? mqtts:// needs one \(usually 8883\)" % (port, port),
                        last_line(proc)), last_line(proc)


def test_agent_plain_against_a_tls_port(tls_broker):
    port = tls_broker.device_port
    proc = run(AGENT, "run", "--broker", "mqtt://127.0.0.1:%d" % port, "--device-id", "t", "--duration", "2")
    assert proc.returncode == 1
    assert last_line(proc) == ("edge-agent: never connected to mqtt://127.0.0.1:%d: the broker at 127.0.0.1:%d "
                               "closed the connection before accepting it (is it a TLS port? then use mqtts://)"
                               % (port, port))


def test_agent_untrusted_broker_certificate(tls_broker, tmp_path):
    """--ca naming a CA that did not sign the broker's certificate: the error says which check failed."""
    other = tmp_path / "other"
    subprocess.run([str(production_broker.DEPLOY / "gen-certs.sh"), str(other)], check=True, capture_output=True)
    port = tls_broker.device_port
    proc = run(AGENT, "run", "--broker", "mqtts://127.0.0.1:%d" % port, "--device-id", "dev-a",
               "--ca", str(other / "ca.crt"), "--duration", "2")
    assert proc.returncode == 1
    assert last_line(proc).endswith("TLS: the broker's certificate at 127.0.0.1:%d is not trusted "
                                    "(self-signed certificate in certificate chain); check the CA file" % port)


@pytest.mark.parametrize("flags, line", [
    (["--ca", "/nonexistent/ca.crt"], "edge-agent: --ca (tls.ca) /nonexistent/ca.crt: cannot read it "
                                      "(No such file or directory)"),
    (["--ca", "/etc/hostname"], "edge-agent: --ca (tls.ca) /etc/hostname: not a PEM CA certificate"),
    (["--password-file", "/nonexistent/pw"], "edge-agent: bad configuration"),
])
def test_agent_files_that_cannot_be_used(flags, line):
    proc = run(AGENT, "run", "--broker", "mqtts://127.0.0.1:%d" % free_port(), *flags, "--duration", "1")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0].startswith(line), proc.stderr
    if "--password-file" in flags:
        assert "config key 'password_file': /nonexistent/pw: cannot read it (No such file or directory)" in proc.stderr


# ------------------------------------------------------------------------ the gateway


def gateway_until(seconds, *argv):
    """`edge-gateway run` stopped with SIGTERM after `seconds`."""
    proc = subprocess.Popen([GATEWAY, "run", "--metrics-port", "0", "--output", "/dev/null", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    assert "Traceback" not in err, err
    return proc.returncode, err


def gateway_until_logged(text, count, *argv, timeout=30.0):
    """`edge-gateway run` stopped with SIGTERM once it logged `text` `count` times (or after `timeout`):
    a busy machine may start it slowly, so the test waits for what it checks, not for a fixed time."""
    proc = subprocess.Popen([GATEWAY, "run", "--metrics-port", "0", "--output", "/dev/null", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(timeout, proc.send_signal, (signal.SIGTERM,))
    timer.start()
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if sum(text in seen for seen in lines) == count:
            proc.send_signal(signal.SIGTERM)
            break
    timer.cancel()
    _out, rest = proc.communicate(timeout=20)
    err = "".join(lines) + rest
    assert "Traceback" not in err, err
    return proc.returncode, err


def test_gateway_broker_down_logs_each_attempt_and_exits_1():
    port = free_port()
    code, err = gateway_until_logged("cannot connect to the broker", 4, "--broker", "mqtt://127.0.0.1:%d" % port)
    assert code == 1
    assert err.strip().splitlines()[-1] == "edge-gateway: never connected to the broker at mqtt://127.0.0.1:%d: %s" % (
        port, REFUSED % port)
    tried = [line for line in err.splitlines() if "cannot connect to the broker" in line]
    assert len(tried) >= 4  # both connections, at least twice each
    assert 'error="%s"' % (REFUSED % port) in tried[0] and "retry_s=" in tried[0] and "attempt=1" in tried[0]


def test_gateway_tls_mismatches(mosquitto_broker, tls_broker):
    code, err = gateway_until(2, "--broker", "mqtts://127.0.0.1:%d" % mosquitto_broker)
    assert code == 1 and "is it a TLS port? mqtts:// needs one (usually 8883)" in err.strip().splitlines()[-1]
    port = tls_broker.service_port
    code, err = gateway_until(2, "--broker", "mqtt://127.0.0.1:%d" % port)
    assert code == 1 and err.strip().splitlines()[-1].endswith(
        "the broker at 127.0.0.1:%d closed the connection before accepting it (is it a TLS port? then use mqtts://)"
        % port)


def test_gateway_metrics_port_taken(mosquitto_broker):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run(GATEWAY, "run", "--broker", "mqtt://127.0.0.1:%d" % mosquitto_broker, "--metrics-port", str(port),
                   "--output", "/dev/null")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("edge-gateway: --metrics-port %d on 127.0.0.1: Address already in use "
                                   "(another gateway? choose another port, or 0 for any free one)" % port)


def test_gateway_files_and_directories(tmp_path, mosquitto_broker):
    broker = ["--broker", "mqtt://127.0.0.1:%d" % mosquitto_broker, "--metrics-port", "0"]
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    cases = [
        (["--ca", "/nonexistent/ca.crt", "--output", "/dev/null"],
         "edge-gateway: --ca /nonexistent/ca.crt: cannot read it (No such file or directory)"),
        (["--cert", str(a_file), "--output", "/dev/null"],
         "edge-gateway: --cert %s / --key (in the same file): not a PEM certificate and its private key" % a_file),
        (["--state-dir", str(a_file / "sub"), "--output", "/dev/null"],
         "edge-gateway: --state-dir %s: cannot use it (Not a directory)" % (a_file / "sub")),
        (["--output", "/nonexistent/out.jsonl"],
         "edge-gateway: --output /nonexistent/out.jsonl: cannot open it (No such file or directory)"),
        (["--password-file", "/nonexistent/pw", "--output", "/dev/null"],
         "edge-gateway: --password-file /nonexistent/pw: cannot read it (No such file or directory)"),
    ]
    for flags, line in cases:
        proc = run(GATEWAY, "run", *broker, *flags)
        assert proc.returncode == 2 and proc.stderr.strip().startswith(line), (flags, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_gateway_state_dir_in_use(tmp_path, mosquitto_broker):
    state = tmp_path / "state"
    first = subprocess.Popen([GATEWAY, "run", "--broker", "mqtt://127.0.0.1:%d" % mosquitto_broker, "--metrics-port",
                              "0", "--output", "/dev/null", "--state-dir", str(state)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (state / "client-id").exists(), 15, "the first gateway")
        proc = run(GATEWAY, "run", "--broker", "mqtt://127.0.0.1:%d" % mosquitto_broker, "--metrics-port", "0",
                   "--output", "/dev/null", "--state-dir", str(state))
        assert proc.returncode == 2
        assert proc.stderr.strip() == "edge-gateway: --state-dir: state directory %s is in use by another gateway" % state
    finally:
        stop(first)


def test_devices_and_tune_with_the_broker_down():
    port = free_port()
    devices = run(GATEWAY, "devices", "--broker", "mqtt://127.0.0.1:%d" % port)
    assert devices.returncode == 1 and devices.stderr.strip() == "edge-gateway devices: " + REFUSED % port
    tune = run(GATEWAY, "tune", "dev-1", "ping", "--broker", "mqtt://127.0.0.1:%d" % port,
               env={"EDGE_COMMAND_KEY": "hex:00ff"})
    assert tune.returncode == 1 and tune.stderr.strip() == "edge-gateway tune: " + REFUSED % port


@pytest.mark.parametrize("key, env, line", [
    (["--command-key", "hex:zz00"], {}, "edge-gateway tune: --command-key: 'hex:' must be followed by an even "
                                         "number of hex digits (0-9, a-f); the key is not shown"),
    ([], {"EDGE_COMMAND_KEY": "hex:abc"}, "edge-gateway tune: $EDGE_COMMAND_KEY: 'hex:' must be followed by an "
                                          "even number of hex digits (0-9, a-f); the key is not shown"),
    ([], {"EDGE_COMMAND_KEY": ""}, "edge-gateway tune: no key: give --command-key-file FILE, $EDGE_COMMAND_KEY or "
                                   "--command-key (`edge-gateway keygen` makes one)"),
])
def test_tune_key_problems_name_where_the_key_came_from(mosquitto_broker, key, env, line):
    proc = run(GATEWAY, "tune", "dev-1", "ping", "--broker", "mqtt://127.0.0.1:%d" % mosquitto_broker, *key, env=env)
    assert proc.returncode == 2 and proc.stderr.strip() == line
    assert "zz00" not in proc.stderr and "abc" not in proc.stderr


def test_devices_and_tune_tls_file_problems():
    proc = run(GATEWAY, "devices", "--broker", "mqtts://127.0.0.1:1", "--ca", "/nonexistent/ca.crt")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "edge-gateway devices: --ca /nonexistent/ca.crt: cannot read it (No such file or directory)"


def test_two_default_gateways_on_one_host_do_not_fight(tmp_path):
    broker, port = start_mosquitto(tmp_path)
    procs = [subprocess.Popen([GATEWAY, "run", "--broker", "mqtt://127.0.0.1:%d" % port, "--metrics-port", "0",
                               "--output", "/dev/null", "--log-format", "json"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / ("gw%d.log" % i), "wb"))
             for i in range(2)]
    try:
        def connected():
            lines = [(tmp_path / ("gw%d.log" % i)).read_text().splitlines() for i in range(2)]
            return [[json.loads(x) for x in ls if '"mqtt_connected"' in x] for ls in lines]

        wait_for(lambda: all(len(c) == 2 for c in connected()), 15, "both gateways connected")
        time.sleep(5)  # the old default id made them kick each other about once a second
        ids = [e["client_id"] for c in connected() for e in c]
        assert len(ids) == 4 and len(set(ids)) == 4
        log = (tmp_path / ("mosquitto-%d.log" % port)).read_text()
        assert "already connected" not in log
    finally:
        for proc in procs:
            stop(proc)
        stop(broker)
