"""The device's load signals for the `load` sampling policy, read cheaply from /proc.

    LoadWatch(root="/proc").read() -> (cpu_util, runq, mem_avail_ratio, self_cpu)

    cpu_util         busy share of all CPUs since the previous read (aggregate `cpu` line of
                     stat: 1 - (idle + iowait) / all, over the deltas); None on the first read
    runq             run-queue pressure: procs_running / ncpu from stat, not counting the reader
                     itself (it is running while it reads)
    mem_avail_ratio  MemAvailable / MemTotal from meminfo (estimated on kernels without it)
    self_cpu         the agent's own CPU (utime + stime of self/stat) as a fraction of one core
                     since the previous read; None on the first read

Three files, each read whole with one read() (MicroPython reads a text file line by line, a byte at
a time), parsed by the collectors' pure parsers. `now_ms` (a monotonic clock) is passed in so tests
need no sleeping; without it the clock module's monotonic milliseconds are used.

MicroPython-compatible core.
"""

from edge_agent.collectors.procfs.cpu import IDLE, IOWAIT
from edge_agent.collectors.procfs.memory import available, parse_meminfo
from edge_agent.collectors.procfs.registry import parse_stat, read_text

USER_HZ = 100  # fixed by the kernel ABI for /proc tick counts (all but Alpha)


def parse_self_stat(text):
    """utime + stime ticks from a /proc/<pid>/stat line (the name in parentheses may hold spaces)."""
    tail = text[text.rfind(")") + 2:].split()
    # tail[0] is field 3 (state); utime and stime are fields 14 and 15
    return int(tail[11]) + int(tail[12])


class LoadWatch:
    def __init__(self, root="/proc", self_path="self/stat"):
        self.root = root
        self.self_path = self_path
        self.prev_cpu = None  # (busy, all) ticks
        self.prev_self = None  # (ticks, ms)

    def read(self, now_ms=None):
        if now_ms is None:
            from edge_agent.clock import mono_ms

            now_ms = mono_ms()
        stat = parse_stat(read_text(self.root, "stat"))
        cpus = stat["cpu"]
        ncpu = len(cpus) - 1 if len(cpus) > 1 else 1
        cpu_util = None
        total = cpus.get("total")
        if total:
            all_ticks = sum(total)
            busy = all_ticks - total[IDLE] - total[IOWAIT]
            if self.prev_cpu is not None:
                d_all = all_ticks - self.prev_cpu[1]
                if d_all > 0:
                    cpu_util = min(1.0, max(0.0, (busy - self.prev_cpu[0]) / d_all))
            self.prev_cpu = (busy, all_ticks)
        running = stat.get("procs_running", 0) - 1
        runq = (running if running > 0 else 0) / ncpu
        mem_avail_ratio = None
        try:
            mem = parse_meminfo(read_text(self.root, "meminfo"))
            if mem.get("MemTotal"):
                mem_avail_ratio = available(mem) / mem["MemTotal"]
        except (OSError, ValueError):
            pass
        self_cpu = None
        try:
            ticks = parse_self_stat(read_text(self.root, self.self_path))
            if self.prev_self is not None and now_ms > self.prev_self[1]:
                self_cpu = (ticks - self.prev_self[0]) * 1000.0 / USER_HZ / (now_ms - self.prev_self[1])
            self.prev_self = (ticks, now_ms)
        except (OSError, ValueError, IndexError):
            pass
        return (cpu_util, runq, mem_avail_ratio, self_cpu)
