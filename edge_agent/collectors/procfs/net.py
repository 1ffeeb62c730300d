"""Network traffic per interface, from /proc/net/dev.

Metrics (see docs/architecture.md), cumulative counters, scale 1:

    system.network.io        counter  By        device=<iface>, direction=receive|transmit
    system.network.packets   counter  {packets} device, direction
    system.network.errors    counter  {errors}  device, direction
    system.network.dropped   counter  {packets} device, direction

Options:
    include       [] (all)  interface names to collect; "name*" matches a prefix
    exclude       [] (none) interface names to skip, same patterns, applied after include
    counter_bits  None      width at which the kernel's counters wrap at first: 32, 64, or None to guess

Counter width: /proc/net/dev prints each driver's counters, which are `unsigned long` (32-bit on a
32-bit kernel) unless the driver keeps 64-bit statistics. With counter_bits None the collector
guesses the width of this process (64 when sys.maxsize > 2**32, else 32). Whatever the start,
an interface moves to 64 bits as soon as one of its counters exceeds 2**32 - 1, which only a
64-bit counter can do (a 32-bit process on a 64-bit kernel, or a 64-bit driver on a 32-bit
kernel). The cost of a wrong 32-bit guess is bounded: a reset from above 3 GiB to below 1 GiB
before any counter passed 4 GiB counts as a wrap (`advance`'s wrap window).

Interfaces: one that disappears is forgotten (its raw readings, not its totals) and, when it
reappears, its totals keep counting upward from where they were. Names are whatever precedes the first ':'
(the kernel forbids ':' in names), so long names running into the first number
("verylongifname0:12345 ...") and names with '.', '-' or '@' parse as they are.

Example output (one interface):

    system.network.io{device=eth0,direction=receive}        178361262
    system.network.packets{device=eth0,direction=receive}   4374
    system.network.errors{device=eth0,direction=receive}    0
    system.network.dropped{device=eth0,direction=receive}   0
    system.network.io{device=eth0,direction=transmit}       205828
    ...

Small on a device: an interface's state is 8 slots of three flat lists (`series`, `raw`, `total`)
and a width, found by name; its four series of a direction share one attribute dict.
"""

import sys

from edge_agent.collectors import advance, lines, wanted_interface
from edge_agent.model import Series, family
from edge_wire import COUNTER

# the metrics of each direction, in series order: /proc/net/dev columns 0-3 of a direction
FAMILIES = (
    family("system.network.io", COUNTER, "By", 1, "procfs"),
    family("system.network.packets", COUNTER, "{packets}", 1, "procfs"),
    family("system.network.errors", COUNTER, "{errors}", 1, "procfs"),
    family("system.network.dropped", COUNTER, "{packets}", 1, "procfs"),
)
# the guess before any evidence: the kernel is as wide as this process
DEFAULT_BITS = 64 if sys.maxsize > 0xFFFFFFFF else 32


def scan_net_dev(text):
    """[(iface, [up to 16 ints])] in file order; lines with fewer than 12 numbers are skipped.
    `text` is the file, or a list of its lines (edge_agent.collectors.lines)."""
    rows = []
    for line in text.split("\n") if isinstance(text, str) else text:
        colon = line.find(":")
        if colon < 0:
            continue  # the two header lines
        name = line[:colon].strip()
        tokens = line[colon + 1 :].split()
        if name and len(tokens) >= 12:
            rows.append((name, [int(token) for token in tokens[:16]]))
    return rows


class NetworkCollector:
    """The network collector; `ifaces` maps an interface name to its first slot in the flat lists
    (8 a interface: receive then transmit, FAMILIES in order), or to None when it is filtered out."""

    name = "network"
    source = "procfs"

    def __init__(self, root="/proc", include=None, exclude=None, counter_bits=None):
        if counter_bits not in (None, 32, 64):
            raise ValueError("network: counter_bits must be 32, 64 or null, not %r" % (counter_bits,))
        self.root = root
        self.include = list(include or ())
        self.exclude = list(exclude or ())
        self.bits = DEFAULT_BITS if counter_bits is None else counter_bits
        self.ifaces = {}  # kept while an interface is missing
        self.series = []
        self.raw = []  # the raw counters of the last read; -1 while the interface is missing
        self.total = []  # the running totals
        self.widths = []  # one per interface: the width its counters wrap at (32 or 64)

    def add(self, name):
        """A new interface's 8 slots; out of memory half-way, nothing is added (the next read tries again)."""
        series = []
        for direction in ["receive", "transmit"]:  # a list: see procfs_cpu.STATES
            attrs = {"device": name, "direction": direction}  # shared by the direction's series
            for metric in FAMILIES:
                series.append(Series.of(metric, attrs))
        first = len(self.raw)
        try:
            self.series.extend(series)
            self.raw.extend([-1] * 8)
            self.total.extend([0] * 8)
            self.widths.append(self.bits)
        except MemoryError:  # the lists stay in step, as collect() indexes them together
            for flat in (self.series, self.raw, self.total):
                del flat[first:]
            del self.widths[first // 8:]
            raise
        self.ifaces[name] = first

    def collect(self):
        rows = scan_net_dev(lines(self.root + "/net/dev"))
        raw = self.raw
        total = self.total
        out = []
        seen = []
        for name, columns in rows:
            if name not in self.ifaces:
                if wanted_interface(name, self.include, self.exclude):
                    self.add(name)
                else:
                    self.ifaces[name] = None
            first = self.ifaces[name]
            if first is None:
                continue
            seen.append(first)
            if max(columns) > 0xFFFFFFFF:
                self.widths[first // 8] = 64  # only a 64-bit counter gets there
            bits = self.widths[first // 8]
            for i in range(8):
                value = columns[i + 4 * (i // 4)]  # receive columns 0-3, transmit 8-11
                last = raw[first + i]
                raw[first + i] = value
                # first sight counts since boot; a reappearance counts from zero again
                total[first + i] += value if last < 0 else advance(last, value, bits)
                out.append((self.series[first + i], total[first + i]))
        for first in self.ifaces.values():
            if first is not None and first not in seen:
                for i in range(first, first + 8):
                    raw[i] = -1  # forgotten, its totals kept for a reappearance
        return out

    def close(self):
        pass
