"""The agent's metric model: series and the integers they carry.

A `Series` is what one stream of samples measures: an OpenTelemetry-style name, a kind, a UCUM
unit and attributes. Sample values are integers in the series' own units; `value * scale` is the
real value in `unit` (CPU time in USER_HZ ticks with scale 0.01 is seconds, utilisation in
basis points with scale 0.0001 is a ratio). Integers keep delta encoding exact and small.

A histogram sample is a tuple `(count, sum, buckets)` with cumulative integers; `bounds` are the
buckets' upper bounds in real units (there is one bucket more than bounds, for +Inf).

MicroPython-compatible: plain classes, no typing, no dataclasses.
"""

GAUGE = 0
COUNTER = 1  # cumulative and monotonic since `start` (boot time unless stated)
HISTOGRAM = 2  # cumulative since `start`
KIND_NAMES = ("gauge", "counter", "histogram")


class Series:
    bounds = None  # set on the instance only when given: an attribute less per series (small heaps)

    def __init__(self, name, kind, unit, attrs=None, scale=1, bounds=None, source=""):
        self.name = name
        self.kind = kind
        self.unit = unit
        self.attrs = attrs if attrs else {}
        self.scale = scale
        if bounds is not None:
            self.bounds = bounds
        self.source = source  # backend that produced it: "procfs", "netlink", "ebpf"
        self.key = series_key(name, self.attrs)
        self.id = -1  # set by the SeriesTable that announces it

    def __repr__(self):
        return "Series(%s)" % self.key


def series_key(name, attrs):
    """A stable text key for a name and its attributes, independent of attribute order."""
    if not attrs:
        return name
    return name + "{" + ",".join([k + "=" + str(attrs[k]) for k in sorted(attrs)]) + "}"


class SeriesCache:
    """Hands out one Series object per key, so collectors allocate nothing on a steady tick."""

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


class SeriesTable:
    """The dictionary announced in the birth message: series id -> Series, append-only.

    `epoch` names one version of the dictionary; data batches quote it so a gateway can tell
    which dictionary their ids refer to. `changed` is set whenever a series is added, and the
    agent then publishes a new birth before the next data batch.
    """

    def __init__(self, epoch=0):
        self.series = []
        self.by_key = {}
        self.epoch = epoch
        self.changed = True

    def intern(self, series):
        known = self.by_key.get(series.key)
        if known is not None:
            series.id = known.id
            return known.id
        series.id = len(self.series)
        self.series.append(series)
        self.by_key[series.key] = series
        self.changed = True
        return series.id

    def __len__(self):
        return len(self.series)


class Collector:
    """What every collector is: a name, the backend it uses, and `collect()`.

    `collect()` returns a list of (Series, value) pairs read now. It may raise OSError when its
    source is gone; the sampler counts that and carries on with the other collectors.
    """

    name = "collector"
    source = "none"

    def collect(self):
        raise NotImplementedError

    def close(self):
        pass
