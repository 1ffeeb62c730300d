"""Shared fixtures, and the tiers: each test is marked with its folder's tier (unit, integration, kernel,
device; tests/__init__.py says what each needs). A `root` test run without root is skipped, or fails
under CI, where everything must run."""

import os
import pathlib
import subprocess

import pytest

from testbed.mosquitto import start_mosquitto, stop
from tests.support.firmware import firmware_build
from tests.support.otlp_http import Receiver

TIERS = ("unit", "integration", "kernel", "device")
HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    tiers = {}
    for item in items:
        folder = item.path.relative_to(HERE).parts[0] if HERE in item.path.parents else None
        if folder not in TIERS:
            raise pytest.UsageError("%s: a test file belongs in a tier folder: tests/%s/ "
                                    "(tests/__init__.py says which)" % (item.path, "/, tests/".join(TIERS)))
        item.add_marker(folder)
        tiers[item] = TIERS.index(folder)
    items.sort(key=tiers.__getitem__)  # the quickest tier first; the order within a tier stays


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("needs root (CI runs as root)")
        pytest.skip("needs root")


@pytest.fixture
def mosquitto_broker(tmp_path):
    """A real mosquitto on a free loopback port (anonymous, no persistence); yields the port."""
    proc, port = start_mosquitto(tmp_path)
    yield port
    stop(proc)


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


@pytest.fixture
def receiver():
    """A scripted OTLP/HTTP receiver in this process (tests/support/otlp_http.py)."""
    r = Receiver()
    yield r
    r.close()
