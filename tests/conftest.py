"""Shared pytest fixtures."""

import pytest
from mosquitto import start_mosquitto, stop


@pytest.fixture
def mosquitto_broker(tmp_path):
    """A real mosquitto on a free loopback port (anonymous, no persistence); yields the port."""
    proc, port = start_mosquitto(tmp_path)
    yield port
    stop(proc)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KB tmpfs mounted for this test only (root): a disk that really fills up."""
    import subprocess

    path = tmp_path / "disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
