"""The first run (issue 13): bin/demo from a fresh copy of the repository, as a new user runs it —
set-up included — shows no warning on its first screen, and tells the story: what runs where, the
agent's events, a line per batch, where to look. A part that stops stops the demo with its reason;
bin/setup stops only the services its own install started."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time

import pytest

from testbed.mosquitto import free_port, wait_for
from tests.support import ROOT

SCREEN = 24  # lines: what a terminal shows before anything scrolls


def demo_env(tmp_path, seconds):
    return dict(os.environ, EDGE_DEMO_SECONDS=str(seconds), EDGE_DEMO_PORT=str(free_port()),
                EDGE_DEMO_METRICS_PORT=str(free_port()), EDGE_DEMO_OUT=str(tmp_path / "demo-out"))


@pytest.mark.slow
def test_first_run_from_a_fresh_copy_has_no_warning_on_its_first_screen(tmp_path):
    copy = tmp_path / "edge-telemetry"
    copy.mkdir()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-c", "--null", "-T", "-", "-f", "-"], cwd=ROOT, input=files, check=True,
                   stdout=open(tmp_path / "src.tar", "wb"))
    subprocess.run(["tar", "-x", "-f", str(tmp_path / "src.tar")], cwd=copy, check=True)
    started = time.monotonic()
    proc = subprocess.run(["bin/demo"], cwd=copy, capture_output=True, text=True, timeout=900,
                          env=demo_env(tmp_path, 12))
    print("FIGURES first run (set-up + 12 s of demo) %.0f s" % (time.monotonic() - started))
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, "\n".join(lines[-40:])
    screen = lines[:SCREEN]
    assert not [line for line in screen if "warn" in line.lower() or "deprecat" in line.lower()], "\n".join(screen)
    assert not [line for line in lines if "Traceback" in line or " WARNING " in line or "ERROR" in line], \
        "\n".join(lines)
    assert any(line.startswith("setup: installing the project into .venv (details in .venv/setup.log)")
               for line in screen)
    assert (copy / ".venv" / "setup.log").exists()
    text = "\n".join(lines)
    for needle in ("demo: broker   mqtt://127.0.0.1:", "demo: gateway  OTLP JSON lines to ", "demo: then, in another",
                   "agent   | agent_start device=demo-device", "agent   | mqtt_connected ",
                   "gateway | ", " batch device=demo-device ", "demo: stopped; "):
        assert needle in text, needle
    assert "resourceMetrics" not in text  # the OTLP JSON is in the file, not on the screen


def test_a_part_that_stops_stops_the_demo_with_its_reason(tmp_path):
    env = demo_env(tmp_path, 60)
    proc = subprocess.Popen(["bin/demo"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    out = tmp_path / "demo-out"
    try:
        wait_for(lambda: (out / "gateway.log").exists() and "gateway started" in (out / "gateway.log").read_text(),
                 120, "the demo's gateway")
        pid = int(subprocess.run(["pgrep", "-f", "--newest", "edge-gateway run --broker mqtt://127.0.0.1:%s"
                                  % env["EDGE_DEMO_PORT"]], capture_output=True, text=True).stdout.split()[0])
        os.kill(pid, signal.SIGKILL)  # the gateway we started, found by its unique broker port
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
    assert proc.returncode == 1
    assert "demo: the gateway stopped (exit status 137); its reason is above or in %s/gateway.log" % out in output


def test_a_taken_port_is_named_before_anything_starts(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(demo_env(tmp_path, 5), EDGE_DEMO_METRICS_PORT=str(port))
        proc = subprocess.run(["bin/demo"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "demo: port %d on 127.0.0.1 is in use (another demo?); set EDGE_DEMO_PORT, EDGE_DEMO_METRICS_PORT or "
        "EDGE_DEMO_PROMETHEUS_PORT" % port)


def fake_tools(tmp_path, active_before, started_by_install):
    """dpkg-query (mosquitto missing), apt-get and systemctl that act on a state directory: what runs
    where systemd cannot (this machine has no systemd as PID 1). Returns (PATH, calls log)."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name in active_before:
        (state / name).touch()
    calls = tmp_path / "calls"
    scripts = {
        "dpkg-query": '[ "${@: -1}" = mosquitto ] && exit 1; printf "install ok installed"',
        "apt-get": 'echo "apt-get $*" >> %s; for s in %s; do touch %s/$s; done' % (
            calls, " ".join(started_by_install), state),
        "systemctl": 'echo "systemctl $*" >> %s\ncase "$1" in\n  is-active) [ -e %s/${@: -1} ] ;;\n'
                     '  disable) rm -f %s/${@: -1} ;;\nesac' % (calls, state, state),
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return "%s:%s" % (bin_dir, os.environ["PATH"]), calls


@pytest.mark.parametrize("before, started, disabled", [
    ((), ("mosquitto",), ["systemctl disable --now mosquitto"]),  # the install started it: ours to stop
    (("mosquitto",), (), []),  # the user's broker, running before: left alone
])
def test_setup_stops_only_the_services_its_install_started(tmp_path, before, started, disabled):
    path, calls = fake_tools(tmp_path, before, started)
    proc = subprocess.run(["bin/setup"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PATH=path, EDGE_SETUP_LOG=str(tmp_path / "setup.log")))
    assert proc.returncode == 0, proc.stderr
    log = calls.read_text().splitlines()
    assert any(line.startswith("apt-get ") and line.endswith(" mosquitto") for line in log)
    assert [line for line in log if " disable " in line] == disabled
    assert proc.stdout.splitlines()[0] == "setup: installing Debian packages: mosquitto (details in %s)" % (
        tmp_path / "setup.log")
