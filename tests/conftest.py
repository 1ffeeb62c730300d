"""Shared pytest fixtures."""

import pytest
from mosquitto import start_mosquitto, stop


@pytest.fixture
def mosquitto_broker(tmp_path):
    """A real mosquitto on a free loopback port (anonymous, no persistence); yields the port."""
    proc, port = start_mosquitto(tmp_path)
    yield port
    stop(proc)
