"""Births as plain records, small enough to keep for a whole fleet.

A gateway keeps the dictionary of every device it serves, so what it keeps per device is what it
costs per device. The wire decoder (`edge_wire.decode.parse_birth`) validates a birth and makes
each series through the `record` it is given; this module gives it the fleet's interned records:

- `SeriesRecord`: what one series is (name, kind, unit, attributes, scale, bounds, source, start),
  read as plain slots. Records are interned across the fleet: a thousand devices of one kind share
  one record per series, and one `otlp` slot where an exporter caches what it derives from it
  (serialised attributes, say). Interning is weak: a record no device uses any more goes away.
- `RunRecord`: one agent run's birth (boot, epochs, who the device is, its series by id), with the
  strings that repeat across a fleet interned and the series in `SeriesIds`, a tuple by id.

Imports nothing of the gateway: the protocol side of the gateway.
"""

from __future__ import annotations

import sys
import threading
import weakref

from edge_wire import decode as wire_decode
from edge_wire import series_key

_intern = sys.intern


def intern_text(value: object) -> object:
    """Strings interned (the same device id, agent version or OS in every message and record)."""
    return _intern(value) if type(value) is str else value


class SeriesRecord:
    """One series as the gateway reads it. Shared by every device that announces the same series:
    never modify one (the `otlp` slot is a cache whose content depends only on the other slots)."""

    __slots__ = ("name", "kind", "unit", "attrs", "scale", "bounds", "source", "start", "key", "otlp",
                 "__weakref__")

    def __init__(self, name: str, kind: int, unit: str, attrs: dict, scale: int | float, bounds: list | None,
                 source: str, start: int) -> None:
        self.name = name
        self.kind = kind
        self.unit = unit
        self.attrs = attrs
        self.scale = scale
        self.bounds = bounds
        self.source = source
        self.start = start  # 0: counts since boot (the birth's btime); else ms since the epoch
        self.key = series_key(name, attrs)
        self.otlp = None

    def __repr__(self) -> str:
        return "SeriesRecord(%s)" % self.key


class SeriesIds:
    """Series id -> SeriesRecord, as a tuple indexed by id (agents number their series 0, 1, 2 …);
    a dict when the ids are sparse. The read-only part of a dict's interface that callers use."""

    __slots__ = ("_by_id",)

    def __init__(self, by_id: dict[int, SeriesRecord]) -> None:
        top = max(by_id, default=-1)
        if top < 2 * len(by_id) + 16:
            dense: list = [None] * (top + 1)
            for sid, record in by_id.items():
                dense[sid] = record
            self._by_id: tuple | dict = tuple(dense)
        else:
            self._by_id = dict(by_id)

    def table(self) -> tuple | dict:
        """The id -> record table itself (a tuple with None holes, or a dict), for per-column loops."""
        return self._by_id

    def get(self, sid: int, default: SeriesRecord | None = None) -> SeriesRecord | None:
        by_id = self._by_id
        if type(by_id) is tuple:
            if 0 <= sid < len(by_id):
                found = by_id[sid]
                return default if found is None else found
            return default
        return by_id.get(sid, default)

    def items(self) -> list[tuple[int, SeriesRecord]]:
        if type(self._by_id) is tuple:
            return [(sid, r) for sid, r in enumerate(self._by_id) if r is not None]
        return list(self._by_id.items())

    def values(self) -> list[SeriesRecord]:
        return [r for _, r in self.items()]

    def __getitem__(self, sid: int) -> SeriesRecord:
        found = self.get(sid)
        if found is None:
            raise KeyError(sid)
        return found

    def __contains__(self, sid: object) -> bool:
        return isinstance(sid, int) and self.get(sid) is not None

    def __iter__(self):
        return iter([sid for sid, _ in self.items()])

    def __len__(self) -> int:
        by_id = self._by_id
        return len(by_id) - by_id.count(None) if type(by_id) is tuple else len(by_id)


class RunRecord:
    """One agent run's birth: `series` is a SeriesIds, `names` its metric names; `otlp` is an exporter's
    cache (the resource)."""

    __slots__ = ("device", "boot_id", "boot", "boot_time_ms", "dict_epoch", "base", "agent", "os", "platform",
                 "collectors", "host", "host_id", "os_description", "agent_start_ms", "interval_ms", "series",
                 "names", "otlp")

    def __init__(self, obj: dict, series: SeriesIds) -> None:
        self.device = _intern(obj["dev"])
        self.boot_id = _intern(obj["boot"])
        self.boot = obj["bt"]
        self.boot_time_ms = obj["btime"]
        self.dict_epoch = obj["dict"]
        # the dictionary is append-only from epoch `base` on: it also resolves batches quoting any
        # epoch in [base, dict] (batches buffered while the dictionary grew)
        self.base = obj.get("base", obj["dict"])
        self.agent = _intern(obj.get("agent", ""))
        self.os = _intern(obj.get("os", ""))
        self.platform = _intern(obj.get("platform", ""))
        self.collectors = _shared_map(obj.get("collectors", {}))
        self.host = _intern(obj.get("host", ""))
        self.host_id = obj.get("hid", "")
        self.os_description = _intern(obj.get("osd", ""))
        self.agent_start_ms = obj.get("ast", 0)  # 0: an agent that does not say
        self.interval_ms = obj.get("interval_ms")  # as the birth has it (not validated: checked where used)
        self.series = series
        self.names = _shared_names(frozenset([s.name for s in series.values()]))  # the metrics it has
        self.otlp = None

    def __repr__(self) -> str:
        return "RunRecord(%s boot=%08x dict=%d series=%d)" % (self.device, self.boot, self.dict_epoch, len(self.series))


# ---------------------------------------------------------------- interning

_series: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_maps: dict[tuple, dict] = {}  # small maps repeated across a fleet (collectors): never many distinct ones
_lock = threading.Lock()
MAX_SHARED_MAPS = 4096


def _shared_map(value: object) -> object:
    """One dict object for the maps of str -> str that repeat across a fleet (the collectors)."""
    if not isinstance(value, dict) or not all(type(k) is str and type(v) is str for k, v in value.items()):
        return value
    key = tuple(sorted(value.items()))
    with _lock:
        known = _maps.get(key)
        if known is None:
            if len(_maps) >= MAX_SHARED_MAPS:
                return value
            known = _maps[key] = {_intern(k): _intern(v) for k, v in value.items()}
        return known


_names: dict[frozenset, frozenset] = {}


def _shared_names(names: frozenset) -> frozenset:
    """One object for each distinct set of metric names (devices of a kind announce the same)."""
    with _lock:
        if len(_names) >= MAX_SHARED_MAPS:
            return names
        return _names.setdefault(names, names)


def series_record(name: str, kind: int, unit: str, attrs: dict, scale: int | float, bounds: list | None,
                  source: str, start: int) -> SeriesRecord:
    """The fleet's one record for this series (made when no device has it yet)."""
    attrs_key = tuple(sorted(attrs.items()))
    key = (name, kind, unit, attrs_key, scale, type(scale), tuple(bounds) if bounds else bounds, source, start)
    with _lock:
        record = _series.get(key)
        if record is None:
            attrs = {_intern(k): intern_text(v) for k, v in attrs_key}
            record = SeriesRecord(_intern(name), kind, _intern(unit), attrs, scale, list(bounds) if bounds else bounds,
                                  _intern(source), start)
            _series[key] = record
    return record


def shared_series() -> int:
    """How many distinct series records the fleet holds (they are shared between devices)."""
    return len(_series)


# ---------------------------------------------------------------- births


def parse_birth(obj: object, max_series: int = 10000) -> RunRecord:
    """A decoded birth map -> RunRecord, validated by the reference decoder (`parse_birth`:
    WireError with a reason for anything malformed)."""
    return RunRecord(obj, SeriesIds(wire_decode.parse_birth(obj, max_series, series_record).series))
