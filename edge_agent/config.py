"""Agent configuration: embedded defaults, a JSON file over them, command-line flags over that.

Validation is driven by one table (`RULES`) of key -> (type, bounds or choices), so every problem
is reported as "config key 'a.b': <what is wrong>" — the key and the problem, nothing vaguer.
Unknown keys are errors too: a typo must not silently fall back to a default.

MicroPython-compatible (json, no typing).
"""

import json

BACKENDS = ("auto", "procfs", "netlink", "ebpf")
COLLECTORS = ("cpu", "memory", "load", "network", "system")


def _collector(extra=None):
    section = {"enabled": True, "backend": "auto"}
    if extra:
        section.update(extra)
    return section


DEFAULTS = {
    "device_id": "",  # empty: the host name
    "broker": "mqtt://127.0.0.1:1883",
    "topic_prefix": "edge",
    "group": "",  # fleet group for group commands
    "username": "",
    "password": "",
    "tls": {"ca": "", "cert": "", "key": "", "insecure": False},
    "keepalive_s": 30,
    "interval_s": 1.0,  # base read interval; sampling.* may tune it per collector
    "batch_s": 10.0,  # a data batch is sent at least this often
    "compress": False,  # deflate the batch body (CPython only)
    "state_dir": "",  # sequence numbers, accepted commands, spool; empty: nothing persisted
    "proc_root": "/proc",
    "collectors": {
        "cpu": _collector({"per_cpu": True, "top_processes": 0}),  # top_processes: eBPF only
        "memory": _collector(),
        "load": _collector(),
        "network": _collector({"include": [], "exclude": []}),
        "system": _collector(),
    },
    "sampling": {},  # validated by edge_agent.sampling (policies and their knobs)
    # RAM holds max_batches; spool_max_bytes > 0 adds a disk spool in <state_dir>/spool, written
    # spool_chunk batches at a time while offline (what a power cut may lose)
    "buffer": {"max_batches": 360, "spool_max_bytes": 0, "spool_chunk": 6},
    "commands": {
        "enabled": True,
        "require_signature": True,  # turning this off must be explicit
        "device_key": "",  # hex or text HMAC key for this device
        "fleet_key": "",  # key for fleet and group commands
        "max_skew_s": 300,
    },
    "log_format": "text",
}

# key path -> (type, low, high) for numbers, (type, choices) for strings, (type,) otherwise
RULES = {
    "device_id": (str, None, 128),
    "broker": (str, 1, 512),
    "topic_prefix": (str, 1, 64),
    "group": (str, None, 64),
    "username": (str, None, 256),
    "password": (str, None, 256),
    "tls.ca": (str, None, 1024),
    "tls.cert": (str, None, 1024),
    "tls.key": (str, None, 1024),
    "tls.insecure": (bool,),
    "keepalive_s": (int, 5, 3600),
    "interval_s": (float, 0.05, 3600),
    "batch_s": (float, 0.1, 3600),
    "compress": (bool,),
    "state_dir": (str, None, 1024),
    "proc_root": (str, 1, 1024),
    "buffer.max_batches": (int, 1, 100000),
    "buffer.spool_max_bytes": (int, 0, 1 << 34),
    "buffer.spool_chunk": (int, 1, 1000),
    "commands.enabled": (bool,),
    "commands.require_signature": (bool,),
    "commands.device_key": (str, None, 256),
    "commands.fleet_key": (str, None, 256),
    "commands.max_skew_s": (int, 1, 86400),
    "log_format": (str, ("text", "json")),
}
for _name in COLLECTORS:
    RULES["collectors." + _name + ".enabled"] = (bool,)
    RULES["collectors." + _name + ".backend"] = (str, BACKENDS)
RULES["collectors.cpu.per_cpu"] = (bool,)
RULES["collectors.cpu.top_processes"] = (int, 0, 64)
RULES["collectors.network.include"] = (list,)
RULES["collectors.network.exclude"] = (list,)


class ConfigError(ValueError):
    pass


def _copy(value):
    if isinstance(value, dict):
        return dict([(k, _copy(v)) for k, v in value.items()])
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def merge(base, override, path="", errors=None):
    """Deep-merge `override` onto a copy of `base`, recording unknown keys in `errors`."""
    out = _copy(base)
    for key in override:
        where = path + key
        if key not in base and path != "sampling.":
            errors.append("config key '%s': unknown key" % where)
            continue
        value = override[key]
        if isinstance(base.get(key), dict) and key != "sampling":
            if not isinstance(value, dict):
                errors.append("config key '%s': must be an object, got %s" % (where, _show(value)))
                continue
            out[key] = merge(base[key], value, where + ".", errors)
        else:
            out[key] = _copy(value)
    return out


def _show(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check(config):
    """Return a list of problems, each naming its key; empty when the config is valid."""
    errors = []
    for key in RULES:
        rule = RULES[key]
        try:
            value = _get(config, key)
        except (KeyError, TypeError):
            errors.append("config key '%s': missing" % key)
            continue
        kind = rule[0]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            errors.append("config key '%s': must be %s, got %s" % (key, _KIND_WORDS[kind], _show(value)))
            continue
        if kind in (int, float) and not (rule[1] <= value <= rule[2]):
            errors.append("config key '%s': must be between %s and %s, got %s" % (key, rule[1], rule[2], _show(value)))
        elif kind is str and len(rule) == 2 and value not in rule[1]:
            errors.append("config key '%s': must be one of %s, got %s" % (key, ", ".join(rule[1]), _show(value)))
        elif kind is str and len(rule) == 3:
            low, high = rule[1] or 0, rule[2]
            if not low <= len(value) <= high:
                errors.append("config key '%s': length must be between %d and %d" % (key, low, high))
        elif kind is list and not all([isinstance(v, str) for v in value]):
            errors.append("config key '%s': must be a list of strings" % key)
    if not errors and config["batch_s"] < config["interval_s"]:
        errors.append("config key 'batch_s': must not be shorter than interval_s (%s)" % config["interval_s"])
    if not errors and config["buffer"]["spool_max_bytes"] and not config["state_dir"]:
        errors.append("config key 'buffer.spool_max_bytes': the spool needs state_dir to be set")
    device = config.get("device_id")
    if isinstance(device, str) and device and (device[0] == "_" or [c for c in "/+#" if c in device]):
        errors.append("config key 'device_id': must not start with '_' nor contain '/', '+' or '#', got %s" % _show(device))
    if config.get("broker") and not _broker_ok(config["broker"]):
        errors.append("config key 'broker': must look like mqtt://host:port or mqtts://host:port, got %s" % _show(config["broker"]))
    errors.extend(_check_sampling(config.get("sampling")))
    return errors


_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def _broker_ok(url):
    try:
        parse_broker(url)
        return True
    except ValueError:
        return False


def _check_sampling(section):
    if not isinstance(section, dict):
        return ["config key 'sampling': must be an object"]
    if not section:
        return []  # nothing to check: edge_agent.sampling is not even loaded (a small device's heap)
    try:
        from edge_agent.sampling import validate_sampling
    except ImportError:
        return []
    errors = []
    for problem in validate_sampling(section):  # "key: problem"
        key, _, text = problem.partition(": ")
        errors.append("config key 'sampling.%s': %s" % (key, text))
    return errors


def parse_broker(url):
    """'mqtt://host:port' or 'mqtts://host:port' -> (host, port, tls)."""
    if "://" not in url:
        raise ValueError("no scheme")
    scheme, rest = url.split("://", 1)
    if scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError("scheme must be mqtt or mqtts")
    tls = scheme in ("mqtts", "ssl")
    rest = rest.rstrip("/")
    if rest.startswith("["):  # [ipv6]:port
        host, _, port = rest[1:].partition("]")
        port = port[1:] if port.startswith(":") else ""
    elif ":" in rest:
        host, port = rest.rsplit(":", 1)
    else:
        host, port = rest, ""
    if not host:
        raise ValueError("no host")
    port = int(port) if port else (8883 if tls else 1883)
    if not 0 < port < 65536:
        raise ValueError("bad port")
    return host, port, tls


def build(file_values=None, overrides=None):
    """Defaults <- file values <- overrides (both dicts); raise ConfigError listing every problem."""
    errors = []
    config = merge(DEFAULTS, file_values or {}, "", errors)
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


def load(path, overrides=None):
    """Read a JSON config file and build the effective config; errors name the file and key."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError("config file %s: cannot read (%s)" % (path, exc))
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise ConfigError("config file %s: not valid JSON (%s)" % (path, exc))
    if not isinstance(values, dict):
        raise ConfigError("config file %s: must hold a JSON object" % path)
    try:
        return build(values, overrides)
    except ConfigError as exc:
        raise ConfigError("config file %s:\n  %s" % (path, str(exc).replace("\n", "\n  ")))
