"""A real mosquitto for tests, on a free loopback port (same signature as a shared tests/mosquitto.py)."""

import os
import shutil
import socket
import subprocess
import time

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(tmp_path, extra_conf="", port=None):
    """Start mosquitto with anonymous access on 127.0.0.1; returns (proc, port) once it accepts."""
    port = port or free_port()
    conf = os.path.join(str(tmp_path), "mosquitto-%d.conf" % port)
    with open(conf, "w") as f:
        f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n%s\n" % (port, extra_conf))
    log = open(os.path.join(str(tmp_path), "mosquitto-%d.log" % port), "ab")
    proc = subprocess.Popen([MOSQUITTO, "-c", conf], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("mosquitto exited with %s, see %s" % (proc.returncode, log.name))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start on port %d" % port)


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
