"""Turn raw kernel counters into monotonic cumulative values, for collectors with few, changing series.

Kernel counters wrap (32-bit fields in /proc/net/dev on 32-bit kernels, 64-bit elsewhere) and
reset (an interface deleted and created again starts from zero). `Monotonic.update` keeps a
running total per key: a drop that looks like a wrap of the declared width adds the wrapped
distance; any other drop is a reset and the new raw value counts as growth since zero. The
total therefore never goes backwards and stays a count since the series' start.

The rule itself is `advance`, written once in edge_agent.collectors (the /proc network collector
keeps flat lists by series and calls it directly; a device never loads this module).
"""

from edge_agent.collectors import advance


class Monotonic:
    """Running totals by key."""

    def __init__(self):
        self.last_raw = {}
        self.total = {}

    def update(self, key, raw, bits=64):
        last = self.last_raw.get(key)
        self.last_raw[key] = raw
        if last is None:
            # first sight counts since boot; a reappearance counts from zero again
            total = self.total.get(key, 0) + raw
            self.total[key] = total
            return total
        total = self.total[key] + advance(last, raw, bits)
        self.total[key] = total
        return total

    def forget(self, key):
        """Drop a key's raw reading (its source vanished) but keep its total for a reappearance."""
        self.last_raw.pop(key, None)
