"""A real mosquitto for tests, started on a free loopback port.

`start_mosquitto(tmp_path, extra_conf="") -> (proc, port)` returns once the broker accepts
connections; `stop(proc)` ends it. Anonymous access, log in tmp_path (`log_path(tmp_path, port)`);
no persistence unless `persistence_dir` is given (then sessions and queued messages are saved there
every second and on a clean stop, and survive a restart on the same port).

mosquitto started as root drops to the `mosquitto` user, which cannot write into pytest's 0700
temporary directories ("Error saving in-memory database ... Permission denied"): a persistent test
broker therefore keeps running as root (`user root`), and `assert_saved` checks in its log that it
really saved.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(tmp_path, extra_conf: str = "", port: int | None = None,
                    persistence_dir: str | None = None) -> tuple[subprocess.Popen, int]:
    port = port or free_port()
    conf = os.path.join(str(tmp_path), "mosquitto-%d.conf" % port)
    persistence = "persistence false\n"
    if persistence_dir:
        os.makedirs(persistence_dir, exist_ok=True)
        persistence = ("persistence true\npersistence_location %s/\nautosave_interval 1\n"
                       "max_queued_messages 100000\n" % persistence_dir.rstrip("/"))
        if os.geteuid() == 0:  # else it drops to `mosquitto` and cannot write the database here
            persistence += "user root\n"
    with open(conf, "w") as f:
        f.write("listener %d 127.0.0.1\nallow_anonymous true\n%s%s\n" % (port, persistence, extra_conf))
    return run_broker(conf, port, log_path(tmp_path, port)), port


def run_broker(conf: str, port: int, log: str) -> subprocess.Popen:
    """mosquitto -c CONF (its output appended to `log`), once it accepts connections on `port`."""
    with open(log, "ab") as log_file:
        proc = subprocess.Popen([MOSQUITTO, "-c", conf], stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("mosquitto exited with %s, see %s" % (proc.returncode, log))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError("mosquitto did not start on port %d" % port)


def log_path(tmp_path, port: int) -> str:
    """The log of the broker started on `port` (every start on that port appends to it)."""
    return os.path.join(str(tmp_path), "mosquitto-%d.log" % port)


def assert_saved(tmp_path, port: int) -> int:
    """Assert that the broker on `port` saved its database and never failed to; returns how often it saved."""
    with open(log_path(tmp_path, port)) as f:
        text = f.read()
    assert "Error saving" not in text, text[-2000:]
    saves = text.count("Saving in-memory database")
    assert saves, "the broker never saved its database:\n" + text[-2000:]
    return saves


def stop(proc: subprocess.Popen, timeout: float = 5) -> None:
    """Terminate a process started by a test (broker, agent, gateway); kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(poll)
    raise AssertionError("timed out waiting for " + what)

