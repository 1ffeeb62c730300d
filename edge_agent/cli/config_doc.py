"""What each agent config key means, and `edge-agent config default`: the defaults as a commented
config file (JSON with `#` comment lines, which edge_agent.config reads). CPython only: a device
never loads it. tests/unit/test_config.py checks that every key of config.SPEC is described here.
"""

import json

from edge_agent import config as configuration

# dotted key (collectors.* for every collector) -> one line; a key with several lines uses "\n"
DESCRIPTIONS = {
    "device_id": "this device's id: in its topics and as device.id on its metrics; empty: the host name.\n"
                 "Must not start with '_' nor contain '/', '+' or '#'",
    "client_id": "MQTT client id; empty: edge-<device>-<8 random hex digits>, new for each run (the agent's\n"
                 "session is clean: there is nothing to resume). A broker with use_username_as_clientid\n"
                 "(deploy/mosquitto) replaces it with the certificate's name anyway",
    "broker": "mqtt://host:port, or mqtts://host:port for TLS (port 8883 when not given)",
    "topic_prefix": "topics are <prefix>/<device>/birth, data, state, cmd, ack",
    "group": "fleet group: the device also obeys commands sent to <prefix>/_group/<group>/cmd",
    "username": "MQTT user name; empty: none (with client certificates the broker may take the certificate's name)",
    "password": "MQTT password; rather give password_file or $EDGE_AGENT_MQTT_PASSWORD: a config file is\n"
                "often readable by more people than the password should be",
    "password_file": "a file whose first line is the MQTT password",
    "tls.ca": "CA certificate (PEM) that signed the broker's certificate; with mqtts:// (or this set) TLS is on.\n"
              "Empty with mqtts://: the system's CAs",
    "tls.cert": "client certificate (PEM) for mutual TLS",
    "tls.key": "the client certificate's private key (PEM)",
    "tls.insecure": "do not check the broker's host name against its certificate (tests only)",
    "keepalive_s": "MQTT keepalive: a dead connection is noticed within 1.5 times this",
    "interval_s": "base read interval; a sampling policy may read some collectors more or less often",
    "batch_s": "a data batch is sent at least this often (not shorter than interval_s)",
    "compress": "deflate batch bodies (CPython agents only)",
    "state_dir": "where sequence numbers, accepted commands and the spool are kept; empty: nothing persisted",
    "proc_root": "where /proc is (tests point it at fixture trees)",
    "collectors.*.enabled": "read this collector",
    "collectors.*.backend": "auto (the best available: ebpf, then netlink, then procfs), or one of them",
    "collectors.cpu.per_cpu": "one series per CPU (false: the total only)",
    "collectors.cpu.top_processes": "eBPF only: report the N commands that used the most CPU (0: off)",
    "collectors.network.include": "interface names to read (\"eth*\" matches a prefix); empty: all",
    "collectors.network.exclude": "interface names to skip, same patterns, applied after include",
    "sampling": "sampling policy and its knobs (docs/sampling.md), e.g. {\"policy\": \"adaptive\"};\n"
                "empty: the fixed policy, every collector every interval_s",
    "buffer.max_batches": "batches kept in RAM while the broker is unreachable; beyond, the oldest is dropped\n"
                          "and counted (reported in the next batches)",
    "buffer.spool_max_bytes": "above 0: batches also wait on disk in <state_dir>/spool, up to this many bytes",
    "buffer.spool_chunk": "batches written to the spool at a time while offline (what a power cut may lose)",
    # issue 12's delivery receipts (described here before they land, so either order of merging works)
    "delivery.ack": "what delivers a batch: gateway (its receipt), broker (the PUBACK), or auto (the receipt\n"
                    "once a gateway has sent one for this device) (docs/reliability.md)",
    "delivery.resend_s": "no receipt this long after the PUBACK: the batch is sent again (doubling each try)",
    "delivery.fallback_s": "auto: no receipt this long while the broker acknowledges: back to the PUBACK (0: never)",
    "commands.enabled": "accept remote commands (docs/commands.md)",
    "commands.require_signature": "refuse unsigned commands; turning this off must be explicit",
    "commands.device_key": "HMAC key of this device's commands: text, or hex:... (`edge-gateway keygen` makes one;\n"
                           "the operator signs with the same key: $EDGE_COMMAND_KEY)",
    "commands.fleet_key": "HMAC key of fleet and group commands (the operator's key for --all and --group)",
    "commands.max_skew_s": "a command signed further than this from the device's clock is refused (stale)",
    "log_format": "text (event key=value) or json, one line per event on stderr",
}

HEADER = """\
# edge-agent configuration: JSON, with comment lines starting with '#'.
# Every key may be left out (its default applies); flags given to `edge-agent run` override this file.
# Check a file with: edge-agent config check FILE
"""


def describe(key):
    """The description of a dotted key; collectors.<name>.x falls back to collectors.*.x."""
    if key in DESCRIPTIONS:
        return DESCRIPTIONS[key]
    parts = key.split(".")
    if parts[0] == "collectors" and len(parts) == 3:
        return DESCRIPTIONS.get("collectors.*." + parts[2])
    return None


def render_default():
    """The default config as a commented JSON document (valid for config.load)."""
    lines = HEADER.rstrip("\n").split("\n")
    told = set()  # collectors.*.x is explained once, at the first collector

    def emit(node, path, indent):
        keys = list(node)
        for i, key in enumerate(keys):
            dotted = path + key
            value = node[key]
            comma = "," if i < len(keys) - 1 else ""
            text = describe(dotted)
            generic = dotted.split(".")[0] == "collectors" and "collectors.*." + key in DESCRIPTIONS
            if text and not (generic and key in told):
                if generic:
                    told.add(key)
                for line in text.split("\n"):
                    lines.append(" " * indent + "# " + line)
            if isinstance(value, dict) and key != "sampling":
                lines.append(" " * indent + json.dumps(key) + ": {")
                emit(value, dotted + ".", indent + 2)
                lines.append(" " * indent + "}" + comma)
            else:
                lines.append(" " * indent + json.dumps(key) + ": " + json.dumps(value) + comma)

    lines.append("{")
    emit(configuration.defaults(), "", 2)
    lines.append("}")
    return "\n".join(lines) + "\n"
