"""Network traffic per interface, from /proc/net/dev.

Metrics (see docs/architecture.md), cumulative counters, scale 1:

    system.network.io        counter  By        device=<iface>, direction=receive|transmit
    system.network.packets   counter  {packet}  device, direction
    system.network.errors    counter  {error}   device, direction
    system.network.dropped   counter  {packet}  device, direction

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
before any counter passed 4 GiB counts as a wrap (counters.Monotonic's wrap window).

Interfaces: one that disappears is forgotten (counters.Monotonic.forget) and, when it reappears,
its totals keep counting upward from where they were. Names are whatever precedes the first ':'
(the kernel forbids ':' in names), so long names running into the first number
("verylongifname0:12345 ...") and names with '.', '-' or '@' parse as they are.

Example output (one interface):

    system.network.io{device=eth0,direction=receive}        178361262
    system.network.packets{device=eth0,direction=receive}   4374
    system.network.errors{device=eth0,direction=receive}    0
    system.network.dropped{device=eth0,direction=receive}   0
    system.network.io{device=eth0,direction=transmit}       205828
    ...
"""

import sys

from edge_agent.collectors.procfs import read_text
from edge_agent.counters import advance
from edge_agent.model import COUNTER, Series, family

# metric, unit, column within a direction, parse_net_dev field suffix
FIELDS = (
    ("system.network.io", "By", 0, "bytes"),
    ("system.network.packets", "{packet}", 1, "packets"),
    ("system.network.errors", "{error}", 2, "errs"),
    ("system.network.dropped", "{packet}", 3, "drop"),
)
FAMILIES = tuple([family(metric, COUNTER, unit, 1, "procfs") for metric, unit, _, _ in FIELDS])
# direction attribute, first column of that direction, parse_net_dev field prefix
DIRECTIONS = (("receive", 0, "rx_"), ("transmit", 8, "tx_"))
NCOLUMNS = 16
MAX32 = 0xFFFFFFFF


def default_counter_bits(maxsize=sys.maxsize):
    """The guess before any evidence: the kernel is as wide as this process."""
    return 64 if maxsize > MAX32 else 32


def scan_net_dev(text):
    """[(iface, [16 ints])] in file order; lines with fewer than 12 numbers are skipped."""
    rows = []
    for line in text.split("\n"):
        colon = line.find(":")
        if colon < 0:
            continue  # the two header lines
        name = line[:colon].strip()
        tokens = line[colon + 1 :].split()
        if not name or len(tokens) < 12:
            continue
        columns = [0] * NCOLUMNS
        for i in range(min(len(tokens), NCOLUMNS)):
            columns[i] = int(tokens[i])
        rows.append((name, columns))
    return rows


def parse_net_dev(text):
    """/proc/net/dev -> {iface: {"rx_bytes", "rx_packets", "rx_errs", "rx_drop", "tx_bytes", ...}}."""
    result = {}
    for name, columns in scan_net_dev(text):
        fields = {}
        for _, first, prefix in DIRECTIONS:
            for _, _, column, suffix in FIELDS:
                fields[prefix + suffix] = columns[first + column]
        result[name] = fields
    return result


def _matches(name, patterns):
    for pattern in patterns:
        if pattern == name or (pattern.endswith("*") and name.startswith(pattern[:-1])):
            return True
    return False


class _Iface:
    """One interface's series (directions x FIELDS), their columns, and (lists by series) the raw
    counters of the last read and the running totals (as counters.Monotonic keeps them)."""

    def __init__(self, name, bits):
        self.series = []
        self.columns = []
        for direction, first, _ in DIRECTIONS:
            attrs = {"device": name, "direction": direction}  # shared by the direction's four series
            for i in range(len(FIELDS)):
                self.series.append(Series.of(FAMILIES[i], attrs))
                self.columns.append(first + FIELDS[i][2])
        self.raw = [-1] * len(self.series)  # -1: not read since it (re)appeared
        self.total = [0] * len(self.series)
        self.bits = bits
        self.present = False

    def update(self, i, raw):
        last = self.raw[i]
        self.raw[i] = raw
        # first sight counts since boot; a reappearance counts from zero again
        self.total[i] += raw if last < 0 else advance(last, raw, self.bits)
        return self.total[i]


class NetworkCollector:
    name = "network"
    source = "procfs"
    OPTIONS = {"include": [], "exclude": [], "counter_bits": None}

    def __init__(self, root="/proc", include=None, exclude=None, counter_bits=None):
        if counter_bits not in (None, 32, 64):
            raise ValueError("network: counter_bits must be 32, 64 or null, not %r" % (counter_bits,))
        self.root = root
        self.include = list(include or ())
        self.exclude = list(exclude or ())
        self.bits = default_counter_bits() if counter_bits is None else counter_bits
        self.ifaces = {}  # name -> _Iface, or None when filtered out

    def _iface(self, name):
        if name in self.ifaces:
            return self.ifaces[name]
        wanted = (not self.include or _matches(name, self.include)) and not _matches(name, self.exclude)
        iface = _Iface(name, self.bits) if wanted else None
        self.ifaces[name] = iface
        return iface

    def collect(self):
        rows = scan_net_dev(read_text(self.root, "net/dev"))
        out = []
        seen = {}
        for name, columns in rows:
            iface = self._iface(name)
            if iface is None:
                continue
            seen[name] = True
            iface.present = True
            if iface.bits == 32 and max(columns) > MAX32:
                iface.bits = 64
            for i in range(len(iface.series)):
                out.append((iface.series[i], iface.update(i, columns[iface.columns[i]])))
        for name in self.ifaces:
            iface = self.ifaces[name]
            if iface is not None and iface.present and name not in seen:
                iface.present = False
                for i in range(len(iface.raw)):
                    iface.raw[i] = -1  # forgotten, its totals kept for a reappearance
        return out

    def close(self):
        pass
