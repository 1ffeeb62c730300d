"""The parts of the metric model (edge_agent/model.py) that only CPython code uses.

Kept out of model.py, and off devices, because a device's bytecode lives in its heap: the collectors
that discover their series as they go (netlink, eBPF) and the CLI import it here.
"""

from edge_agent.model import Series
from edge_wire import GAUGE, series_key

KIND_NAMES = ("gauge", "counter", "histogram")  # by kind (edge_wire.GAUGE, COUNTER, HISTOGRAM)


class SeriesCache:
    """Hands out one Series object per key, so collectors allocate nothing on a steady tick: for
    collectors that discover their series as they go (netlink, eBPF); the /proc collectors make
    theirs once from families.

    `start_ms`: when the cumulative series this cache makes started counting (ms since the epoch),
    for a collector whose counters start with it (eBPF maps loaded at its start); BOOT (0, the
    default) for the kernel's since-boot counters. `get(..., start=BOOT)` overrides it for one
    series (a counter seeded from /proc counts since boot). Gauges have no start.
    """

    def __init__(self, source, start_ms=0):
        self.source = source
        self.start_ms = start_ms
        self.by_key = {}

    def get(self, name, kind, unit, attrs=None, scale=1, bounds=None, start=None):
        key = series_key(name, attrs)
        series = self.by_key.get(key)
        if series is None:
            series = Series(name, kind, unit, attrs, scale, bounds, self.source)
            start = self.start_ms if start is None else start
            if start and kind != GAUGE:
                series.start = start
            self.by_key[key] = series
        return series
