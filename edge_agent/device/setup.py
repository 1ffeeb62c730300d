"""Start-up of the MicroPython agent, imported by edge_agent.device.main and released once the agent runs.

Reads and validates the config, applies saved remote changes, builds the /proc collectors, the
device info, the sampler and the agent. Nothing here is needed afterwards, so none of it (nor
edge_agent.config, the collector registry or the boot readers) stays in the heap: the objects built
here keep only the modules they need.
"""

import sys

from edge_agent import __version__
from edge_agent.agent import Agent, EveryInterval, LinkState
from edge_agent.collectors import reserve
from edge_agent.store.statefile import ensure_dir, read_json

# a batch's values: ~2.5 bytes a sample on the wire, for the default job's 65 series
BATCH_BYTES_A_TICK = 160
HEAP_A_BATCH = 8192  # cap_buffer: up to 7 batches wait in RAM in a 64K heap, 5 in 48K (its tables aside)
# room for a tick's samples in Agent.kept: the default job is 72 samples a tick on a host with 2 CPUs and
# 2 interfaces (16 a CPU, 16 an interface, 8 for memory), 120 with 5 CPUs and 2 interfaces
TICK_SAMPLES = 128


def load_config(path, release):
    """The validated config, its broker address, and the collectors it enables; None on a bad config."""
    from edge_agent import config as configuration
    from edge_wire.broker import parse_broker

    try:
        cfg = configuration.load(path)
    except configuration.ConfigError as exc:
        sys.stderr.write("edge-agent: bad configuration\n  " + str(exc).replace("\n", "\n  ") + "\n")
        return None
    broker = parse_broker(cfg["broker"])
    configuration = None
    # config validates sampling with them, and the broker URL with edge_wire.broker
    release("edge_agent.config", "edge_agent.sampling.rules", "edge_agent.sampling.sampler", "edge_wire.broker")
    return cfg, broker


def device_name(cfg):
    if cfg["device_id"]:
        return cfg["device_id"]
    from edge_agent.collectors.procfs.registry import read_text

    return read_text(cfg["proc_root"], "sys/kernel/hostname").strip()


def device_info(cfg, effective, name):
    from edge_agent.clock import wall_ms
    from edge_agent.collectors.procfs.system import read_boot, read_host

    root = cfg["proc_root"]
    boot_id, boot_time_ms = read_boot(root)
    impl = sys.implementation
    info = {
        "device": name, "boot_id": boot_id, "boot_time_ms": boot_time_ms, "start_ms": wall_ms(), "agent": __version__,
        "os": "linux", "platform": "%s-%d.%d.%d" % ((impl.name,) + tuple(impl.version[:3])),
        "collectors": effective, "group": cfg["group"],
    }
    info.update(read_host(root))
    return info


def tls_context(transport, log, release):
    """Load the certificates now, while the heap has room in one piece; on a problem (a missing or bad
    file) say so: the connection attempts try again, each one logged (mpy_main's mqtt_error)."""
    from edge_agent.transport import umqtt_connect

    try:
        umqtt_connect.context(transport)
    except (OSError, ValueError) as exc:
        log("tls_error", error=repr(exc))
    umqtt_connect = None
    release("edge_agent.transport.umqtt_connect")


def cap_buffer(cfg, log):
    """At most one waiting batch in RAM per HEAP_A_BATCH bytes of heap: a batch takes 1.5-2 KB, and
    batches that pile up (broker down, a birth waiting for room) must not take the heap the birth and
    the next reads need. Beyond it the oldest are dropped and reported (ext.lost), as any overflow."""
    import gc

    room = max(2, (gc.mem_alloc() + gc.mem_free()) // HEAP_A_BATCH)
    wanted = cfg["buffer"]["max_batches"]
    if wanted > room:
        cfg["buffer"]["max_batches"] = room
        log("buffer_capped", max_batches=room, configured=wanted, reason="heap")


def build_sampler(cfg, root):
    """EveryInterval for a plain fixed policy; sampling.Sampler and the load signals otherwise."""
    params = dict(cfg["sampling"])
    if "interval_ms" not in params:
        params["interval_ms"] = int(cfg["interval_s"] * 1000)
    fixed = EveryInterval(interval_ms=params["interval_ms"])
    if fixed.covers(params):
        return EveryInterval(interval_ms=params["interval_ms"], params=params), None
    from edge_agent.sampling.loadwatch import LoadWatch
    from edge_agent.sampling.sampler import Sampler

    return Sampler(params), LoadWatch(root)


def build(path, runtime):
    """The agent for the config file at `path`, or None when the config is bad (reported on stderr).

    `runtime` is edge_agent.device.main's (make_logger, release, DeviceTransport, OnDemandCommands,
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
        from edge_agent.sampling.rules import usable  # a knob retired since it was set remotely is left out

        sampling, dropped = usable(sampling)
        for problem in dropped:
            log("override_dropped", section="sampling", problem=problem)
        if dropped:
            overrides["sampling"] = sampling
        cfg["sampling"].update(sampling)
        release("edge_agent.sampling.rules")
    for name in overrides.get("collectors", {}):
        if name in cfg["collectors"]:
            cfg["collectors"][name].update(overrides["collectors"][name])
    for name in cfg["collectors"]:
        if cfg["collectors"][name]["backend"] not in ("auto", "procfs"):
            log("collector_fallback", collector=name, detail="only procfs on MicroPython")
    root = cfg["proc_root"]
    name = device_name(cfg)
    # the transport first: its receive buffer and TLS context are the largest blocks that live as long
    # as the agent, allocated while the heap is still in one piece
    transport = transport_class(host, port, client_id="edge-" + name, keepalive=cfg["keepalive_s"],
                                username=cfg["username"], password=cfg["password"],
                                tls=cfg["tls"] if tls else None,
                                will=("%s/%s/state" % (cfg["topic_prefix"], name), b"offline", 1, True))
    if tls:
        tls_context(transport, log, release)
    reserve()  # the /proc collectors' read buffer
    factory = factory(root)
    collectors, effective = factory(cfg["collectors"])
    info = device_info(cfg, effective, name)
    sampler, loadwatch = build_sampler(cfg, root)
    commands = None
    if cfg["commands"]["enabled"]:
        commands = commands_class(cfg, info["device"], log)
    cap_buffer(cfg, log)
    spool = None
    if cfg["buffer"]["spool_max_bytes"]:
        from edge_agent.store.spool import Spool

        spool = Spool(cfg["state_dir"] + "/spool", cfg["buffer"]["spool_max_bytes"])
    agent = Agent(cfg, collectors, transport, info, sampler=sampler, loadwatch=loadwatch,
                  commands=commands, spool=spool, log=log, collector_factory=factory, overrides=overrides)
    ticks = min(int(cfg["batch_s"] / cfg["interval_s"]) + 1, 64)
    agent.builder.reserve(ticks * BATCH_BYTES_A_TICK)
    # the tick's list at its full size now, while the heap is in one piece: grown later, a list doubles,
    # and at 65 samples that is one 1 KB block (on 64-bit), which a 64K heap after hours may not have
    agent.kept.extend([None] * TICK_SAMPLES)
    del agent.kept[:]  # (its room stays)
    agent.link = LinkState()  # the connection's story, as on CPython (edge_agent.transport.linkstate, loaded for news)
    return agent
