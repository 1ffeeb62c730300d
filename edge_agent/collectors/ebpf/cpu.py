"""CPU metrics from bpf/cpu.bpf.c beside the kernel's own CPU accounting: conversion and the collector.

`system.cpu.time` and `system.cpu.utilization` mean the same whatever the backend: the kernel's
accounting states from /proc/stat (user, nice, system, idle, iowait, irq, softirq, steal), which
this collector takes from its procfs companion. What the scheduler tracepoints measure, and
/proc/stat does not, has names of its own:

    system.cpu.scheduler.busy_time  counter    s                 scale 0.01   cpu=total|cpuN
    system.cpu.context_switches     counter    {context_switch}  scale 1      cpu=total|cpuN
    system.cpu.runqueue.latency     histogram  s                 scale 1e-6   -   (bounds 1 us .. 2^24 us, log2)
    system.cpu.softirq.time         counter    s                 scale 1e-6   vector=hi|timer|net_tx|net_rx|...
    process.cpu.time                counter    s                 scale 0.01   process.command (only with top_n)

`scheduler.busy_time` is the time any task but the idle task (pid 0) was on the CPU, measured at
every context switch in nanoseconds. It is not a state of system.cpu.time: sched_switch cannot
tell user from kernel mode, and interrupt time taken while idle counts as idle. It is seeded from
/proc/stat's busy ticks (all states but idle and iowait) when the collector starts, so it counts
since boot, continues across agent restarts, and sits near the sum of system.cpu.time's busy
states; the gap between the two is what tick sampling misses (docs/ebpf.md).

The conversion (`to_samples`) takes the plain values `read()` of a loader returns; the collector
adds the companion's samples, the seed and a monotonic floor.

Example output (one CPU, per_cpu=True), as (series key, value):

    system.cpu.time{cpu=cpu0,state=user}            41234      (from /proc/stat, source procfs)
    system.cpu.scheduler.busy_time{cpu=cpu0}        51234
    system.cpu.context_switches{cpu=cpu0}           1520
    system.cpu.runqueue.latency                     (2841, 90412, [12, 301, 800, ..., 0])
    system.cpu.softirq.time{vector=net_rx}          5231
"""

from edge_agent.model import BOOT
from edge_wire import COUNTER, HISTOGRAM

NS_PER_TICK = 10000000  # busy_time is in USER_HZ ticks (scale 0.01), as /proc/stat's times
RUNQ_SLOTS = 26  # bpf/telemetry.h
# slot s holds latencies in [2^(s-1), 2^s) us (slot 0: below 1 us); the last slot is open-ended
RUNQ_BOUNDS = [(1 << s) * 1e-6 for s in range(RUNQ_SLOTS - 1)]
BUSY = "system.cpu.scheduler.busy_time"


def to_samples(reading, cache, per_cpu=True, base=None):
    """Samples for one loader reading.

    reading: {"cpus": [(cpu, busy_ns, idle_ns, switches)], "runq": ([slot counts], sum_us),
              "softirq": [(vector, ns)], "top": [(comm, ns)]} (top is left to the collector).
    base:    {cpu name: ticks} added to busy_time (the seed); missing is 0.
    """
    base = base or {}
    # busy time seeded from /proc/stat continues the kernel's since-boot count; without a seed it
    # counts from the program's load, as the other eBPF counters do (the cache's start)
    busy_start = BOOT if base else None
    out = []
    total_busy = total_switches = 0
    for cpu, busy_ns, _idle_ns, switches in reading.get("cpus", ()):
        name = "cpu%d" % cpu
        busy = busy_ns // NS_PER_TICK + base.get(name, 0)
        total_busy += busy
        total_switches += switches
        if per_cpu:  # per CPU, or the machine total alone (no `cpu`): never both, as procfs cpu
            out.append((cache.get(BUSY, COUNTER, "s", {"cpu": name}, 0.01, start=busy_start), busy))
            out.append((cache.get("system.cpu.context_switches", COUNTER, "{context_switch}", {"cpu": name}), switches))
    if reading.get("cpus") and not per_cpu:
        out.append((cache.get(BUSY, COUNTER, "s", None, 0.01, start=busy_start), total_busy))
        out.append((cache.get("system.cpu.context_switches", COUNTER, "{context_switch}"), total_switches))
    runq = reading.get("runq")
    if runq is not None:
        slots, sum_us = runq
        buckets = list(slots[:RUNQ_SLOTS]) + [0] * (RUNQ_SLOTS - len(slots))
        series = cache.get("system.cpu.runqueue.latency", HISTOGRAM, "s", None, 1e-6, RUNQ_BOUNDS)
        out.append((series, (sum(buckets), sum_us, buckets)))
    for vector, ns in reading.get("softirq", ()):
        out.append((cache.get("system.cpu.softirq.time", COUNTER, "s", {"vector": vector}, 1e-6), ns // 1000))
    return out


def seed_from_stat(stat, reading):
    """The base that makes busy_time continue /proc/stat's busy ticks.

    stat: procfs.parse_stat() output; reading: the loader's reading at the same moment.
    """
    base = {}
    for cpu, busy_ns, _idle_ns, _ in reading.get("cpus", ()):
        name = "cpu%d" % cpu
        fields = stat.get("cpu", {}).get(name)
        if fields is not None:
            base[name] = sum(fields) - fields[3] - fields[4] - busy_ns // NS_PER_TICK
    return base


class EbpfCpuCollector:
    """cpu collector over a loader with `read()` (bpf_loader.CpuProgram), with the procfs cpu
    collector as companion for system.cpu.time and system.cpu.utilization."""

    name = "cpu"
    source = "ebpf"

    def __init__(self, program, companion=None, per_cpu=True, top_n=0, proc_root="/proc"):
        from edge_agent.clock import wall_ms
        from edge_agent.collectors.seriescache import SeriesCache

        self.program = program
        self.companion = companion
        self.per_cpu = per_cpu
        self.top_n = top_n  # report the N commands with most CPU time (needs a program loaded with top_pids)
        self.cache = SeriesCache(self.source, start_ms=wall_ms())  # the maps count from their load
        self.floor = {}  # series key -> highest value sent (a torn map read must not go backwards)
        self.top = {}  # comm -> ns on CPU since start
        self.base = {}
        try:
            from edge_agent.collectors.procfs.registry import parse_stat, read_text

            self.base = seed_from_stat(parse_stat(read_text(proc_root, "stat")), program.read())
        except (OSError, ValueError):
            pass

    def collect(self):
        out = self.companion.collect() if self.companion is not None else []
        reading = self.program.read()
        for series, value in to_samples(reading, self.cache, self.per_cpu, self.base):
            if series.kind == COUNTER:
                floor = self.floor.get(series.key)
                if floor is not None and value < floor:
                    value = floor
                self.floor[series.key] = value
            out.append((series, value))
        if self.top_n:
            for comm, ns in reading.get("top", ()):
                self.top[comm] = self.top.get(comm, 0) + ns
            for comm in sorted(self.top, key=self.top.get, reverse=True)[: self.top_n]:
                series = self.cache.get("process.cpu.time", COUNTER, "s", {"process.command": comm}, 0.01)
                out.append((series, self.top[comm] // NS_PER_TICK))
        return out

    def close(self):
        self.program.close()
        if self.companion is not None:
            self.companion.close()
