"""The parts of the metric model (edge_agent/model.py) that only CPython code uses.

Kept out of model.py, and out of the MicroPython bundle, because a device's bytecode lives in its
heap; `from edge_agent.model import SeriesCache` (or KIND_NAMES) reaches them through model.py's
`__getattr__` (PEP 562).
"""

from edge_agent.model import Series, series_key

KIND_NAMES = ("gauge", "counter", "histogram")  # by kind (model.GAUGE, COUNTER, HISTOGRAM)


class SeriesCache:
    """Hands out one Series object per key, so collectors allocate nothing on a steady tick: for
    collectors that discover their series as they go (netlink, eBPF); the /proc collectors make
    theirs once from families."""

    def __init__(self, source):
        self.source = source
        self.by_key = {}

    def get(self, name, kind, unit, attrs=None, scale=1, bounds=None):
        key = series_key(name, attrs)
        series = self.by_key.get(key)
        if series is None:
            series = Series(name, kind, unit, attrs, scale, bounds, self.source)
            self.by_key[key] = series
        return series
