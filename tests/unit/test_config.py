"""Config: defaults, file, flags; every problem names its key."""

import json

import pytest

from edge_agent import config
from edge_wire.broker import parse_broker


def test_defaults_are_valid():
    cfg = config.build()
    assert cfg["broker"] == "mqtt://127.0.0.1:1883" and cfg["interval_s"] == 1.0
    assert cfg["commands"]["require_signature"] is True


def test_file_then_flags(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"interval_s": 5, "collectors": {"network": {"exclude": ["lo"]}}}))
    cfg = config.load(str(path), {"interval_s": 2.0, "device_id": "dev-9"})
    assert cfg["interval_s"] == 2.0 and cfg["device_id"] == "dev-9"
    assert cfg["collectors"]["network"]["exclude"] == ["lo"]
    assert cfg["collectors"]["network"]["backend"] == "auto"  # untouched siblings keep defaults


@pytest.mark.parametrize("values, message", [
    ({"interval_s": "fast"}, "config key 'interval_s': must be a number, got \"fast\""),
    ({"interval_s": 0}, "config key 'interval_s': must be between 0.05 and 3600"),
    ({"intervall_s": 1}, "config key 'intervall_s': unknown key"),
    ({"collectors": {"cpu": {"backend": "magic"}}}, "config key 'collectors.cpu.backend': must be one of auto, procfs, netlink, ebpf"),
    ({"collectors": {"gpu": {}}}, "config key 'collectors.gpu': unknown key"),
    ({"tls": "yes"}, "config key 'tls': must be an object"),
    ({"broker": "http://x"}, "config key 'broker': must look like mqtt://host:port"),
    ({"compress": 1}, "config key 'compress': must be true or false"),
    ({"device_id": "_status"}, "config key 'device_id': must not start with"),
    ({"device_id": "a/b"}, "config key 'device_id': must not start with"),
    ({"batch_s": 0.5, "interval_s": 1}, "config key 'batch_s': must not be shorter than interval_s"),
    ({"collectors": {"network": {"include": [1]}}}, "config key 'collectors.network.include': must be a list of strings"),
    ({"sampling": {"policy": "psychic"}}, "config key 'sampling.policy': must be one of fixed"),
    ({"sampling": {"load_high": 7}}, "config key 'sampling.load_high': "),
])
def test_bad_values_name_the_key(values, message):
    with pytest.raises(config.ConfigError) as err:
        config.build(values)
    assert message in str(err.value)


def test_bad_file_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(config.ConfigError, match="broken.json: not valid JSON"):
        config.load(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(config.ConfigError, match="must hold a JSON object"):
        config.load(str(path))
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("url, expected", [
    ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883, False)),
    ("mqtts://broker.example:8884", ("broker.example", 8884, True)),
    ("mqtts://broker", ("broker", 8883, True)),
    ("mqtt://[::1]:1999", ("::1", 1999, False)),
])
def test_parse_broker(url, expected):
    assert parse_broker(url) == expected


def test_one_list_of_collector_and_backend_names():
    """Config, commands, the sampler, the agent and the backend choice use edge_agent.collectors' names."""
    from edge_agent import agent, collectors
    from edge_agent.collectors import select
    from edge_agent.commands import collector_changes
    from edge_agent.sampling import rules as sampling_rules

    assert collector_changes.BACKENDS is config.BACKENDS is select.BACKENDS is collectors.BACKENDS
    assert agent.COLLECTORS is sampling_rules.COLLECTORS is collector_changes.COLLECTORS is config.COLLECTORS
    assert config.COLLECTORS is collectors.COLLECTORS
    assert [r for r in config.rules() if r[0] == "collectors.cpu.backend"][0][2] == list(config.BACKENDS)
