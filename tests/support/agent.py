"""A real Agent with a CommandHandler and the keys to sign its commands; nothing persisted, nothing sent
(the transport is offline), collectors that collect nothing, and a clock the test moves."""

from edge_agent import config
from edge_agent.agent import Agent
from edge_agent.commands.handler import CommandHandler

NOW = 1_763_740_800
DEVICE_KEY = "device-secret"
FLEET_KEY = "hex:00112233445566778899aabbccddeeff"


class Collector:
    def __init__(self, name):
        self.name = name
        self.source = "procfs"

    def collect(self):
        return []

    def close(self):
        pass


class Offline:
    connected = False

    def publish(self, *args):
        return None


def make_agent(tmp_path, group="edge-west", require=True):
    cfg = config.build({"device_id": "dev-7", "group": group, "state_dir": str(tmp_path),
                        "commands": {"device_key": DEVICE_KEY, "fleet_key": FLEET_KEY,
                                     "require_signature": require}})
    built = []

    def factory(section):
        built.append(section)
        chosen = [Collector(n) for n in section if section[n]["enabled"]]
        return chosen, dict([(c.name, "procfs") for c in chosen])

    collectors, effective = factory(cfg["collectors"])
    info = {"device": "dev-7", "boot_id": "b", "boot_time_ms": 0, "collectors": effective}
    clock = [NOW]
    handler = CommandHandler(cfg, "dev-7", lambda: clock[0])
    agent = Agent(cfg, collectors, Offline(), info, commands=handler, collector_factory=factory)
    return agent, handler, clock, built
