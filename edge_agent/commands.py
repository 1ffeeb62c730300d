"""Remote commands: authenticated, checked, applied, acknowledged — or rejected and acknowledged.

A command travels as a JSON envelope `{"body": "<json text>", "sig": "<hex HMAC-SHA256>"}`. The
signature covers the body text exactly as sent, so no canonical-JSON rules are needed. The body:

    {"id": "c-1f3a", "cmd": "set_sampling", "args": {...},
     "ts": 1763740800, "nonce": "9f2c51d0a7e4b6c3", "target": "dev-7" | "*" | "group:<G>"}

Topics: `<prefix>/<device>/cmd` (device key or fleet key), `<prefix>/_fleet/cmd` and
`<prefix>/_group/<G>/cmd` (fleet key). The agent rejects unsigned (unless signing was turned off
explicitly), badly signed, stale (|now - ts| > max_skew_s), replayed (nonce seen), mis-addressed
and malformed commands, and invalid parameters; every outcome is acknowledged on
`<prefix>/<device>/ack` and nothing is applied unless everything checked out.

MicroPython-compatible; the gateway's `tune` command signs with `sign()` from this module.
"""

import binascii
import json

from edge_agent.hmac import equal, hmac_sha256, key_bytes
from edge_agent.statefile import ensure_dir, read_json, write_atomic

MAX_COMMAND_BYTES = 4096
MAX_NONCES = 512
COMMANDS = ("set_sampling", "set_collectors", "get_config", "ping", "rebirth", "flush")


def sign(body, key):
    """Build a signed envelope (bytes) from a body dict; `key` as in config ("hex:…" or text)."""
    text = json.dumps(body)
    sig = binascii.hexlify(hmac_sha256(key_bytes(key), text.encode())).decode()
    return json.dumps({"body": text, "sig": sig}).encode()


class Rejected(Exception):
    def __init__(self, reason, message):
        super().__init__(message)  # MicroPython has no Exception.__init__ to call
        self.reason = reason
        self.message = message


class CommandHandler:
    def __init__(self, config, device, now_s, log=None):
        self.prefix = config["topic_prefix"]
        self.device = device
        self.group = config.get("group", "")
        self.settings = config["commands"]
        self.state_dir = config.get("state_dir", "")
        self.now_s = now_s
        self.log = log
        self.nonces = {}  # nonce -> ts, for replay detection within the skew window
        self.rejected = {}  # reason -> count
        self.accepted = 0
        self._load_nonces()

    def topics(self):
        topics = [self.prefix + "/" + self.device + "/cmd", self.prefix + "/_fleet/cmd"]
        if self.group:
            topics.append(self.prefix + "/_group/" + self.group + "/cmd")
        return topics

    # ---------------------------------------------------------------- the pipeline

    def handle(self, topic, payload, agent):
        """Check and apply one command; return the ack payload (bytes)."""
        command_id = ""
        try:
            body = self.verify(topic, payload)
            command_id = body["id"]
            self.remember(body["nonce"], body["ts"])  # authenticated: never again, even if invalid
            result = self.apply(body, agent)
            self.accepted += 1
            ack = {"id": command_id, "device": self.device, "status": "ok", "cmd": body["cmd"]}
            if result is not None:
                ack["result"] = result
        except Rejected as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            if not command_id:
                command_id = _peek_id(payload)
            ack = {"id": command_id, "device": self.device, "status": "error", "reason": exc.reason,
                   "message": exc.message}
            if self.log:
                self.log("command_rejected", device=self.device, id=command_id, reason=exc.reason,
                         message=exc.message)
        ack["config"] = agent.effective_config()
        ack["ts"] = self.now_s()
        return json.dumps(ack).encode()

    def verify(self, topic, payload):
        if len(payload) > MAX_COMMAND_BYTES:
            raise Rejected("malformed", "command larger than %d bytes" % MAX_COMMAND_BYTES)
        try:
            envelope = json.loads(payload)
        except (ValueError, RuntimeError):  # RuntimeError: RecursionError on deeply nested arrays
            raise Rejected("malformed", "not JSON")
        if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), str):
            raise Rejected("malformed", "envelope must be {\"body\": \"<json>\", \"sig\": \"<hex>\"}")
        scope = self.scope_of(topic)
        sig = envelope.get("sig")
        if sig is None or sig == "":
            if self.settings["require_signature"]:
                raise Rejected("unsigned", "command is not signed")
        elif not self.signature_ok(scope, envelope["body"], sig):
            raise Rejected("bad_signature", "signature does not match")
        try:
            body = json.loads(envelope["body"])
        except (ValueError, RuntimeError):
            raise Rejected("malformed", "body is not JSON")
        self.check_body(body, scope)
        return body

    def scope_of(self, topic):
        if topic == self.prefix + "/" + self.device + "/cmd":
            return "device"
        if topic == self.prefix + "/_fleet/cmd":
            return "fleet"
        if self.group and topic == self.prefix + "/_group/" + self.group + "/cmd":
            return "group"
        raise Rejected("misaddressed", "not a command topic of this device: " + topic)

    def signature_ok(self, scope, body_text, sig):
        if not isinstance(sig, str) or len(sig) != 64:
            return False
        try:
            given = binascii.unhexlify(sig)
        except (ValueError, TypeError):
            return False
        keys = [self.settings["fleet_key"]]
        if scope == "device":
            keys.insert(0, self.settings["device_key"])
        for key in keys:
            if key and equal(hmac_sha256(key_bytes(key), body_text.encode()), given):
                return True
        return False

    def check_body(self, body, scope):
        if not isinstance(body, dict):
            raise Rejected("malformed", "body must be an object")
        for field, kind in (("id", str), ("cmd", str), ("nonce", str), ("target", str)):
            if not isinstance(body.get(field), kind):
                raise Rejected("malformed", "field '%s' missing or not a string" % field)
        if not 0 < len(body["id"]) <= 64:
            raise Rejected("malformed", "field 'id' must be 1 to 64 characters")
        ts = body.get("ts")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not _finite(ts):
            raise Rejected("malformed", "field 'ts' missing or not a finite number")
        if not isinstance(body.get("args", {}), dict):
            raise Rejected("malformed", "field 'args' must be an object")
        if not 8 <= len(body["nonce"]) <= 64:
            raise Rejected("malformed", "field 'nonce' must be 8 to 64 characters")
        expected = {"device": self.device, "fleet": "*", "group": "group:" + self.group}[scope]
        if body["target"] != expected:
            raise Rejected("misaddressed", "target %r does not match this topic (%r)" % (body["target"], expected))
        skew = abs(self.now_s() - ts)
        if skew > self.settings["max_skew_s"]:
            raise Rejected("stale", "timestamp is %d s away from the device clock (limit %d s)"
                           % (skew, self.settings["max_skew_s"]))
        if body["nonce"] in self.nonces:
            raise Rejected("replayed", "nonce already used")
        if body["cmd"] not in COMMANDS:
            raise Rejected("unknown_command", "unknown command %r; known: %s" % (body["cmd"], ", ".join(COMMANDS)))

    def apply(self, body, agent):
        cmd = body["cmd"]
        args = body.get("args", {})
        if cmd == "ping":
            return {"pong": True, "stats": agent.stats}
        if cmd == "get_config":
            return None  # every ack carries the effective configuration
        if cmd == "rebirth":
            agent.rebirth()
            return None
        if cmd == "flush":
            agent.flush()
            agent.pump()
            return None
        if cmd == "set_sampling":
            errors = agent.set_sampling(args)
        else:
            errors = agent.set_collectors(args)
        if errors:
            raise Rejected("invalid", "; ".join(errors))
        return None

    # ---------------------------------------------------------------- replay protection

    def remember(self, nonce, ts):
        horizon = self.now_s() - self.settings["max_skew_s"]
        for old in [n for n in self.nonces if self.nonces[n] < horizon]:
            del self.nonces[old]
        while len(self.nonces) >= MAX_NONCES:  # keep the newest; older ones soon turn stale anyway
            oldest = min(self.nonces, key=self.nonces.get)
            del self.nonces[oldest]
        self.nonces[nonce] = ts
        if self.state_dir:
            write_atomic(self.state_dir + "/nonces.json", json.dumps(self.nonces))

    def _load_nonces(self):
        if not self.state_dir:
            return
        saved = read_json(self.state_dir + "/nonces.json")
        if isinstance(saved, dict):
            for nonce in saved:
                if isinstance(saved[nonce], (int, float)):
                    self.nonces[nonce] = saved[nonce]


def _peek_id(payload):
    """The id of a command we rejected, if it can be read at all (for the ack's correlation)."""
    try:
        body = json.loads(json.loads(payload)["body"])
        command_id = body.get("id", "")
        return command_id if isinstance(command_id, str) else ""
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError):
        return ""


def _finite(number):
    """False for NaN (which compares false with everything, so it is never stale) and the infinities."""
    return number == number and number - number == 0


def load_overrides(state_dir):
    """Accepted remote changes, persisted across restarts: {"sampling": {...}, "collectors": {...}}."""
    saved = read_json(state_dir + "/overrides.json") if state_dir else None
    return saved if isinstance(saved, dict) else {}


def save_overrides(state_dir, overrides):
    if state_dir:
        ensure_dir(state_dir)
        write_atomic(state_dir + "/overrides.json", json.dumps(overrides))


# ---------------------------------------------------------------- what set_sampling / set_collectors do
# (here rather than in agent.py: a device loads this module only while it handles a command)


def set_sampling(agent, params):
    """Agent.set_sampling: validate and apply; the fixed policy's EveryInterval hands over to a Sampler."""
    from edge_agent.agent import EveryInterval

    if not isinstance(params, dict):
        return ["sampling: must be an object"]
    sampler = agent.sampler
    if isinstance(sampler, EveryInterval) and not sampler.covers(params):
        sampler = full_sampler(agent, params)  # another policy: the full sampler from now on
        if isinstance(sampler, list):
            return sampler
    update = getattr(sampler, "update", None)
    if update is None:
        return ["this agent's sampler cannot be tuned remotely"]
    errors = update(params)
    if not errors:
        agent.sampler = sampler
        merged = dict(agent.overrides.get("sampling", {}))
        merged.update(params)
        agent.overrides["sampling"] = merged
        save_overrides(agent.config["state_dir"], agent.overrides)
        agent.rebirth()  # the retained birth shows the effective sampling to `edge-gateway devices`
    return errors


def set_collectors(agent, changes):
    """Agent.set_collectors: validate, rebuild the collectors through the agent's factory, persist."""
    errors = check_collector_changes(changes)
    if not errors and agent.collector_factory is None:
        errors = ["collectors cannot be changed on this platform"]
    if errors:
        return errors
    section = {}
    for name in agent.config["collectors"]:
        section[name] = dict(agent.config["collectors"][name])
        section[name].update(changes.get(name, {}))
    try:
        collectors, effective = agent.collector_factory(section)
    except (OSError, ValueError) as exc:
        return ["collectors: %s" % exc]
    for old in agent.collectors.values():
        try:
            old.close()
        except OSError:
            pass
    agent.collectors = dict([(c.name, c) for c in collectors])
    agent.event_sources = [c for c in collectors if hasattr(c, "poll_events")]
    agent.config["collectors"] = section
    agent.info["collectors"] = effective
    saved = agent.overrides.get("collectors", {})
    for name in changes:
        saved.setdefault(name, {}).update(changes[name])
    agent.overrides["collectors"] = saved
    save_overrides(agent.config["state_dir"], agent.overrides)
    agent.rebirth()
    return []


def full_sampler(agent, params):
    """A sampling.Sampler continuing EveryInterval's schedule, or the list of problems."""
    from edge_agent.sampling import Sampler, validate_sampling

    errors = validate_sampling(params)
    if errors:
        return errors
    old = agent.sampler
    sampler = Sampler(old.params)
    if agent.loadwatch is None:  # the load policies read the device's load; fixed did not
        from edge_agent.loadwatch import LoadWatch

        agent.loadwatch = LoadWatch(agent.config["proc_root"])
    if old.last_ms is not None:
        sampler.due(old.last_ms)  # the last read was then: the next one is an interval later
    return sampler


def check_collector_changes(changes):
    """Validate a set_collectors argument: {name: {"enabled": bool, "backend": str}}."""
    from edge_agent.config import BACKENDS, COLLECTORS

    errors = []
    if not isinstance(changes, dict) or not changes:
        return ["args must map collector names to {enabled, backend}"]
    for name in changes:
        change = changes[name]
        if name not in COLLECTORS:
            errors.append("%s: unknown collector (known: %s)" % (name, ", ".join(COLLECTORS)))
        elif not isinstance(change, dict):
            errors.append("%s: must be an object" % name)
        else:
            for key in change:
                value = change[key]
                if key == "enabled" and not isinstance(value, bool):
                    errors.append("%s.enabled: must be true or false" % name)
                elif key == "backend" and value not in BACKENDS:
                    errors.append("%s.backend: must be one of %s" % (name, ", ".join(BACKENDS)))
                elif key not in ("enabled", "backend"):
                    errors.append("%s.%s: cannot be changed remotely" % (name, key))
    return errors
