"""Remote commands on the device: checked, applied, acknowledged — or rejected and acknowledged.

The envelope, its signature and the body's fields are edge_wire/command.py's (the protocol, written
once); here is what only the device judges. Topics: `<prefix>/<device>/cmd` (device key or fleet
key), `<prefix>/_fleet/cmd` and `<prefix>/_group/<G>/cmd` (fleet key). The agent rejects unsigned
(unless signing was turned off explicitly), badly signed, stale (|now - ts| > max_skew_s),
replayed, mis-addressed and malformed commands, and invalid parameters; every outcome is
acknowledged on `<prefix>/<device>/ack` and nothing is applied unless everything checked out.

MicroPython-compatible. A small device loads this module with edge_wire.command (and
edge_agent.sampling.rules for set_sampling, edge_agent.commands.collector_changes for set_collectors) only
while it handles a command, so it is kept to a few functions: every function and string constant
is in the heap while it is loaded, and every new name is interned for good.
"""

import json

from edge_agent.clock import mono_ms
from edge_agent.store.statefile import ensure_dir, read_json, write_atomic
from edge_wire.command import COMMANDS, Rejected, check_signature, open_envelope, read_body

MAX_NONCES = 512
FLOOR = ""  # the key, among the nonces (8 to 64 characters), of the newest timestamp forgotten


class CommandHandler:
    """Checks and applies the commands of one device; keeps the replay-protection state."""

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
        saved = read_json(self.state_dir + "/nonces.json") if self.state_dir else None
        if isinstance(saved, dict):
            for nonce in saved:
                if isinstance(saved[nonce], (int, float)):
                    self.nonces[nonce] = saved[nonce]

    def topics(self):
        topics = [self.prefix + "/" + self.device + "/cmd", self.prefix + "/_fleet/cmd"]
        if self.group:
            topics.append(self.prefix + "/_group/" + self.group + "/cmd")
        return topics

    def handle(self, topic, payload, agent):
        """Check and apply one command; return the ack payload (bytes)."""
        command_id = ""
        try:
            body = self.verify(topic, payload)
            command_id = body["id"]
            # Replays. A nonce is kept (persisted with a state_dir) until its command could no
            # longer be fresh; when more than MAX_NONCES are fresh, the oldest is forgotten and
            # every command as old as it is refused from then on (FLOOR), so forgetting reopens
            # nothing. A command signed before this agent started is refused too: without a
            # state_dir the nonces it may have used are gone (the monotonic clock says when the
            # agent started, the wall clock's second before that is the limit).
            ts = body["ts"]
            started = self.now_s() - (mono_ms() - agent.started_ms) // 1000 - 1
            if ts <= self.nonces.get(FLOOR, -1) or ts < started:
                raise Rejected("replayed", "signed before the oldest command this agent remembers (%s)"
                               % ("its start" if ts < started else "older ones were forgotten"))
            # authenticated and new: never again, even if invalid
            horizon = self.now_s() - self.settings["max_skew_s"]
            for nonce in list(self.nonces):
                if self.nonces[nonce] < horizon:
                    del self.nonces[nonce]
            while len(self.nonces) >= MAX_NONCES:  # keep the newest; the floor covers the others
                oldest = min([n for n in self.nonces if n != FLOOR], key=self.nonces.get)
                self.nonces[FLOOR] = max(self.nonces.pop(oldest), self.nonces.get(FLOOR, -1))
            self.nonces[body["nonce"]] = ts
            if self.state_dir:
                try:
                    write_atomic(self.state_dir + "/nonces.json", json.dumps(self.nonces))
                except OSError as exc:  # remembered in memory; after a restart the start limit holds
                    self.state_error("nonces", exc)
            cmd = body["cmd"]
            ack = {"id": command_id, "device": self.device, "status": "ok", "cmd": cmd}
            if cmd == "ping":
                ack["result"] = {"pong": True, "stats": agent.stats}
            elif cmd == "rebirth":
                rebirth(agent)
            elif cmd == "flush":
                agent.flush()
                agent.pump()
            elif cmd != "get_config":  # get_config: every ack carries the effective configuration
                args = body.get("args", {})
                if cmd == "set_sampling":
                    errors = set_sampling(agent, args)
                else:
                    from edge_agent.commands.collector_changes import set_collectors

                    errors = set_collectors(agent, args)
                    if not errors:  # applied: saved here, so that the change's module needs nothing of this one
                        save_overrides(agent, "collectors", args)
                if errors:
                    raise Rejected("invalid", "; ".join(errors))
            self.accepted += 1
        except Rejected as exc:
            reason, message = exc.args
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            if not command_id:  # the id of a command rejected early, if it can be read at all
                try:
                    command_id = json.loads(json.loads(payload)["body"]).get("id", "")
                except (ValueError, KeyError, TypeError, AttributeError, RuntimeError):
                    pass
                if not isinstance(command_id, str):
                    command_id = ""
            ack = {"id": command_id, "device": self.device, "status": "error", "reason": reason, "message": message}
            if self.log:
                self.log("command_rejected", device=self.device, id=command_id, reason=reason, message=message)
        ack["config"] = effective_config(agent)
        ack["ts"] = self.now_s()
        return json.dumps(ack).encode()

    def state_error(self, what, exc):
        if self.log:
            self.log("state_error", what=what, path=self.state_dir, error=str(exc))

    def verify(self, topic, payload):
        """The body of an authentic, fresh, well-formed command for this device; else Rejected."""
        text, sig = open_envelope(payload)
        # the topic decides the keys that may sign and the target the body must name
        topics = self.topics()
        if topic not in topics:
            raise Rejected("misaddressed", "not a command topic of this device: " + topic)
        scope = topics.index(topic)  # 0: this device's, 1: the fleet's, 2: its group's
        expected = (self.device, "*", "group:" + self.group)[scope]
        keys = (self.settings["device_key"], self.settings["fleet_key"])[min(scope, 1):]
        check_signature(text, sig, keys, self.settings["require_signature"])
        body = read_body(text)
        if body["target"] != expected:
            raise Rejected("misaddressed", "target %r does not match this topic (%r)" % (body["target"], expected))
        skew = abs(self.now_s() - body["ts"])
        if skew > self.settings["max_skew_s"]:
            raise Rejected("stale", "timestamp is %d s away from the device clock (limit %d s)"
                           % (skew, self.settings["max_skew_s"]))
        if body["nonce"] in self.nonces or body["nonce"] == FLOOR:
            raise Rejected("replayed", "nonce already used")
        if body["cmd"] not in COMMANDS:
            raise Rejected("unknown_command", "unknown command %r; known: %s" % (body["cmd"], ", ".join(COMMANDS)))
        return body


def load_overrides(state_dir):
    """Accepted remote changes, persisted across restarts: {"sampling": {...}, "collectors": {...}}."""
    saved = read_json(state_dir + "/overrides.json") if state_dir else None
    return saved if isinstance(saved, dict) else {}


def effective_config(agent):
    """What every ack carries: the settings the agent runs with now."""
    return {
        "interval_s": agent.config["interval_s"],
        "batch_s": agent.config["batch_s"],
        "sampling": agent.sampler.snapshot(),
        "collectors": agent.info.get("collectors", {}),
    }


def rebirth(agent):
    """Announce the dictionary again: now, or with the next batch when nothing was announced yet."""
    if agent.table.base is None:
        agent.table.changed = True
    else:
        agent.publish_birth()


def save_overrides(agent, section, changes):
    """Merge an accepted change into agent.overrides[section], persist them, announce (rebirth)."""
    saved = dict(agent.overrides.get(section, {}))
    for key in changes:
        if section == "collectors":
            saved.setdefault(key, {}).update(changes[key])
        else:
            saved[key] = changes[key]
    agent.overrides[section] = saved
    state_dir = agent.config["state_dir"]
    if state_dir:
        try:
            ensure_dir(state_dir)
            write_atomic(state_dir + "/overrides.json", json.dumps(agent.overrides))
        except OSError as exc:  # applied now, but not after a restart: said so in the log
            agent.log("state_error", what="overrides", path=state_dir, error=str(exc))
    rebirth(agent)  # the retained birth shows the effective settings to `edge-gateway devices`


# ---------------------------------------------------------------- what set_sampling does
# (here rather than in agent.py: a device loads this module only while it handles a command;
# set_collectors is in edge_agent.commands.collector_changes, loaded only for that command)


def set_sampling(agent, params):
    """A set_sampling command: validate and apply; the fixed policy's EveryInterval hands over to a Sampler."""
    from edge_agent.agent import EveryInterval

    if not isinstance(params, dict):
        return ["sampling: must be an object"]
    sampler = agent.sampler
    if isinstance(sampler, EveryInterval) and not sampler.covers(params):
        # another policy: the full sampler from now on, continuing EveryInterval's schedule
        from edge_agent.sampling.sampler import Sampler, validate_sampling

        errors = validate_sampling(params)
        if errors:
            return errors
        sampler = Sampler(agent.sampler.params)
        if agent.loadwatch is None:  # the load policies read the device's load; fixed did not
            from edge_agent.sampling.loadwatch import LoadWatch

            agent.loadwatch = LoadWatch(agent.config["proc_root"])
        if agent.sampler.last_ms is not None:
            sampler.due(agent.sampler.last_ms)  # the last read was then: the next one is an interval later
    update = getattr(sampler, "update", None)
    if update is None:
        return ["this agent's sampler cannot be tuned remotely"]
    errors = update(params)
    if not errors:
        agent.sampler = sampler
        save_overrides(agent, "sampling", params)
    return errors
