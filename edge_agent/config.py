"""Agent configuration: embedded defaults, a JSON file over them, command-line flags over that.

A config file is JSON; lines whose first non-blank character is `#` are comments (what
`edge-agent config default` prints, each key explained by edge_agent/cli/config_doc.py).

Validation is driven by one table (`SPEC`) that gives each key its default and its bounds or
choices, so every problem is reported as "config key 'a.b': <what is wrong>" — the key and the
problem, nothing vaguer. Unknown keys are errors too: a typo must not silently fall back to a default.
The table is text, each key's type taken from its default: a small device's heap stays small.

MicroPython-compatible (json, no typing).
"""

import json

from edge_agent.collectors import BACKENDS, COLLECTORS  # noqa: F401 (the names config.BACKENDS, COLLECTORS too)
from edge_wire.broker import parse_broker

# The keys, one line each: dotted key, default (JSON), rule (JSON): [low, high] for a number or a
# string's length (null: no minimum), a list of choices for a string, or nothing (the type only).
# The type is the default's; "*" stands for every collector. Text rather than nested dicts of
# tuples: a small heap holds one string. Notes on some keys:
#   device_id          empty: the host name
#   client_id          empty: edge-<device>-<random>, new each run (the agent's MQTT session is clean)
#   password_file      its first line is the password (also $EDGE_AGENT_MQTT_PASSWORD)
#   group              fleet group for group commands
#   interval_s         base read interval; sampling.* may tune it per collector
#   batch_s            a data batch is sent at least this often
#   compress           deflate the batch body (CPython only)
#   state_dir          sequence numbers, accepted commands, spool; empty: nothing persisted
#   collectors.cpu.top_processes   eBPF only
#   sampling           validated by edge_agent.sampling.rules (policies and their knobs)
#   buffer.*           RAM holds max_batches; spool_max_bytes > 0 adds a disk spool in
#                      <state_dir>/spool, written spool_chunk batches at a time while offline (what a
#                      power cut may lose)
#   delivery.ack       what delivers a batch (docs/reliability.md): "gateway" its receipt, "broker"
#                      the PUBACK, "auto" the receipt once a gateway has sent one for this device
#   delivery.resend_s  no receipt this long after the PUBACK: sent again (doubling each try)
#   delivery.fallback_s  "auto": no receipt this long while the broker acknowledges: PUBACK again (0: never)
#   commands.require_signature   turning this off must be explicit
#   commands.device_key          hex ("hex:00ff…") or text HMAC key for this device
#   commands.fleet_key           key for fleet and group commands
SPEC = """
device_id "" [null, 128]
client_id "" [null, 128]
broker "mqtt://127.0.0.1:1883" [1, 512]
topic_prefix "edge" [1, 64]
group "" [null, 64]
username "" [null, 256]
password "" [null, 256]
password_file "" [null, 1024]
tls.ca "" [null, 1024]
tls.cert "" [null, 1024]
tls.key "" [null, 1024]
tls.insecure false
keepalive_s 30 [5, 3600]
interval_s 1.0 [0.05, 3600]
batch_s 10.0 [0.1, 3600]
compress false
state_dir "" [null, 1024]
proc_root "/proc" [1, 1024]
collectors.*.enabled true
collectors.*.backend "auto" ["auto", "procfs", "netlink", "ebpf"]
collectors.cpu.per_cpu true
collectors.cpu.top_processes 0 [0, 64]
collectors.network.include []
collectors.network.exclude []
sampling {}
buffer.max_batches 360 [1, 100000]
buffer.spool_max_bytes 0 [0, 17179869184]
buffer.spool_chunk 6 [1, 1000]
delivery.ack "auto" ["auto", "gateway", "broker"]
delivery.resend_s 5.0 [0.1, 3600]
delivery.fallback_s 3600 [0, 604800]
commands.enabled true
commands.require_signature true
commands.device_key "" [null, 256]
commands.fleet_key "" [null, 256]
commands.max_skew_s 300 [1, 86400]
log_format "text" ["text", "json"]
"""


def rules():
    """(dotted key, default, rule or None) for every key, in SPEC's order."""
    out = []
    for line in SPEC.split("\n"):
        if line:
            words = line.split(None, 2)
            rule = json.loads(words[2]) if len(words) > 2 else None
            names = COLLECTORS if "*" in words[0] else ("",)
            for name in names:
                out.append((words[0].replace("*", name), json.loads(words[1]), rule))
    return out


class ConfigError(ValueError):
    pass


def defaults():
    """The default config (a new nested dict)."""
    config = {}
    for key, default, _ in rules():
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = default
    return config


def merge(base, override, path="", errors=None):
    """Deep-merge `override` onto a copy of `base`, recording unknown keys in `errors`."""
    out = _copy(base)
    for key in override:
        where = path + key
        if key not in base:
            errors.append("config key '%s': unknown key" % where)
            continue
        value = override[key]
        if isinstance(base[key], dict) and key != "sampling":  # a section; sampling is one value
            if not isinstance(value, dict):
                errors.append("config key '%s': must be an object, got %s" % (where, _show(value)))
                continue
            out[key] = merge(base[key], value, where + ".", errors)
        else:
            out[key] = _copy(value)
    return out


def _copy(value):
    if isinstance(value, dict):
        return dict([(k, _copy(v)) for k, v in value.items()])
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _show(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check(config):
    """Return a list of problems, each naming its key; empty when the config is valid."""
    errors = []
    for key, default, rule in rules():
        value = config
        try:
            for part in key.split("."):
                value = value[part]
        except (KeyError, TypeError):
            errors.append("config key '%s': missing" % key)
            continue
        kind = type(default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
                     dict: "an object"}
            errors.append("config key '%s': must be %s, got %s" % (key, words[kind], _show(value)))
        elif kind in (int, float) and not (rule[0] <= value <= rule[1]):
            errors.append("config key '%s': must be between %s and %s, got %s" % (key, rule[0], rule[1], _show(value)))
        elif kind is str and rule and isinstance(rule[0], str) and value not in rule:  # choices
            errors.append("config key '%s': must be one of %s, got %s" % (key, ", ".join(rule), _show(value)))
        elif kind is str and rule and not isinstance(rule[0], str) and not (rule[0] or 0) <= len(value) <= rule[1]:  # length
            errors.append("config key '%s': length must be between %d and %d" % (key, rule[0] or 0, rule[1]))
        elif kind is list and not all([isinstance(v, str) for v in value]):
            errors.append("config key '%s': must be a list of strings" % key)
    if not errors and config["batch_s"] < config["interval_s"]:
        errors.append("config key 'batch_s': must not be shorter than interval_s (%s)" % config["interval_s"])
    if not errors and config["buffer"]["spool_max_bytes"] and not config["state_dir"]:
        errors.append("config key 'buffer.spool_max_bytes': the spool needs state_dir to be set")
    commands = config.get("commands")
    for name in ("device_key", "fleet_key"):
        key = commands.get(name) if isinstance(commands, dict) else None
        if isinstance(key, str) and key[:4] == "hex:":  # as edge_wire.command.key_bytes reads it
            import binascii

            try:
                ok = len(binascii.unhexlify(key[4:])) > 0
            except ValueError:  # binascii.Error is one
                ok = False
            if not ok:
                errors.append("config key 'commands.%s': 'hex:' must be followed by an even number of hex "
                              "digits (0-9, a-f) (the key itself is not shown)" % name)
    device = config.get("device_id")
    if isinstance(device, str) and device and (device[0] == "_" or [c for c in "/+#" if c in device]):
        errors.append("config key 'device_id': must not start with '_' nor contain '/', '+' or '#', got %s" % _show(device))
    broker = config.get("broker")
    if broker and isinstance(broker, str):  # not a string: reported above
        try:
            parse_broker(broker)
        except ValueError:
            shown = _show(broker) if "@" not in broker else "a URL with credentials (use username and password)"
            errors.append("config key 'broker': must look like mqtt://host:port or mqtts://host:port, got %s" % shown)
    sampling = config.get("sampling")
    if isinstance(sampling, dict) and sampling:  # empty: edge_agent.sampling.rules is not even loaded
        from edge_agent.sampling.rules import validate_sampling

        for problem in validate_sampling(sampling):  # "key: problem"
            key, _, text = problem.partition(": ")
            errors.append("config key 'sampling.%s': %s" % (key, text))
    return errors


def build(file_values=None, overrides=None):
    """Defaults <- file values <- overrides (both dicts); raise ConfigError listing every problem."""
    errors = []
    config = merge(defaults(), file_values or {}, "", errors)
    for dotted in overrides or {}:
        node = config
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = overrides[dotted]
    errors.extend(check(config))
    if errors:
        raise ConfigError("\n".join(errors))
    config["interval_s"] = float(config["interval_s"])
    config["batch_s"] = float(config["batch_s"])
    return config


def strip_comments(text):
    """Blank the lines that start with `#` (after blanks): comments, line numbers kept for errors.
    A JSON string cannot span lines, so such a line is never inside one."""
    lines = text.split("\n")
    for i in range(len(lines)):
        if lines[i].lstrip().startswith("#"):
            lines[i] = ""
    return "\n".join(lines)


def load(path, overrides=None):
    """Read a JSON config file and build the effective config; errors name the file and key."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError("config file %s: cannot read (%s)" % (path, exc))
    try:
        values = json.loads(strip_comments(text))
    except ValueError as exc:
        raise ConfigError("config file %s: not valid JSON (%s)" % (path, exc))
    if not isinstance(values, dict):
        raise ConfigError("config file %s: must hold a JSON object" % path)
    try:
        return build(values, overrides)
    except ConfigError as exc:
        raise ConfigError("config file %s:\n  %s" % (path, str(exc).replace("\n", "\n  ")))
