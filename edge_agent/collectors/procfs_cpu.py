"""CPU time per state and utilization, from /proc/stat.

Metrics (see docs/architecture.md):

    system.cpu.time          counter  s  scale 0.01    cpu=total|cpu0|cpu1..., state=user|nice|system|idle|
                                                       iowait|irq|softirq|steal
    system.cpu.utilization   gauge    1  scale 0.0001  cpu=total|cpu0|cpu1...

Values are USER_HZ ticks, which the kernel fixes at 100 per second on every architecture except
Alpha, hence scale 0.01. Utilization is the busy fraction over the last interval in basis points:
busy = all - idle - iowait over the deltas of the eight states; it is not emitted on the first read
of a CPU, nor for a CPU that was not online in the previous read, nor when no tick elapsed.

Options: per_cpu (default True) also emits the cpuN lines; False emits only cpu=total.

Counters: kernels older than 2.6.11 print fewer than eight fields; the missing trailing ones are 0.
CPU counters are 64-bit and never reset while the system is up, but idle/iowait may step backwards
a little on tickless kernels, so a drop is held at the highest value seen instead of being taken
as a reset (which would add the whole raw value again): each time counter is the highest reading
so far. An offline CPU keeps its last reading: it simply stops being emitted and, when it comes
back, counts on from there (the kernel keeps its counters across hotplug).

Example output (first read, per_cpu=False), as (series key, value):

    system.cpu.time{cpu=total,state=user}     3415
    system.cpu.time{cpu=total,state=nice}     0
    ...
    system.cpu.time{cpu=total,state=steal}    20

Small on a device: a CPU's state is 9 slots of two flat lists (`series`, `ticks`), found by name.
"""

from edge_agent.collectors import lines
from edge_agent.model import COUNTER, GAUGE, Series, family

# a list, not a tuple: MicroPython loads a constant tuple's strings as separate str objects
STATES = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
IDLE = 3
CPU_LINES = [b"cpu"]
IOWAIT = 4
TIME = family("system.cpu.time", COUNTER, "s", 0.01, "procfs")
UTILIZATION = family("system.cpu.utilization", GAUGE, "1", 0.0001, "procfs")


def scan_cpus(text):
    """The cpu lines of /proc/stat in file order as [(name, [8 ints])]; name "total" for the aggregate.
    `text` is the file, or a list of its lines (edge_agent.collectors.lines)."""
    rows = []
    for line in text.split("\n") if isinstance(text, str) else text:
        if line.startswith("cpu"):
            tokens = line.split()
            fields = [0] * 8  # older kernels print fewer: the missing ones are 0
            for i in range(min(len(tokens) - 1, 8)):  # guest and guest_nice are already in user and nice
                fields[i] = int(tokens[i + 1])
            rows.append(("total" if tokens[0] == "cpu" else tokens[0], fields))
    return rows


def parse_stat(text):
    """/proc/stat -> {"cpu": {"total": [8 ints], "cpu0": [...]}, "btime", "procs_running",
    "procs_blocked", "ctxt"} (ints; a missing line gives 0). Kept in edge_agent.collectors.procfs,
    which a device loads only while it needs it; this name stays for the readers that import it here."""
    from edge_agent.collectors.procfs import parse_stat as parse

    return parse(text)


class CpuCollector:
    """The cpu collector; `cpus` maps a CPU name to its first slot in `series` and `ticks`."""

    name = "cpu"
    source = "procfs"

    def __init__(self, root="/proc", per_cpu=True):
        self.root = root
        self.per_cpu = per_cpu
        self.cpus = {}  # kept while a CPU is offline
        # per CPU, 9 slots: its 8 time series then its utilization; the 8 counters' highest readings
        # then the number of the last read that saw it online (-1: none)
        self.series = []
        self.ticks = []
        self.reads = 0

    def add(self, name):
        """A new CPU's 9 slots; out of memory half-way, nothing is added (the next read tries again)."""
        series = []
        for state in STATES:
            series.append(Series.of(TIME, {"cpu": name, "state": state}))
        series.append(Series.of(UTILIZATION, {"cpu": name}))
        first = len(self.ticks)
        try:
            self.series.extend(series)
            self.ticks.extend([0] * 8 + [-1])
        except MemoryError:  # the lists stay in step, as collect() indexes them together
            del self.series[first:]
            del self.ticks[first:]
            raise
        self.cpus[name] = first
        return first

    def collect(self):
        rows = scan_cpus(lines(self.root + "/stat", CPU_LINES))
        self.reads += 1
        ticks = self.ticks
        out = []
        for name, fields in rows:
            if name != "total" and not self.per_cpu:
                continue
            first = self.cpus.get(name)
            if first is None:
                first = self.add(name)
            prev_all = sum(ticks[first : first + 8])
            prev_busy = prev_all - ticks[first + IDLE] - ticks[first + IOWAIT]
            for i in range(8):
                if fields[i] > ticks[first + i]:
                    ticks[first + i] = fields[i]  # a drop is held (see above)
                out.append((self.series[first + i], ticks[first + i]))
            all_ticks = sum(ticks[first : first + 8])
            busy = all_ticks - ticks[first + IDLE] - ticks[first + IOWAIT]
            if ticks[first + 8] == self.reads - 1 and all_ticks > prev_all:
                elapsed = all_ticks - prev_all
                ratio = ((busy - prev_busy) * 10000 + elapsed // 2) // elapsed
                out.append((self.series[first + 8], min(max(ratio, 0), 10000)))
            ticks[first + 8] = self.reads
        return out

    def close(self):
        pass
