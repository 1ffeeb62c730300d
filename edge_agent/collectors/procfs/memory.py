"""Memory usage, limit and availability, from /proc/meminfo, as the Collector's hostmetrics receiver.

Metrics (see docs/metrics.md), all values in kB as the kernel prints them, hence scale 1024 (the
gateway exports them as non-monotonic Sums, as hostmetrics does):

    system.memory.usage             gauge  By  scale 1024  state=used|free|buffered|cached|
                                                           slab_reclaimable|slab_unreclaimable
    system.memory.limit             gauge  By  scale 1024  -
    system.linux.memory.available   gauge  By  scale 1024  -

The states are hostmetrics' on Linux (its gopsutil arithmetic): used, free, buffered and cached
partition MemTotal, with cached = Cached + SReclaimable (the "cache" column of procps `free -w`)
and used = MemTotal - free - buffered - cached (never below 0; inside some containers the fields do
not add up); slab_reclaimable (SReclaimable, so also inside cached) and slab_unreclaimable
(SUnreclaim) break the slab down. Sum used+free+buffered+cached for the total, not every state.

Kernels before 3.14 have no MemAvailable. We then estimate it like the kernel's own
si_mem_available() without the zone watermarks (which /proc/meminfo does not show):
MemFree + Active(file) + Inactive(file) + SReclaimable, or MemFree + Buffers + Cached before
2.6.28 where the file LRU lines are missing; capped at MemTotal. It is an upper bound of what
the kernel would report.

Options: none.

Example output (tests/fixtures/proc/modern/t0/meminfo):

    system.memory.usage{state=used}                1400000
    system.memory.usage{state=free}                1000000
    system.memory.usage{state=buffered}            100000
    system.memory.usage{state=cached}              1500000
    system.memory.usage{state=slab_reclaimable}    ...
    system.memory.usage{state=slab_unreclaimable}  ...
    system.memory.limit                  4000000
    system.linux.memory.available        2500000
"""

from edge_agent.collectors import lines
from edge_agent.model import Series, family
from edge_wire import GAUGE

# the fields this collector and loadwatch use: a dict of all ~55 would cost ~1 KB of heap a read,
# which a small, fragmented MicroPython heap often does not have. Literals, not computed: in a frozen
# module they cost no heap.
FIELDS = ["MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SReclaimable", "SUnreclaim",
          "Active(file)", "Inactive(file)"]
KEYS = ["MemTotal:", "MemFree:", "MemAvailable:", "Buffers:", "Cached:", "SReclaimable:", "SUnreclaim:",
        "Active(file):", "Inactive(file):"]
# the lines edge_agent.collectors.lines makes of the file
LINES = [b"MemTotal:", b"MemFree:", b"MemAvailable:", b"Buffers:", b"Cached:", b"SReclaimable:", b"SUnreclaim:",
         b"Active(file):", b"Inactive(file):"]


def parse_meminfo(text):
    """/proc/meminfo -> {field: int kB} of the FIELDS present, e.g. {"MemTotal": 24684084, ...}.
    `text` is the file, or a list of its lines (edge_agent.collectors.lines)."""
    fields = {}
    for line in text.split("\n") if isinstance(text, str) else text:
        for i in range(len(KEYS)):
            if line.startswith(KEYS[i]):
                unit = line.find("kB")
                fields[FIELDS[i]] = int(line[len(KEYS[i]):unit if unit > 0 else len(line)])  # int() skips spaces
                break
    return fields


def available(fields):
    """MemAvailable, or the estimate described in the module docstring on older kernels."""
    if "MemAvailable" in fields:
        return fields["MemAvailable"]
    free = fields.get("MemFree", 0)
    if "Active(file)" in fields and "Inactive(file)" in fields:
        estimate = free + fields["Active(file)"] + fields["Inactive(file)"] + fields.get("SReclaimable", 0)
    else:
        estimate = free + fields.get("Buffers", 0) + fields.get("Cached", 0)
    return min(estimate, fields.get("MemTotal", estimate))


class MemoryCollector:
    """The memory collector; `series` are usage used, free, buffered, cached, slab_reclaimable,
    slab_unreclaimable, then limit, available."""

    name = "memory"
    source = "procfs"

    def __init__(self, root="/proc"):
        self.root = root
        usage = family("system.memory.usage", GAUGE, "By", 1024, "procfs")
        self.series = []
        for state in ["used", "free", "buffered", "cached", "slab_reclaimable", "slab_unreclaimable"]:  # a list: see procfs_cpu.STATES
            self.series.append(Series.of(usage, {"state": state}))
        self.series.append(Series.of(family("system.memory.limit", GAUGE, "By", 1024, "procfs")))
        self.series.append(Series.of(family("system.linux.memory.available", GAUGE, "By", 1024, "procfs")))

    def collect(self):
        fields = parse_meminfo(lines(self.root + "/meminfo", LINES))
        if "MemTotal" not in fields:
            raise OSError("meminfo: no MemTotal")
        total = fields["MemTotal"]
        free = fields.get("MemFree", 0)
        buffers = fields.get("Buffers", 0)
        cached = fields.get("Cached", 0) + fields.get("SReclaimable", 0)
        # never below 0: inside some containers the fields do not add up
        used = max(total - free - buffers - cached, 0)
        values = (used, free, buffers, cached, fields.get("SReclaimable", 0), fields.get("SUnreclaim", 0),
                  total, available(fields))
        return list(zip(self.series, values))  # noqa: B905 (MicroPython: no strict=)

    def close(self):
        pass
