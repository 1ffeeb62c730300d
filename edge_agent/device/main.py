"""MicroPython entry point: `micropython -m edge_agent.device.main [CONFIG]`.

The same core as on CPython, handed the adapters a MicroPython device has: the /proc collectors
and our own MQTT client (transport/umqtt.py). Logs go to stderr, one line per event; with
`"log_format": "json"` as JSON. A bad config exits with status 2 and one line per problem.

Built for a small heap (`-X heapsize=64K`). In the agent's own interpreter (`python -m firmware
build`) every module is frozen: its bytecode is in the binary and an import costs only its
functions and globals. On a stock interpreter bytecode loaded from .mpy lives in the heap, so what
is needed only for a while is imported, used and released (`release`), in both cases:
- start-up only: edge_agent.device.setup (building everything), edge_agent.config (validation),
  the collector registry (edge_agent.collectors.procfs.registry, which imports only enabled collectors);
- per command: edge_agent.commands.handler and edge_wire.command, with edge_agent.sampling.rules for
  set_sampling and edge_agent.commands.collector_changes for set_collectors (`OnDemandCommands`); the
  handler's replay-protection state is kept between commands;
- per connection and per birth: edge_agent.lifecycle and edge_wire.birth (the agent
  unloads them itself, through edge_agent.unload);
- the `fixed` policy runs on agent.EveryInterval; edge_agent.sampling.sampler (and the load signals) is
  loaded only for another policy, at start or when a command asks for one.
Once a batch is encoded the heap is collected; a `heap` line is logged once a minute
(EDGE_AGENT_HEAP_EVERY_S overrides the period): `alloc` is gc.mem_alloc() right after
gc.collect() (the steady heap), `batch` the same taken with a full batch still in the builder and
its payload encoded (the busiest moment), `high` the highest of those so far, `largest` the largest
block an allocation can get then.

The connection's story is logged by the core as on CPython (edge_agent.transport.linkstate: mqtt_connected,
mqtt_disconnected, mqtt_error with the reason — a refused TLS certificate included — and the delay
before the next attempt, buffering, backlog_delivered); attempts back off from 1 s to 16 s. Started by the launcher on a stock interpreter
(EDGE_AGENT_PARENT), the agent stops cleanly when that launcher is gone.
"""

import gc
import sys
import time

from edge_agent import unload
from edge_agent.clock import mono_ms
from edge_agent.transport.umqtt import Transport

DEFAULT_CONFIG = "/etc/edge-agent/config.json"
HEAP = [0, 0]  # highest gc.mem_alloc() after a collection; the latest one taken after a flush


def release(*names):
    """Forget modules imported for a while (edge_agent.unload) and collect their code now."""
    unload(*names)
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


def largest_free():
    """The largest block the heap can give now, to 64 bytes: what a MemoryError depends on (gc.mem_free()
    counts every hole). A search by allocation, collected after each one that fits: for the report only."""
    lo, hi = 0, gc.mem_free()
    while hi - lo > 64:
        mid = (lo + hi) // 2
        try:
            block = bytearray(mid)
        except MemoryError:
            hi = mid
            continue
        block = None  # noqa: F841 (dropped, then collected)
        gc.collect()
        lo = mid
    return lo


def parent_pid():
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


class DeviceTransport(Transport):
    """umqtt's Transport plus what the device's loop does between two passes: the heap report every
    `every_ms` and the launcher watch (`watch_parent`). Connection changes and failed attempts are
    logged by the core (edge_agent.transport.linkstate), as on CPython."""

    parent = 0
    watch_at = 0

    def report_heap(self, log, every_ms):
        self.log = log
        self.every_ms = every_ms
        self.report_at = mono_ms()

    def watch_parent(self, pid):
        """Stop cleanly once process `pid` is no longer our parent: the launcher that passes signals on
        to a stock interpreter was killed outright, and an orphan would run beside its successor."""
        self.parent = pid

    def poll(self, timeout_s):
        Transport.poll(self, timeout_s)
        now = mono_ms()
        if now >= self.report_at:
            self.report_at = now + self.every_ms
            alloc = measure()
            self.log("heap", alloc=alloc, free=gc.mem_free(), largest=largest_free(), batch=HEAP[1], high=HEAP[0])
        if self.parent and now >= self.watch_at:
            self.watch_at = now + 1000
            if parent_pid() != self.parent:
                self.log("launcher_gone", pid=self.parent)
                raise KeyboardInterrupt


class OnDemandCommands:
    """The agent's command handler, with edge_agent.commands.handler loaded only while it is needed."""

    # what a command may load: set_sampling validates with sampling_rules (and loads sampling for a
    # policy other than fixed: a Sampler taken into use keeps its module alive without sys.modules);
    # set_collectors loads collector_changes, the collector registry and the births' encoder
    MODULES = ("edge_agent.commands.handler", "edge_wire.command", "edge_agent.store.statefile", "edge_agent.sampling.rules",
               "edge_agent.commands.collector_changes", "edge_agent.sampling.sampler", "edge_agent.sampling.loadwatch",
               "edge_agent.collectors.procfs.registry", "edge_agent.lifecycle", "edge_wire.birth")

    def __init__(self, cfg, device, log):
        self.cfg = cfg
        self.device = device
        self.log = log
        self.kept = None  # (nonces, rejected, accepted) of the handler between two commands

    def handler(self):
        from edge_agent.commands.handler import CommandHandler

        handler = CommandHandler(self.cfg, self.device, lambda: int(time.time()), self.log)
        if self.kept is not None:
            handler.nonces, handler.rejected, handler.accepted = self.kept
        return handler

    def topics(self):
        """As CommandHandler.topics, without loading it at every connection."""
        prefix = self.cfg["topic_prefix"]
        topics = [prefix + "/" + self.device + "/cmd", prefix + "/_fleet/cmd"]
        if self.cfg["group"]:
            topics.append(prefix + "/_group/" + self.cfg["group"] + "/cmd")
        return topics

    def handle(self, topic, payload, agent):
        try:
            handler = self.handler()
        except MemoryError:  # no room to load the handler now: the sender times out and may retry
            release(*self.MODULES)
            self.log("command_dropped", device=self.device, reason="memory")
            return None
        # a rebirth the command asks for goes at the next pass, once the command's modules are released:
        # in a 64K heap the birth's ~4 KB do not fit beside them
        def birth_later():
            agent.birth_due = True  # Agent.pump sends it

        agent.publish_birth = birth_later
        try:
            return handler.handle(topic, payload, agent)
        finally:
            del agent.publish_birth  # the agent's own method again
            self.kept = (handler.nonces, handler.rejected, handler.accepted)
            handler = None
            release(*self.MODULES)


# the collector registry, and the boot readers mpy_setup uses: running collectors need neither (a
# collector instance keeps the code it runs alive without sys.modules)
REGISTRY = ("edge_agent.collectors.procfs.registry", "edge_agent.collectors.procfs.system", "edge_agent.collectors.procfs.load")


def collector_factory(root):
    """The agent's `collector_factory`: a collectors config section -> (collectors, effective)."""

    def factory(section):
        from edge_agent.collectors.procfs.registry import enabled_procfs

        built = enabled_procfs(section, root)
        release(*REGISTRY)
        return built

    return factory


# a collection after every 1/16 of the heap allocated (4 KB in 64K), not only once it is full: short-lived
# objects (a tick's samples, a batch's encoding, start-up's modules) then reuse the low part of the heap,
# what lives long (built at start, the series met on the first reads) packs in among them, and the top
# stays in one piece for a batch, a birth or a command. Left to fill up, a 64K heap with mutual TLS and 4
# interfaces had 14 KB free in blocks under 1 KB after its first reads; with it, 8 KB in one block.
GC_EVERY = 16


def main(argv):
    gc.threshold((gc.mem_alloc() + gc.mem_free()) // GC_EVERY)
    path = argv[1] if len(argv) > 1 else DEFAULT_CONFIG
    try:
        from edge_agent.device import setup as mpy_setup

        agent = mpy_setup.build(path, (make_logger, release, DeviceTransport, OnDemandCommands, collector_factory))
    except MemoryError:  # a heap too small for the job: say so, rather than a traceback
        mpy_setup = None
        release("edge_agent.device.setup", "edge_agent.config", "edge_agent.store.statefile", *REGISTRY)
        sys.stderr.write("edge-agent: out of memory while starting in a %d KB heap; run MicroPython with a "
                         "larger one (-X heapsize=160K, EDGE_AGENT_HEAP for the launcher)\n"
                         % ((gc.mem_alloc() + gc.mem_free()) // 1024))
        return 3
    mpy_setup = None
    release("edge_agent.device.setup", "edge_agent.store.statefile", *REGISTRY)
    if agent is None:
        return 2
    log = agent.log
    agent.transport.report_heap(log, int(_env_float("EDGE_AGENT_HEAP_EVERY_S", 60) * 1000))
    agent.transport.watch_parent(int(_env_float("EDGE_AGENT_PARENT", 0)))  # set by the launcher
    agent.after_flush = after_flush
    log("agent_start", device=agent.device, broker=agent.config["broker"], platform=agent.info["platform"],
        heap=measure())
    try:
        agent.run()
    except KeyboardInterrupt:
        pass
    log("agent_stop", device=agent.device, heap_high=HEAP[0], batches=agent.stats["batches"],
        unsent=agent.stats["unsent"])
    return 0


def _env_float(name, default):
    import os

    try:
        return float(os.getenv(name) or default)
    except ValueError:
        return default


if __name__ == "__main__":
    sys.exit(main(sys.argv))
