"""Shared pytest fixtures."""

import os
import subprocess
import sys

import pytest
from testbed.mosquitto import start_mosquitto, stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DATE_EPOCH = "1700000000"


@pytest.fixture
def mosquitto_broker(tmp_path):
    """A real mosquitto on a free loopback port (anonymous, no persistence); yields the port."""
    proc, port = start_mosquitto(tmp_path)
    yield port
    stop(proc)


def firmware_build(out, **env):
    """`python -m firmware build --out OUT` (every architecture) with SOURCE_DATE_EPOCH set and a umask
    of 077; returns its log. The interpreters build from build/firmware, the cache, when it is there."""
    full = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, **env)
    proc = subprocess.run([sys.executable, "-m", "firmware", "build", "--out", str(out)], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=1800, preexec_fn=lambda: os.umask(0o077))
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.fixture(scope="session")
def firmware_dist(tmp_path_factory):
    """What `python -m firmware build` makes, built once per test session: (folder, build log).

    From a fresh machine this builds MicroPython for every architecture (a few minutes); then the cache
    in build/firmware makes it seconds."""
    out = tmp_path_factory.mktemp("dist")
    return out, firmware_build(out)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KB tmpfs mounted for this test only (root): a disk that really fills up."""
    path = tmp_path / "disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
