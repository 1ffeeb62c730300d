"""The composition root: a validated config → the Agent, the one start-up of both entry points.

`build(cfg, host, log)` applies the remote changes saved before a restart, then builds in this order
the transport (first: on a small heap its buffers and TLS context are the largest blocks that live as
long as the agent, taken while the heap is in one piece), the collectors, the device's identity
(`info`), the sampler, the command handler and the spool, and wires them into an Agent.

What differs by platform is asked of `host`:
- `transport(cfg, device)`: the MQTT client (paho on CPython, umqtt on a device); ValueError naming a
  TLS file that cannot be used;
- `collector_factory(cfg)`: section -> (collectors, {name: backend}) (eBPF/netlink/procfs selection on
  CPython, /proc only on a device); also the agent's factory for set_collectors;
- `device_name(cfg)`, `platform`: who the device is, what runs the agent;
- `commands(cfg, device, log)`: the command handler (a device loads it only while a command runs);
- `prepare(cfg, log)`: the platform's last word before the agent is made (a device caps its RAM
  buffer to its heap).

edge_agent/cli/main.py hands it CPython's parts, edge_agent/device/setup.py a device's. Part of the
MicroPython-compatible core; on a device imported at start-up and released afterwards (nothing here is
needed once the agent runs).
"""

from edge_agent import __version__, unload
from edge_agent.agent import Agent, EveryInterval, LinkState
from edge_agent.store.statefile import ensure_dir, read_json

# a batch's values: ~2.5 bytes a sample on the wire, for the default job's 65 series
BATCH_BYTES_A_TICK = 160
# room for a tick's samples in Agent.kept: the default job is 72 samples a tick on a host with 2 CPUs and
# 2 interfaces (16 a CPU, 16 an interface, 8 for memory), 120 with 5 CPUs and 2 interfaces
TICK_SAMPLES = 128


class StartError(Exception):
    """A start-up problem the operator must fix (a state folder, a spool, a TLS file): one line."""


def load_overrides(state_dir):
    """Accepted remote changes, persisted across restarts: {"sampling": {...}, "collectors": {...}}."""
    saved = read_json(state_dir + "/overrides.json") if state_dir else None
    return saved if isinstance(saved, dict) else {}


def apply_overrides(cfg, overrides, log=None):
    """Remote changes accepted before a restart win over the file (they were newer); a sampling knob
    that is no longer valid (retired since) is left out with one line."""
    sampling = overrides.get("sampling")
    if sampling:  # checked only when there are some: loading the rules interns their names for good
        from edge_agent.sampling.rules import usable

        sampling, dropped = usable(sampling)
        for problem in dropped:
            if log:
                log("override_dropped", section="sampling", problem=problem)
        if dropped:
            overrides["sampling"] = sampling  # and left out of the file at the next accepted change
        cfg["sampling"].update(sampling)
        unload("edge_agent.sampling.rules")
    changes = overrides.get("collectors", {})
    for name in changes:
        if name in cfg["collectors"]:
            cfg["collectors"][name].update(changes[name])


def device_info(cfg, effective, name, platform, start_ms):
    """The birth's device fields: who, since when, running what, collecting how."""
    from edge_agent.collectors.procfs.system import read_boot, read_host

    root = cfg["proc_root"]
    boot_id, boot_time_ms = read_boot(root)
    info = {
        "device": name, "boot_id": boot_id, "boot_time_ms": boot_time_ms,
        "start_ms": start_ms,  # counters that start with the agent start here
        "agent": __version__, "os": "linux", "platform": platform, "collectors": effective, "group": cfg["group"],
    }
    info.update(read_host(root))
    return info


def build_sampler(cfg):
    """(sampler, load signals): agent.EveryInterval for a plain fixed policy (the sampling module is not
    loaded); sampling.Sampler and the load signals otherwise."""
    params = dict(cfg["sampling"])
    if "interval_ms" not in params:
        params["interval_ms"] = int(cfg["interval_s"] * 1000)
    fixed = EveryInterval(interval_ms=params["interval_ms"])
    if fixed.covers(params):
        return EveryInterval(interval_ms=params["interval_ms"], params=params), None
    from edge_agent.sampling.loadwatch import LoadWatch
    from edge_agent.sampling.sampler import Sampler

    return Sampler(params), LoadWatch(cfg["proc_root"])


def build(cfg, host, log):
    """The Agent for a validated config; StartError with one line when it cannot start."""
    from edge_agent.clock import wall_ms

    state_dir = cfg["state_dir"]
    if state_dir:
        try:
            ensure_dir(state_dir)
        except OSError as exc:
            raise StartError("state_dir %s: cannot create it (%s)" % (state_dir, _reason(exc)))
    overrides = load_overrides(state_dir)
    apply_overrides(cfg, overrides, log)
    name = host.device_name(cfg)
    try:
        transport = host.transport(cfg, name)
    except ValueError as exc:  # a TLS file: named, with what is wrong
        raise StartError(str(exc))
    factory = host.collector_factory(cfg)
    collectors, effective = factory(cfg["collectors"])
    info = device_info(cfg, effective, name, host.platform, wall_ms())
    sampler, loadwatch = build_sampler(cfg)
    commands = None
    if cfg["commands"]["enabled"]:
        if not cfg["commands"]["require_signature"]:
            log("commands_unsigned", warning="command signatures are OFF (commands.require_signature=false)")
        commands = host.commands(cfg, name, log)
    host.prepare(cfg, log)
    spool = None
    if cfg["buffer"]["spool_max_bytes"]:
        from edge_agent.store.spool import Spool

        try:
            spool = Spool(state_dir + "/spool", cfg["buffer"]["spool_max_bytes"])
        except OSError as exc:
            raise StartError("spool %s/spool: cannot use it (%s)" % (state_dir, _reason(exc)))
    agent = Agent(cfg, collectors, transport, info, sampler=sampler, loadwatch=loadwatch, commands=commands,
                  spool=spool, log=log, collector_factory=factory, overrides=overrides)
    ticks = min(int(cfg["batch_s"] / cfg["interval_s"]) + 1, 64)
    agent.builder.reserve(ticks * BATCH_BYTES_A_TICK)
    # the tick's list at its full size now, while the heap is in one piece: grown later, a list doubles,
    # and at 65 samples that is one 1 KB block (on 64-bit), which a 64K heap after hours may not have
    agent.kept.extend([None] * TICK_SAMPLES)
    del agent.kept[:]  # (its room stays)
    agent.link = LinkState()  # the connection's story in the log (edge_agent.transport.linkstate, loaded for news)
    return agent


def _reason(exc):
    return getattr(exc, "strerror", None) or exc
