"""Start-up of the MicroPython agent: the device's parts for the composition root (edge_agent.compose).

Imported by edge_agent.device.main and released once the agent runs. Reads and validates the
config, then hands edge_agent.compose.build what a device has: our MQTT client (its TLS context
loaded now, while the heap is in one piece), the /proc collectors (one shared read buffer reserved
first), the host name from /proc, the command handler loaded only while a command runs, and a RAM
buffer capped to the heap. Nothing here is needed afterwards, so none of it (nor edge_agent.config,
edge_agent.compose, the collector registry or the boot readers) stays in the heap: the objects built
keep only the modules they need.
"""

import sys

from edge_agent.collectors import reserve

HEAP_A_BATCH = 8192  # cap_buffer: up to 7 batches wait in RAM in a 64K heap, 5 in 48K (its tables aside)


def load_config(path, release):
    """The validated config and its broker address; None on a bad config (reported on stderr)."""
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


class DeviceHost:
    """What edge_agent.compose asks of the platform, on a MicroPython device."""

    def __init__(self, broker, runtime, release):
        self.broker = broker
        self.transport_class, self.commands_class, self.factory = runtime
        self.release = release
        impl = sys.implementation
        self.platform = "%s-%d.%d.%d" % ((impl.name,) + tuple(impl.version[:3]))

    def device_name(self, cfg):
        if cfg["device_id"]:
            return cfg["device_id"]
        from edge_agent.collectors.procfs.registry import read_text

        return read_text(cfg["proc_root"], "sys/kernel/hostname").strip()

    def transport(self, cfg, device):
        host, port, tls = self.broker
        transport = self.transport_class(host, port, client_id="edge-" + device, keepalive=cfg["keepalive_s"],
                                         username=cfg["username"], password=cfg["password"],
                                         tls=cfg["tls"] if tls else None,
                                         will=("%s/%s/state" % (cfg["topic_prefix"], device), b"offline", 1, True))
        if tls:
            self.tls_context(transport)
        return transport

    def tls_context(self, transport):
        """Load the certificates now, while the heap has room in one piece; on a problem (a missing or bad
        file) say so: the connection attempts try again, each one logged (device.main's mqtt_error)."""
        from edge_agent.transport import umqtt_connect

        try:
            umqtt_connect.context(transport)
        except (OSError, ValueError) as exc:
            self.log("tls_error", error=repr(exc))
        umqtt_connect = None
        self.release("edge_agent.transport.umqtt_connect")

    def collector_factory(self, cfg):
        for name in cfg["collectors"]:
            if cfg["collectors"][name]["backend"] not in ("auto", "procfs"):
                self.log("collector_fallback", collector=name, detail="only procfs on MicroPython")
        reserve()  # the /proc collectors' read buffer
        return self.factory(cfg["proc_root"])

    def commands(self, cfg, device, log):
        return self.commands_class(cfg, device, log)

    def prepare(self, cfg, log):
        cap_buffer(cfg, log)


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


def build(path, runtime):
    """The agent for the config file at `path`, or None when the config is bad or it cannot start
    (reported on stderr).

    `runtime` is edge_agent.device.main's (make_logger, release, DeviceTransport, OnDemandCommands,
    collector factory maker): what stays in use while the agent runs lives there, not here.
    """
    make_logger, release = runtime[0], runtime[1]
    loaded = load_config(path, release)
    if loaded is None:
        return None
    cfg, broker = loaded
    log = make_logger(cfg["log_format"])
    host = DeviceHost(broker, runtime[2:], release)
    host.log = log
    from edge_agent import compose

    try:
        return compose.build(cfg, host, log)
    except compose.StartError as exc:
        sys.stderr.write("edge-agent: %s\n" % exc)
        return None
