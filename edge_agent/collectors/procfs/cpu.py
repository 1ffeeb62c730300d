"""CPU time per state and utilization, from /proc/stat, as the Collector's hostmetrics receiver.

Metrics (see docs/metrics.md):

    system.cpu.time          counter  s  scale 0.01    cpu=cpu0|cpu1..., state=user|nice|system|idle|
                                                       wait|interrupt|softirq|steal
    system.cpu.utilization   gauge    1  scale 0.0001  cpu, state (the same eight)

Values are USER_HZ ticks, which the kernel fixes at 100 per second on every architecture except
Alpha, hence scale 0.01. The states are /proc/stat's eight columns under hostmetrics' names
(iowait is `wait`, irq is `interrupt`). Utilization is each state's share of the interval, in basis
points: its tick delta over the delta of all eight (so a CPU's states add up to 1); it is not
emitted on the first read of a CPU, nor for a CPU that was not online in the previous read, nor
when no tick elapsed.

Options: per_cpu (default True) emits one series per CPU and state; the machine total is left to
queries (`sum by (state)`), never mixed in as a `cpu` value. per_cpu False emits only the total,
as series without a `cpu` attribute.

Counters: kernels older than 2.6.11 print fewer than eight fields; the missing trailing ones are 0.
CPU counters are 64-bit and never reset while the system is up, but idle/iowait may step backwards
a little on tickless kernels, so a drop is held at the highest value seen instead of being taken
as a reset (which would add the whole raw value again): each time counter is the highest reading
so far. An offline CPU keeps its last reading: it simply stops being emitted and, when it comes
back, counts on from there (the kernel keeps its counters across hotplug).

Example output (first read, per_cpu=False), as (series key, value):

    system.cpu.time{state=user}     3415
    system.cpu.time{state=nice}     0
    ...
    system.cpu.time{state=steal}    20

Small on a device: a CPU is 16 slots of `series` and 17 of `ticks` (flat lists), found by name; a
state's time and utilization series share one attribute dict.
"""

from edge_agent.collectors import lines
from edge_agent.model import Series, family
from edge_wire import COUNTER, GAUGE

# a list, not a tuple: MicroPython loads a constant tuple's strings as separate str objects
STATES = ["user", "nice", "system", "idle", "wait", "interrupt", "softirq", "steal"]
IDLE = 3  # column indexes, for the readers of whole-CPU load (loadwatch)
IOWAIT = 4
SLOTS = 17  # per CPU: 8 time series, 8 utilization series, and the read that last saw it
TIME = family("system.cpu.time", COUNTER, "s", 0.01, "procfs")
UTILIZATION = family("system.cpu.utilization", GAUGE, "1", 0.0001, "procfs")
CPU_LINES = [b"cpu"]  # the lines of /proc/stat read (edge_agent.collectors.lines)


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


class CpuCollector:
    """The cpu collector; `cpus` maps a CPU name to its number k in order of first sight ("total"
    for the aggregate line, which only per_cpu=False reads): its series are `series[16k:16k+16]`,
    its readings `ticks[17k:17k+17]`."""

    name = "cpu"
    source = "procfs"

    def __init__(self, root="/proc", per_cpu=True):
        self.root = root
        self.per_cpu = per_cpu
        self.cpus = {}  # kept while a CPU is offline
        # per CPU, 17 slots: its 8 time series then its 8 utilization series; the 8 counters' highest
        # readings, the 8 previous readings (for utilization), then the last read that saw it online
        self.series = []
        self.ticks = []
        self.reads = 0

    def add(self, name):
        """A new CPU's slots; its number k. Out of memory half-way, nothing is added (the next read
        tries again): collect() indexes `series` and `ticks` together."""
        series = [None] * 16
        for i in range(8):
            attrs = {"state": STATES[i]}  # shared by the state's time and utilization series
            if name != "total":
                attrs["cpu"] = name
            series[i] = Series.of(TIME, attrs)
            series[8 + i] = Series.of(UTILIZATION, attrs)
        k = len(self.ticks) // SLOTS
        try:
            self.series.extend(series)
            self.ticks.extend([0] * 16 + [-1])
        except MemoryError:
            del self.series[k * 16 :]
            del self.ticks[k * SLOTS :]
            raise
        self.cpus[name] = k
        return k

    def collect(self):
        rows = scan_cpus(lines(self.root + "/stat", CPU_LINES))
        self.reads += 1
        ticks = self.ticks
        out = []
        for name, fields in rows:
            if (name == "total") == self.per_cpu:  # per CPU, or the total alone: never both
                continue
            k = self.cpus.get(name)
            if k is None:
                k = self.add(name)
            first = k * SLOTS  # this CPU's ticks; its series start at k * 16
            series = k * 16
            prev_all = sum(ticks[first : first + 8])
            for i in range(8):
                ticks[first + 8 + i] = ticks[first + i]
                if fields[i] > ticks[first + i]:
                    ticks[first + i] = fields[i]  # a drop is held (see above)
                out.append((self.series[series + i], ticks[first + i]))
            elapsed = sum(ticks[first : first + 8]) - prev_all
            if ticks[first + 16] == self.reads - 1 and elapsed > 0:
                for i in range(8):
                    ratio = ((ticks[first + i] - ticks[first + 8 + i]) * 10000 + elapsed // 2) // elapsed
                    out.append((self.series[series + 8 + i], min(ratio, 10000)))
            ticks[first + 16] = self.reads
        return out

    def close(self):
        pass
