"""One broker URL parser (edge_wire.broker) for the agent's config, the gateway's and the fleet
simulator's --broker: the same URLs mean the same broker everywhere, the same ones are refused."""

import pytest

from edge_agent import config
from edge_wire.broker import parse_broker
from fleetsim import cli as fleetsim_cli
from gateway.ingest import mqtt as gateway_mqtt

GOOD = [
    ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883, False)),
    ("mqtts://broker.example:8884", ("broker.example", 8884, True)),
    ("mqtts://broker", ("broker", 8883, True)),
    ("mqtt://broker/", ("broker", 1883, False)),
    ("mqtt://[::1]:1999", ("::1", 1999, False)),
    ("ssl://broker", ("broker", 8883, True)),
    ("tcp://broker:1884", ("broker", 1884, False)),
    ("localhost", ("localhost", 1883, False)),
    ("localhost:1884", ("localhost", 1884, False)),
]
BAD = ["http://x:1", "mqtt://", "mqtt://user:secret@broker:1883", "mqtt://broker:0", "mqtt://broker:70000",
       "mqtt://broker:port", "mqtt://:1883", "mqtt://broker/path:1"]


@pytest.mark.parametrize("url, expected", GOOD)
def test_the_same_broker_everywhere(url, expected):
    assert parse_broker(url) == expected
    assert gateway_mqtt.parse_broker(url) == expected
    if not expected[2]:
        assert fleetsim_cli.parse_broker(url) == expected[:2]
    assert config.build({"broker": url})["broker"] == url


@pytest.mark.parametrize("url", BAD)
def test_the_same_urls_refused_everywhere_with_one_line(url):
    with pytest.raises(ValueError) as info:
        parse_broker(url)
    assert "\n" not in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(ValueError, match="^--broker: "):
        gateway_mqtt.parse_broker(url)
    with pytest.raises(ValueError, match="^--broker: "):
        fleetsim_cli.parse_broker(url)
    with pytest.raises(config.ConfigError, match="config key 'broker': must look like mqtt://host:port") as err:
        config.build({"broker": url})
    assert "secret" not in str(err.value)


def test_credentials_are_never_echoed():
    with pytest.raises(ValueError, match="credentials") as info:
        gateway_mqtt.parse_broker("mqtts://ops:hunter2@broker")
    assert "hunter2" not in str(info.value)
