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
as a reset (which would add the whole raw value again). An offline CPU keeps its last reading: it
simply stops being emitted and, when it comes back, counts on from there (the kernel keeps its
counters across hotplug).

Example output (first read, per_cpu=False), as (series key, value):

    system.cpu.time{cpu=total,state=user}     3415
    system.cpu.time{cpu=total,state=nice}     0
    ...
    system.cpu.time{cpu=total,state=steal}    20
"""

from edge_agent.collectors.procfs import read_text
from edge_agent.model import COUNTER, GAUGE, Series, family

STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
IDLE = 3
IOWAIT = 4
NFIELDS = len(STATES)


def _cpu_fields(tokens):
    """The eight state counters of one cpu line's tokens (after the name), padded with 0."""
    fields = [0] * NFIELDS
    n = len(tokens)
    if n > NFIELDS:
        n = NFIELDS  # guest and guest_nice are already included in user and nice
    for i in range(n):
        fields[i] = int(tokens[i])
    return fields


def scan_stat(text):
    """(cpu rows in file order as [(name, fields)], {other key: int}); name "total" for the aggregate."""
    rows = []
    other = {"btime": 0, "procs_running": 0, "procs_blocked": 0, "ctxt": 0}
    for line in text.split("\n"):
        if line.startswith("cpu"):
            tokens = line.split()
            name = tokens[0]
            rows.append(("total" if name == "cpu" else name, _cpu_fields(tokens[1:])))
        elif line.startswith("btime") or line.startswith("procs_") or line.startswith("ctxt"):
            # only these few lines are split: the intr and softirq lines are long
            tokens = line.split()
            if len(tokens) == 2 and tokens[0] in other:
                other[tokens[0]] = int(tokens[1])
    return rows, other


def parse_stat(text):
    """/proc/stat -> {"cpu": {"total": [8 ints], "cpu0": [...]}, "btime", "procs_running",
    "procs_blocked", "ctxt"} (ints; a missing line gives 0)."""
    rows, result = scan_stat(text)
    cpus = {}
    for name, fields in rows:
        cpus[name] = fields
    result["cpu"] = cpus
    return result


TIME = family("system.cpu.time", COUNTER, "s", 0.01, "procfs")
UTILIZATION = family("system.cpu.utilization", GAUGE, "1", 0.0001, "procfs")


class _Cpu:
    """One CPU's series, the raw state counters of its last read and their totals (lists by state)."""

    def __init__(self, name):
        self.time = [Series.of(TIME, {"cpu": name, "state": state}) for state in STATES]
        self.raw = [-1] * NFIELDS  # -1: not read yet
        self.total = [0] * NFIELDS
        self.utilization = Series.of(UTILIZATION, {"cpu": name})
        self.read = -1  # number of the collector's read that last saw this CPU online
        self.prev_all = 0
        self.prev_busy = 0


class CpuCollector:
    name = "cpu"
    source = "procfs"
    OPTIONS = {"per_cpu": True}

    def __init__(self, root="/proc", per_cpu=True):
        self.root = root
        self.per_cpu = per_cpu
        self.cpus = {}  # name -> _Cpu, kept while offline
        self.reads = 0

    @staticmethod
    def _total(cpu, i, raw):
        """Monotonic total of one state counter; a drop is held, not taken as a reset (see above)."""
        last = cpu.raw[i]
        if last < 0:
            cpu.total[i] += raw  # first sight counts since boot
        elif raw >= last:
            cpu.total[i] += raw - last
        else:
            return cpu.total[i]
        cpu.raw[i] = raw
        return cpu.total[i]

    def collect(self):
        rows, _ = scan_stat(read_text(self.root, "stat"))
        self.reads += 1
        out = []
        for name, fields in rows:
            if name != "total" and not self.per_cpu:
                continue
            cpu = self.cpus.get(name)
            if cpu is None:
                cpu = self.cpus[name] = _Cpu(name)
            all_ticks = 0
            for i in range(NFIELDS):
                total = self._total(cpu, i, fields[i])
                out.append((cpu.time[i], total))
                all_ticks += total
            busy = all_ticks - cpu.total[IDLE] - cpu.total[IOWAIT]
            if cpu.read == self.reads - 1 and all_ticks > cpu.prev_all:
                elapsed = all_ticks - cpu.prev_all
                ratio = ((busy - cpu.prev_busy) * 10000 + elapsed // 2) // elapsed
                out.append((cpu.utilization, min(max(ratio, 0), 10000)))
            cpu.read = self.reads
            cpu.prev_all = all_ticks
            cpu.prev_busy = busy
        return out

    def close(self):
        pass
