"""MicroPython entry point: `micropython -m edge_agent.mpy_main [CONFIG]`.

The same core as on CPython, handed the adapters a MicroPython device has: the /proc collectors
and our own MQTT client (transport/umqtt.py). Logs go to stderr, one line per event; with
`"log_format": "json"` as JSON. A bad config exits with status 2 and one line per problem.

Built for a small heap (`-X heapsize=64K`): bytecode loaded from .mpy lives in the heap on the
unix port, so what is needed only for a while is imported, used and released (`release`):
- start-up only: edge_agent.config (validation), the collector registry and the boot readers;
- per command: edge_agent.commands and edge_agent.hmac (`OnDemandCommands`); the handler's
  replay-protection state is kept between commands;
- the `fixed` policy runs on agent.EveryInterval; edge_agent.sampling (and the load signals) is
  loaded only for another policy, at start or when a command asks for one.
Once a batch is encoded the heap is collected; a `heap` line is logged once a minute
(EDGE_AGENT_HEAP_EVERY_S overrides the period): `alloc` is gc.mem_alloc() right after
gc.collect() (the steady heap), `batch` the same taken with a full batch still in the builder and
its payload encoded (the busiest moment), `high` the highest of those so far.
"""

import gc
import sys
import time

from edge_agent import __version__
from edge_agent.agent import Agent, EveryInterval
from edge_agent.clock import mono_ms
from edge_agent.statefile import ensure_dir, read_json
from edge_agent.transport.umqtt import Transport

DEFAULT_CONFIG = "/etc/edge-agent/config.json"
HEAP = [0, 0]  # highest gc.mem_alloc() after a collection; the latest one taken after a flush


def release(*names):
    """Forget modules imported for a while, so their code can be collected (their qstrs stay)."""
    for name in names:
        if name in sys.modules:
            del sys.modules[name]
        parent, _, leaf = name.rpartition(".")
        if parent in sys.modules:
            try:
                delattr(sys.modules[parent], leaf)
            except (AttributeError, KeyError):  # MicroPython: KeyError when it is not there
                pass
    gc.collect()


def make_logger(fmt):
    def log(event, **fields):
        if fmt == "json":
            import json

            fields["ts"] = time.time()
            fields["event"] = event
            line = json.dumps(fields)
        else:
            line = event + "".join([" %s=%s" % (k, fields[k]) for k in fields])
        sys.stderr.write(line + "\n")

    return log


def measure():
    gc.collect()
    alloc = gc.mem_alloc()
    if alloc > HEAP[0]:
        HEAP[0] = alloc
    return alloc


def after_flush():
    HEAP[1] = measure()


class DeviceTransport(Transport):
    """umqtt's Transport plus the heap report, logged from the agent's loop every `every_ms`."""

    def report_heap(self, log, every_ms):
        self.log = log
        self.every_ms = every_ms
        self.report_at = mono_ms()

    def poll(self, timeout_s):
        Transport.poll(self, timeout_s)
        if mono_ms() >= self.report_at:
            self.report_at = mono_ms() + self.every_ms
            alloc = measure()
            self.log("heap", alloc=alloc, free=gc.mem_free(), batch=HEAP[1], high=HEAP[0])


class OnDemandCommands:
    """The agent's command handler, with edge_agent.commands loaded only while it is needed."""

    # what a command may load: set_collectors validates with config, set_sampling with sampling (a
    # Sampler taken into use keeps its module alive without sys.modules)
    MODULES = ("edge_agent.commands", "edge_agent.hmac", "edge_agent.config", "edge_agent.sampling",
               "edge_agent.loadwatch")

    def __init__(self, cfg, device, log):
        self.cfg = cfg
        self.device = device
        self.log = log
        self.kept = None  # (nonces, rejected, accepted) of the handler between two commands

    def handler(self):
        from edge_agent.commands import CommandHandler

        handler = CommandHandler(self.cfg, self.device, lambda: int(time.time()), self.log)
        if self.kept is not None:
            handler.nonces, handler.rejected, handler.accepted = self.kept
        return handler

    def topics(self):
        topics = self.handler().topics()
        release(*self.MODULES)
        return topics

    def handle(self, topic, payload, agent):
        handler = self.handler()
        try:
            return handler.handle(topic, payload, agent)
        finally:
            self.kept = (handler.nonces, handler.rejected, handler.accepted)
            handler = None
            release(*self.MODULES)


def load_config(path):
    """The validated config, its broker address, and the collectors it enables; None on a bad config."""
    from edge_agent import config as configuration

    try:
        cfg = configuration.load(path)
    except configuration.ConfigError as exc:
        sys.stderr.write("edge-agent: bad configuration\n  " + str(exc).replace("\n", "\n  ") + "\n")
        return None
    broker = configuration.parse_broker(cfg["broker"])
    configuration = None
    release("edge_agent.config", "edge_agent.sampling")  # config validates sampling with it
    return cfg, broker


def build_collectors(section, root):
    from edge_agent.collectors.procfs import enabled_procfs

    return enabled_procfs(section, root)


# collector modules that only a collector instance needs once start-up is over (the system one also
# reads the boot id and time at start)
SPARE = ("edge_agent.collectors.procfs_load", "edge_agent.collectors.procfs_system")


def device_info(cfg, effective):
    from edge_agent.collectors.procfs import read_text
    from edge_agent.collectors.procfs_system import read_boot_id, read_boot_time

    root = cfg["proc_root"]
    name = cfg["device_id"]
    if not name:
        name = read_text(root, "sys/kernel/hostname").strip()
    try:
        boot_id = read_boot_id(root)
    except OSError:
        boot_id = "unknown"
    try:
        boot_time_ms = read_boot_time(root) * 1000
    except (OSError, ValueError):
        boot_time_ms = 0
    impl = sys.implementation
    return {
        "device": name, "boot_id": boot_id, "boot_time_ms": boot_time_ms, "agent": __version__,
        "os": "linux", "platform": "%s-%d.%d.%d" % ((impl.name,) + tuple(impl.version[:3])),
        "collectors": effective, "group": cfg["group"],
    }


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


def main(argv):
    path = argv[1] if len(argv) > 1 else DEFAULT_CONFIG
    loaded = load_config(path)
    if loaded is None:
        return 2
    cfg, (host, port, tls) = loaded
    log = make_logger(cfg["log_format"])
    if cfg["state_dir"]:
        ensure_dir(cfg["state_dir"])
    overrides = read_json(cfg["state_dir"] + "/overrides.json") if cfg["state_dir"] else None
    if not isinstance(overrides, dict):
        overrides = {}
    cfg["sampling"].update(overrides.get("sampling", {}))
    for name in overrides.get("collectors", {}):
        if name in cfg["collectors"]:
            cfg["collectors"][name].update(overrides["collectors"][name])
    for name in cfg["collectors"]:
        if cfg["collectors"][name]["backend"] not in ("auto", "procfs"):
            log("collector_fallback", collector=name, detail="only procfs on MicroPython")
    root = cfg["proc_root"]
    collectors, effective = build_collectors(cfg["collectors"], root)
    info = device_info(cfg, effective)
    transport = DeviceTransport(host, port, client_id="edge-" + info["device"], keepalive=cfg["keepalive_s"],
                                username=cfg["username"], password=cfg["password"],
                                tls=cfg["tls"] if tls else None,
                                will=("%s/%s/state" % (cfg["topic_prefix"], info["device"]), b"offline", 1, True))
    transport.report_heap(log, int(_env_float("EDGE_AGENT_HEAP_EVERY_S", 60) * 1000))
    sampler, loadwatch = build_sampler(cfg, root)
    commands = None
    if cfg["commands"]["enabled"]:
        commands = OnDemandCommands(cfg, info["device"], log)
    spool = None
    if cfg["buffer"]["spool_max_bytes"]:
        from edge_agent.spool import Spool

        spool = Spool(cfg["state_dir"] + "/spool", cfg["buffer"]["spool_max_bytes"])

    def factory(section):
        built = build_collectors(section, root)
        release(*SPARE)
        return built

    agent = Agent(cfg, collectors, transport, info, sampler=sampler, loadwatch=loadwatch,
                  commands=commands, spool=spool, log=log, collector_factory=factory, overrides=overrides)
    agent.after_flush = after_flush
    release(*SPARE)
    log("agent_start", device=info["device"], broker=cfg["broker"], platform=info["platform"],
        heap=measure())
    try:
        agent.run()
    except KeyboardInterrupt:
        pass
    log("agent_stop", device=info["device"], heap_high=HEAP[0], batches=agent.stats["batches"])
    return 0


def _env_float(name, default):
    import os

    try:
        return float(os.getenv(name) or default)
    except ValueError:
        return default


if __name__ == "__main__":
    sys.exit(main(sys.argv))
