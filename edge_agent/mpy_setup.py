"""Start-up of the MicroPython agent, imported by edge_agent.mpy_main and released once the agent runs.

Reads and validates the config, applies saved remote changes, builds the /proc collectors, the
device info, the sampler and the agent. Nothing here is needed afterwards, so none of it (nor
edge_agent.config, the collector registry or the boot readers) stays in the heap: the objects built
here keep only the modules they need.
"""

import sys

from edge_agent import __version__
from edge_agent.agent import Agent, EveryInterval
from edge_agent.statefile import ensure_dir, read_json


def load_config(path, release):
    """The validated config, its broker address, and the collectors it enables; None on a bad config."""
    from edge_agent import config as configuration

    try:
        cfg = configuration.load(path)
    except configuration.ConfigError as exc:
        sys.stderr.write("edge-agent: bad configuration\n  " + str(exc).replace("\n", "\n  ") + "\n")
        return None
    broker = configuration.parse_broker(cfg["broker"])
    configuration = None
    release("edge_agent.config", "edge_agent.sampling_rules", "edge_agent.sampling")  # config validates sampling with them
    return cfg, broker


def device_info(cfg, effective):
    from edge_agent.clock import wall_ms
    from edge_agent.collectors.procfs import read_text
    from edge_agent.collectors.procfs_system import read_boot, read_host

    root = cfg["proc_root"]
    name = cfg["device_id"]
    if not name:
        name = read_text(root, "sys/kernel/hostname").strip()
    boot_id, boot_time_ms = read_boot(root)
    impl = sys.implementation
    info = {
        "device": name, "boot_id": boot_id, "boot_time_ms": boot_time_ms, "start_ms": wall_ms(), "agent": __version__,
        "os": "linux", "platform": "%s-%d.%d.%d" % ((impl.name,) + tuple(impl.version[:3])),
        "collectors": effective, "group": cfg["group"],
    }
    info.update(read_host(root))
    return info


def build_sampler(cfg, root):
    """EveryInterval for a plain fixed policy; sampling.Sampler and the load signals otherwise."""
    params = dict(cfg["sampling"])
    if "interval_ms" not in params:
        params["interval_ms"] = int(cfg["interval_s"] * 1000)
    fixed = EveryInterval(interval_ms=params["interval_ms"])
    if fixed.covers(params):
        return EveryInterval(interval_ms=params["interval_ms"], params=params), None
    from edge_agent.loadwatch import LoadWatch
    from edge_agent.sampling import Sampler

    return Sampler(params), LoadWatch(root)


def build(path, runtime):
    """The agent for the config file at `path`, or None when the config is bad (reported on stderr).

    `runtime` is edge_agent.mpy_main's (make_logger, release, DeviceTransport, OnDemandCommands,
    collector factory maker): what stays in use while the agent runs lives there, not here.
    """
    make_logger, release, transport_class, commands_class, factory = runtime
    loaded = load_config(path, release)
    if loaded is None:
        return None
    cfg, (host, port, tls) = loaded
    log = make_logger(cfg["log_format"])
    if cfg["state_dir"]:
        ensure_dir(cfg["state_dir"])
    overrides = read_json(cfg["state_dir"] + "/overrides.json") if cfg["state_dir"] else None
    if not isinstance(overrides, dict):
        overrides = {}
    sampling = overrides.get("sampling")
    if sampling:  # checked only when there are some: loading the rules interns their names for good
        from edge_agent.sampling_rules import usable  # a knob retired since it was set remotely is left out

        sampling, dropped = usable(sampling)
        for problem in dropped:
            log("override_dropped", section="sampling", problem=problem)
        if dropped:
            overrides["sampling"] = sampling
        cfg["sampling"].update(sampling)
        release("edge_agent.sampling_rules")
    for name in overrides.get("collectors", {}):
        if name in cfg["collectors"]:
            cfg["collectors"][name].update(overrides["collectors"][name])
    for name in cfg["collectors"]:
        if cfg["collectors"][name]["backend"] not in ("auto", "procfs"):
            log("collector_fallback", collector=name, detail="only procfs on MicroPython")
    root = cfg["proc_root"]
    factory = factory(root)
    collectors, effective = factory(cfg["collectors"])
    info = device_info(cfg, effective)
    transport = transport_class(host, port, client_id="edge-" + info["device"], keepalive=cfg["keepalive_s"],
                                username=cfg["username"], password=cfg["password"],
                                tls=cfg["tls"] if tls else None,
                                will=("%s/%s/state" % (cfg["topic_prefix"], info["device"]), b"offline", 1, True))
    sampler, loadwatch = build_sampler(cfg, root)
    commands = None
    if cfg["commands"]["enabled"]:
        commands = commands_class(cfg, info["device"], log)
    spool = None
    if cfg["buffer"]["spool_max_bytes"]:
        from edge_agent.spool import Spool

        spool = Spool(cfg["state_dir"] + "/spool", cfg["buffer"]["spool_max_bytes"])
    return Agent(cfg, collectors, transport, info, sampler=sampler, loadwatch=loadwatch,
                 commands=commands, spool=spool, log=log, collector_factory=factory, overrides=overrides)
