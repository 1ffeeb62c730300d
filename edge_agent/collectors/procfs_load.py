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

from edge_agent.collectors.procfs import hundredths, read_text
from edge_agent.model import GAUGE, Series, family


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
    name = "load"
    source = "procfs"
    OPTIONS = {}

    def __init__(self, root="/proc"):
        self.root = root
        self.series = [
            Series.of(family("system.cpu.load_average." + window, GAUGE, "{thread}", 0.01, self.source))
            for window in ("1m", "5m", "15m")
        ]

    def collect(self):
        values = parse_loadavg(read_text(self.root, "loadavg"))
        return [(self.series[0], values[0]), (self.series[1], values[1]), (self.series[2], values[2])]

    def close(self):
        pass
