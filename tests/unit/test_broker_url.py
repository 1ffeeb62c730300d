"""One broker URL parser (edge_wire.broker) for the agent's config, the gateway's and the fleet
simulator's --broker: the same URLs mean the same broker everywhere, the same ones are refused."""

import pytest

from edge_agent import config
from edge_wire.broker import parse_broker
from edge_wire.paho import url_credentials
from fleetsim import cli as fleetsim_cli
from gateway.cli import build_parser
from gateway.ingest import mqtt as gateway_mqtt
from gateway.options import broker_config

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
BAD = ["http://x:1", "mqtt://", "mqtt://broker:0", "mqtt://broker:70000", "mqtt://broker:port", "mqtt://:1883",
       "mqtt://broker/path:1", "mqtts://us:secret@:1883"]


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


def test_credentials_only_where_the_url_is_never_logged():
    """The agent logs its broker URL: credentials there are refused, never echoed. The gateway's --broker
    takes them (its logs show scheme://host:port), its --username and --password win over them."""
    url = "mqtts://ops:hunter2@broker:8884"
    with pytest.raises(ValueError, match="credentials") as info:
        parse_broker(url)
    assert "hunter2" not in str(info.value)
    with pytest.raises(config.ConfigError, match="a URL with credentials") as err:
        config.build({"broker": url})
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="--broker: a URL with credentials") as info:
        fleetsim_cli.parse_broker("mqtt://ops:hunter2@broker")
    assert "hunter2" not in str(info.value)
    assert parse_broker(url, credentials=True) == gateway_mqtt.parse_broker(url) == ("broker", 8884, True)
    assert url_credentials(url) == ("ops", "hunter2")
    assert url_credentials("mqtt://ops@broker") == ("ops", None)
    assert url_credentials("mqtt://broker:1883") == (None, None)
    args = build_parser().parse_args(["devices", "--broker", url])
    given = broker_config(args, "id")
    assert (given.host, given.port, given.tls, given.username, given.password) == ("broker", 8884, True, "ops", "hunter2")
    args = build_parser().parse_args(["devices", "--broker", url, "--username", "u2", "--password", "p2"])
    assert (broker_config(args, "id").username, broker_config(args, "id").password) == ("u2", "p2")
