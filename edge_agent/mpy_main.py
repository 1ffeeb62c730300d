"""MicroPython entry point: `micropython -m edge_agent.mpy_main [CONFIG]`.

The same core as on CPython, handed the adapters a MicroPython device has: the /proc collectors
and our own MQTT client (transport/umqtt.py). Logs go to stderr, one line per event; with
`"log_format": "json"` as JSON. A bad config exits with status 2 and one line per problem.
"""

import gc
import json
import sys
import time

from edge_agent import __version__
from edge_agent import config as configuration
from edge_agent.agent import Agent
from edge_agent.collectors.procfs import enabled_procfs, read_text
from edge_agent.collectors.procfs_system import read_boot_id, read_boot_time
from edge_agent.commands import CommandHandler, load_overrides
from edge_agent.loadwatch import LoadWatch
from edge_agent.sampling import Sampler
from edge_agent.spool import Spool
from edge_agent.statefile import ensure_dir
from edge_agent.transport.umqtt import Transport

DEFAULT_CONFIG = "/etc/edge-agent/config.json"


HEAP_HIGH = [0]  # the highest gc.mem_alloc() seen when logging (functions cannot carry attributes here)


def make_logger(fmt):
    def log(event, **fields):
        HEAP_HIGH[0] = max(HEAP_HIGH[0], gc.mem_alloc())
        if fmt == "json":
            record = {"ts": time.time(), "event": event}
            record.update(fields)
            line = json.dumps(record)
        else:
            line = event + "".join([" %s=%s" % (k, fields[k]) for k in fields])
        sys.stderr.write(line + "\n")

    return log


def device_info(cfg, effective):
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


class HeapReport:
    """Wraps the sampler's `due` to log the heap once a minute: the soak test reads these lines."""

    def __init__(self, sampler, log, every_ms=60000):
        self.sampler = sampler
        self.log = log
        self.every_ms = every_ms
        self.next_ms = 0

    def __getattr__(self, name):
        return getattr(self.sampler, name)

    def due(self, now_ms):
        if now_ms >= self.next_ms:
            self.next_ms = now_ms + self.every_ms
            gc.collect()
            self.log("heap", alloc=gc.mem_alloc(), free=gc.mem_free(), high=HEAP_HIGH[0])
        return self.sampler.due(now_ms)


def main(argv):
    path = argv[1] if len(argv) > 1 else DEFAULT_CONFIG
    try:
        cfg = configuration.load(path)
    except configuration.ConfigError as exc:
        sys.stderr.write("edge-agent: bad configuration\n  " + str(exc).replace("\n", "\n  ") + "\n")
        return 2
    log = make_logger(cfg["log_format"])
    if cfg["state_dir"]:
        ensure_dir(cfg["state_dir"])
    overrides = load_overrides(cfg["state_dir"])
    cfg["sampling"].update(overrides.get("sampling", {}))
    for name in overrides.get("collectors", {}):
        if name in cfg["collectors"]:
            cfg["collectors"][name].update(overrides["collectors"][name])
    for name in cfg["collectors"]:
        if cfg["collectors"][name]["backend"] not in ("auto", "procfs"):
            log("collector_fallback", collector=name, detail="only procfs on MicroPython")
    root = cfg["proc_root"]
    collectors, effective = enabled_procfs(cfg["collectors"], root)
    info = device_info(cfg, effective)
    host, port, tls = configuration.parse_broker(cfg["broker"])
    transport = Transport(host, port, client_id="edge-" + info["device"], keepalive=cfg["keepalive_s"],
                          username=cfg["username"], password=cfg["password"],
                          tls=cfg["tls"] if tls else None,
                          will=("%s/%s/state" % (cfg["topic_prefix"], info["device"]), b"offline", 1, True))
    params = dict(cfg["sampling"])
    if "interval_ms" not in params:
        params["interval_ms"] = int(cfg["interval_s"] * 1000)
    sampler = HeapReport(Sampler(params), log)
    commands = None
    if cfg["commands"]["enabled"]:
        commands = CommandHandler(cfg, info["device"], lambda: int(time.time()), log)
    spool = None
    if cfg["buffer"]["spool_max_bytes"]:
        spool = Spool(cfg["state_dir"] + "/spool", cfg["buffer"]["spool_max_bytes"])

    def factory(section):
        return enabled_procfs(section, root)

    agent = Agent(cfg, collectors, transport, info, sampler=sampler, loadwatch=LoadWatch(root),
                  commands=commands, spool=spool, log=log, collector_factory=factory, overrides=overrides)
    log("agent_start", device=info["device"], broker=cfg["broker"], platform=info["platform"])
    try:
        agent.run()
    except KeyboardInterrupt:
        pass
    log("agent_stop", device=info["device"], heap_high=HEAP_HIGH[0], batches=agent.stats["batches"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
