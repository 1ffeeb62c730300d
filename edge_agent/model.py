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


NO_ATTRS = {}  # shared by every series without attributes: never modified


class Series:
    """One stream of samples: `name`, `kind`, `unit`, `attrs`, `scale`, `bounds`, `source`, `key`, `id`.

    Small on a device (a 64 KB MicroPython heap): what series of one metric share (name, kind, unit,
    scale, source) is one tuple, `family`, that a collector makes once (`family()`) and hands to
    `Series.of(family, attrs)` for each of its series; the series itself keeps that tuple, its
    attributes and its id. `key` is built on first use and kept (the device never asks for it unless
    a sampling policy other than `fixed` runs); the other fields read through the family.
    """

    bounds = None  # set on the instance only when given: an attribute less per series (small heaps)

    def __init__(self, name, kind, unit, attrs=None, scale=1, bounds=None, source="", family=None):
        self.family = family if family is not None else (name, kind, unit, scale, source)
        self.attrs = attrs if attrs else NO_ATTRS
        if bounds is not None:
            self.bounds = bounds
        self.id = -1  # set by the SeriesTable that announces it

    @staticmethod
    def of(family, attrs=None, bounds=None):
        """A series of a family made by `family()`: nothing but the attributes is allocated."""
        return Series(None, None, None, attrs, bounds=bounds, family=family)

    @property
    def name(self):
        return self.family[0]

    @property
    def kind(self):
        return self.family[1]

    @property
    def unit(self):
        return self.family[2]

    @property
    def scale(self):
        return self.family[3]

    @property
    def source(self):
        return self.family[4]  # backend that produced it: "procfs", "netlink", "ebpf"

    @property
    def key(self):
        try:
            return self._key
        except AttributeError:
            self._key = series_key(self.family[0], self.attrs)
            return self._key

    def same(self, other):
        """True when `other` is the same series (name and attributes) as this one."""
        return other.family[0] == self.family[0] and other.attrs == self.attrs

    def __repr__(self):
        return "Series(%s)" % self.key


def family(name, kind, unit, scale=1, source=""):
    """What the series of one metric share (see Series): make it once, use it for each series."""
    return (name, kind, unit, scale, source)


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

    A series met for the first time (`id` -1) is looked up by name and attributes among the known
    ones (a collector built again after a remote change hands out new objects for the same series)
    with a scan rather than a dict of text keys: interning happens once a series, and the table
    then costs one list slot a series.
    """

    def __init__(self, epoch=0):
        self.series = []
        self.epoch = epoch
        self.changed = True

    def intern(self, series):
        if series.id >= 0 and series.id < len(self.series) and self.series[series.id] is series:
            return series.id
        for known in self.series:
            if known.same(series):
                series.id = known.id
                return known.id
        series.id = len(self.series)
        self.series.append(series)
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
