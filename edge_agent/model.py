"""The agent's metric model: series and the integers they carry.

A `Series` is what one stream of samples measures: an OpenTelemetry-style name, a kind (GAUGE,
COUNTER or HISTOGRAM: the protocol's, in edge_wire), a UCUM unit and attributes. Sample values are
integers in the series' own units; `value * scale` is the real value in `unit` (CPU time in USER_HZ
ticks with scale 0.01 is seconds, utilisation in basis points with scale 0.0001 is a ratio).
Integers keep delta encoding exact and small.

A histogram sample is a tuple `(count, sum, buckets)` with cumulative integers; `bounds` are the
buckets' upper bounds in real units (there is one bucket more than bounds, for +Inf).

The collector contract (edge_agent/collectors): a collector has a `name`, the `source` (backend) it
reads, `collect()`, which returns a list of (Series, value) pairs read now and may raise OSError when
its source is gone (the sampler counts that and carries on with the other collectors), and `close()`.

MicroPython-compatible: plain classes, no typing, no dataclasses. Small on a device, where bytecode
lives in the heap: what only CPython code uses (`SeriesCache`, `KIND_NAMES`) is
edge_agent/collectors/seriescache.py, imported from there (this module imports nothing of it).
"""

from edge_wire import series_key

BOOT = 0  # a series' `start` when it counts since the kernel booted (the birth's `btime`)


NO_ATTRS = {}  # shared by every series without attributes: never modified


class Series:
    """One stream of samples: `name`, `kind`, `unit`, `attrs`, `scale`, `bounds`, `source`, `key`, `id`.

    Small on a device (a 64 KB MicroPython heap): what series of one metric share (name, kind, unit,
    scale, source) is one tuple, `family`, that a collector makes once (`family()`) and
    hands to `Series.of(family, attrs)` for each of its series; the series itself keeps that tuple,
    its attributes and its id (96 bytes on a 64-bit MicroPython). The family's fields are read
    through it by `__getattr__` (one method instead of a property each); `key` is built on first
    use and kept (the device never asks for it unless a sampling policy other than `fixed` runs).
    """

    bounds = None  # set on the instance only when given: an attribute less per series (small heaps)
    # when a cumulative series started counting: BOOT (the kernel's counters), or ms since the epoch
    # for one that counts from its collector's start (eBPF maps); set on the instance only then.
    # A counter that starts again is a new series (another start, so another id in the birth).
    start = BOOT

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

    def __getattr__(self, name):
        """`name`, `kind`, `unit`, `scale` and `source` from the family; `key` made once and kept."""
        if name == "key":
            self.key = series_key(self.family[0], self.attrs)
            return self.key
        fields = ("name", "kind", "unit", "scale", "source")  # the family's, in order
        if name in fields:
            return self.family[fields.index(name)]
        raise AttributeError(name)


def family(name, kind, unit, scale=1, source=""):
    """What the series of one metric share (see Series): make it once, use it for each series."""
    return (name, kind, unit, scale, source)


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
        known = self.series
        if 0 <= series.id < len(known) and known[series.id] is series:
            return series.id
        for other in known:  # the same series (name, attributes, start) as another object?
            if other.family[0] == series.family[0] and other.attrs == series.attrs and other.start == series.start:
                series.id = other.id
                return other.id
        series.id = len(known)
        known.extend([series])  # a list grows by what it is extended with, not twice its size
        self.changed = True
        return series.id

    def __len__(self):
        return len(self.series)
