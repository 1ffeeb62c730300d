"""CPU metrics from bpf/cpu.c: conversion of its map readings to samples, and the collector.

Metrics (names, units and scales as the procfs collector where the meaning is the same):

    system.cpu.time                 counter    s                 scale 0.01   cpu=total|cpuN, state=busy|idle
    system.cpu.utilization          gauge      1                 scale 0.0001 cpu=total|cpuN
    system.cpu.context_switches     counter    {context_switch}  scale 1      cpu=total|cpuN
    system.cpu.runqueue.latency     histogram  s                 scale 1e-6   -   (bounds 1 us .. 2^24 us, log2)
    system.cpu.softirq.time         counter    s                 scale 1e-6   vector=hi|timer|net_tx|net_rx|...
    process.cpu.time                counter    s                 scale 0.01   process.command (only with top_n)

States: sched_switch tells which task leaves a CPU, not whether it ran in user or kernel mode,
so eBPF splits time into `busy` (any task but the idle task, pid 0) and `idle` (the idle task;
time in interrupts taken while idle counts as idle). procfs' user+nice+system+irq+softirq+steal
corresponds to busy, idle+iowait to idle. The counters are seeded from /proc/stat when the
collector starts, so they count since boot like procfs' and a backend switch is no reset.

The conversion (`to_samples`) takes the plain values `read()` of a loader returns and needs no
bcc; the collector only adds state (seeds, utilization, a monotonic floor).

Example output (one CPU, per_cpu=True), as (series key, value):

    system.cpu.time{cpu=cpu0,state=busy}            51234
    system.cpu.time{cpu=cpu0,state=idle}            998877
    system.cpu.context_switches{cpu=cpu0}           1520
    system.cpu.runqueue.latency                     (2841, 90412, [12, 301, 800, ..., 0])
    system.cpu.softirq.time{vector=net_rx}          5231
"""

from edge_agent.model import COUNTER, GAUGE, HISTOGRAM

NS_PER_TICK = 10000000  # system.cpu.time is in USER_HZ ticks (scale 0.01), as /proc/stat
RUNQ_SLOTS = 26  # bpf/telemetry.h
# slot s holds latencies in [2^(s-1), 2^s) us (slot 0: below 1 us); the last slot is open-ended
RUNQ_BOUNDS = [(1 << s) * 1e-6 for s in range(RUNQ_SLOTS - 1)]


def to_samples(reading, cache, per_cpu=True, base=None):
    """Samples for one loader reading.

    reading: {"cpus": [(cpu, busy_ns, idle_ns, switches)], "runq": ([slot counts], sum_us),
              "softirq": [(vector, ns)], "top": [(comm, ns)]} (top is left to the collector).
    base:    {(cpu name, state): ticks} added to the time counters (the seed); missing is 0.
    """
    base = base or {}
    out = []
    total_busy = total_idle = total_switches = 0
    for cpu, busy_ns, idle_ns, switches in reading.get("cpus", ()):
        name = "cpu%d" % cpu
        busy = busy_ns // NS_PER_TICK + base.get((name, "busy"), 0)
        idle = idle_ns // NS_PER_TICK + base.get((name, "idle"), 0)
        total_busy += busy
        total_idle += idle
        total_switches += switches
        if per_cpu:
            out.append((cache.get("system.cpu.time", COUNTER, "s", {"cpu": name, "state": "busy"}, 0.01), busy))
            out.append((cache.get("system.cpu.time", COUNTER, "s", {"cpu": name, "state": "idle"}, 0.01), idle))
            out.append((cache.get("system.cpu.context_switches", COUNTER, "{context_switch}", {"cpu": name}), switches))
    if reading.get("cpus"):
        out.append((cache.get("system.cpu.time", COUNTER, "s", {"cpu": "total", "state": "busy"}, 0.01), total_busy))
        out.append((cache.get("system.cpu.time", COUNTER, "s", {"cpu": "total", "state": "idle"}, 0.01), total_idle))
        out.append((cache.get("system.cpu.context_switches", COUNTER, "{context_switch}", {"cpu": "total"}), total_switches))
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
    """The base that makes eBPF's busy/idle continue /proc/stat's counts (both in ticks).

    stat: procfs.parse_stat() output; reading: the loader's reading at the same moment.
    """
    base = {}
    for cpu, busy_ns, idle_ns, _ in reading.get("cpus", ()):
        name = "cpu%d" % cpu
        fields = stat.get("cpu", {}).get(name)
        if fields is None:
            continue
        idle = fields[3] + fields[4]
        base[(name, "busy")] = sum(fields) - idle - busy_ns // NS_PER_TICK
        base[(name, "idle")] = idle - idle_ns // NS_PER_TICK
    return base


class EbpfCpuCollector:
    """cpu collector over a loader with `read()` (bpf_loader.CpuProgram or a CO-RE replacement)."""

    name = "cpu"
    source = "ebpf"

    def __init__(self, program, per_cpu=True, top_n=0, proc_root="/proc"):
        from edge_agent.model import SeriesCache

        self.program = program
        self.per_cpu = per_cpu
        self.top_n = top_n  # report the N commands with most CPU time (needs a program built with TOP_PIDS)
        self.cache = SeriesCache(self.source)
        self.floor = {}  # series key -> highest value sent (a torn map read must not go backwards)
        self.prev = {}  # cpu label -> (busy, idle) of the previous read, for utilization
        self.top = {}  # comm -> ns on CPU since start
        self.base = {}
        try:
            from edge_agent.collectors.procfs import parse_stat, read_text

            self.base = seed_from_stat(parse_stat(read_text(proc_root, "stat")), program.read())
        except (OSError, ValueError):
            pass

    def collect(self):
        reading = self.program.read()
        out = []
        times = {}
        for series, value in to_samples(reading, self.cache, self.per_cpu, self.base):
            floor = self.floor.get(series.key)
            if floor is not None and series.kind == COUNTER and value < floor:
                value = floor
            self.floor[series.key] = value
            out.append((series, value))
            if series.name == "system.cpu.time":
                times.setdefault(series.attrs["cpu"], {})[series.attrs["state"]] = value
        for cpu, t in times.items():
            busy, idle = t.get("busy", 0), t.get("idle", 0)
            prev = self.prev.get(cpu)
            self.prev[cpu] = (busy, idle)
            if prev is not None and busy + idle > prev[0] + prev[1]:
                elapsed = busy + idle - prev[0] - prev[1]
                ratio = ((busy - prev[0]) * 10000 + elapsed // 2) // elapsed
                out.append((self.cache.get("system.cpu.utilization", GAUGE, "1", {"cpu": cpu}, 0.0001), min(max(ratio, 0), 10000)))
        if self.top_n:
            for comm, ns in reading.get("top", ()):
                self.top[comm] = self.top.get(comm, 0) + ns
            for comm in sorted(self.top, key=self.top.get, reverse=True)[: self.top_n]:
                series = self.cache.get("process.cpu.time", COUNTER, "s", {"process.command": comm}, 0.01)
                out.append((series, self.top[comm] // NS_PER_TICK))
        return out

    def close(self):
        self.program.close()
