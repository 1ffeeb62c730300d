"""Load average, from /proc/loadavg.

Metrics (see docs/architecture.md), in hundredths of a thread, hence scale 0.01:

    system.cpu.load_average.1m    gauge  {thread}  scale 0.01  -
    system.cpu.load_average.5m    gauge  {thread}  scale 0.01  -
    system.cpu.load_average.15m   gauge  {thread}  scale 0.01  -

Options: none.

Example output for "0.21 0.16 0.06 2/90 5246":

    system.cpu.load_average.1m    21
    system.cpu.load_average.5m    16
    system.cpu.load_average.15m   6
"""

from edge_agent.model import Series, family
from edge_wire import GAUGE


def hundredths(token):
    """'215.06' -> 21506 without floats (the kernel prints two decimals; more are truncated)."""
    dot = token.find(".")
    if dot < 0:
        return int(token) * 100
    whole = int(token[:dot]) if dot else 0
    frac = (token[dot + 1 : dot + 3] + "00")[:2]
    return whole * 100 + int(frac)


def parse_loadavg(text):
    """'0.21 0.16 0.06 2/90 5246' -> (21, 16, 6, 2, 90): loads in hundredths, running, total threads."""
    tokens = text.split()
    if len(tokens) < 4:
        raise ValueError("loadavg: expected at least 4 fields, got %r" % text)
    slash = tokens[3].find("/")
    return (
        hundredths(tokens[0]),
        hundredths(tokens[1]),
        hundredths(tokens[2]),
        int(tokens[3][:slash]),
        int(tokens[3][slash + 1 :]),
    )


class LoadCollector:
    """The load collector; `series` are the 1m, 5m and 15m averages."""

    name = "load"
    source = "procfs"

    def __init__(self, root="/proc"):
        self.root = root
        self.series = []
        for window in ["1m", "5m", "15m"]:  # a list: see procfs_cpu.STATES
            metric = family("system.cpu.load_average." + window, GAUGE, "{thread}", 0.01, "procfs")
            self.series.append(Series.of(metric))

    def collect(self):
        with open(self.root + "/loadavg") as f:
            values = parse_loadavg(f.read())
        return list(zip(self.series, values))  # noqa: B905 (MicroPython: no strict=); the three loads

    def close(self):
        pass
