"""Payload -> validated batch, resolved against the device's birth dictionary.

Decoding itself is `edge_wire.decode` (the reference implementation, written once); this module
adds what only the gateway knows: which dictionary each device announced, and whether a batch's
values make sense for the series they claim to be. Every refusal is a `Rejected` carrying a short,
stable `reason` label that metrics count by.

Births are kept per device and agent run, (boot tag, base epoch), the last few runs, as plain
records whose series the whole fleet shares (gateway/decode/records.py). A run's dictionary is
append-only, so its newest birth resolves every batch quoting an epoch in [base, dict], including
batches buffered while the dictionary grew (docs/wire-format.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import msgpack

from edge_wire import COUNTER, HISTOGRAM
from edge_wire.decode import Batch, WireError, decode, parse_batch
from gateway.decode import records
from gateway.decode.records import RunRecord, SeriesRecord

MAX_PAYLOAD = 65536
MAX_BIRTH = 1 << 20  # a birth lists every series: hundreds of CPUs and interfaces make it large
MAX_ARRAY = 10000  # columns and series lists; a column holds at most 66 elements
MAX_MAP = 1024
KEEP_RUNS = 4
MAX_NEW_SERIES = 1000  # per device and minute, after its first birth
UINT64 = 1 << 64


class Rejected(Exception):
    """A payload the gateway refuses; `reason` is a metric label, `detail` is for the log."""

    def __init__(self, reason: str, detail: str = "", device: str = "",
                 key: tuple[str, int, int] | None = None) -> None:
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason
        self.detail = detail
        self.device = device
        self.key = key  # (device, boot, seq) when the header could be read: the device gets a receipt


class UnknownDictionary(Rejected):
    """The batch names a (boot, dictionary epoch) whose birth has not been seen (yet)."""


def _no_ext(code: int, data: bytes) -> object:
    raise ValueError("msgpack extension type %d is not allowed" % code)


def unpack(payload: bytes) -> object:
    """The msgpack C extension with bounded container sizes and no extension types."""
    return msgpack.unpackb(
        payload, raw=False, strict_map_key=True, ext_hook=_no_ext,
        max_array_len=MAX_ARRAY, max_map_len=MAX_MAP, max_ext_len=0,
    )


class Settled(Exception):
    """The batch `key` is already settled (exported here, or by another replica): its body was not read."""

    def __init__(self, key: tuple[str, int, int]) -> None:
        super().__init__("settled")
        self.key = key


class Resolved:
    """A valid batch with its birth; `points` is a list of (SeriesRecord, tick indexes, absolute values)."""

    __slots__ = ("batch", "birth", "points", "size", "_samples")

    def __init__(self, batch: Batch, birth: RunRecord, points: list[tuple[SeriesRecord, list[int], list]],
                 size: int) -> None:
        self.batch = batch
        self.birth = birth
        self.points = points
        self.size = size  # payload bytes
        self._samples = None

    @property
    def device(self) -> str:
        return self.batch.device

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.batch.device, self.batch.boot, self.batch.seq)

    def samples(self) -> int:
        if self._samples is None:
            self._samples = sum([len(indexes) for _, indexes, _ in self.points])
        return self._samples

    def last_tick_ms(self) -> int:
        return self.batch.ticks[-1]


class Dictionaries:
    """Per-device birth dictionaries and the strict resolution of data batches against them.

    Thread-safe: births arrive on the MQTT thread, lookups may come from others.

    Limits: `max_series` per birth, `max_devices`, and after a device's first birth, new series
    (keys that none of its kept dictionaries has) at `max_new_series` a minute, in bursts of as many;
    0 turns the rate limit off. A birth over a limit is rejected whole (`too_many_series`,
    `too_many_devices`, `series_rate`) and changes nothing; the newest birth refused for the rate is
    kept aside and admitted when a batch needs it and the allowance has refilled.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD, max_series: int = 10000,
                 max_devices: int = 100000, keep: int = KEEP_RUNS, max_birth: int = MAX_BIRTH,
                 max_new_series: int = MAX_NEW_SERIES, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_payload = max_payload
        self.max_birth = max_birth
        self.max_series = max_series
        self.max_devices = max_devices
        self.max_new_series = max_new_series
        self.keep = keep
        self.clock = clock
        self._births: dict[str, list[RunRecord]] = {}  # device -> its kept runs' births, oldest first
        self._allowance: dict[str, tuple[float, float]] = {}  # device -> (new series allowed, when)
        self._pending: dict[str, RunRecord] = {}  # device -> its newest birth refused for series_rate
        self._lock = threading.Lock()

    # ------------------------------------------------------------ births

    def add_birth(self, topic_device: str, payload: bytes) -> RunRecord:
        try:
            birth = records.parse_birth(decode(payload, unpack, self.max_birth), self.max_series)
        except WireError as exc:
            raise Rejected(exc.reason, exc.detail, topic_device)
        if birth.device != topic_device:
            raise Rejected("device_mismatch", "birth for %r on the topic of %r" % (birth.device, topic_device), topic_device)
        for sid, series in birth.series.items():
            if series.kind == HISTOGRAM and not _increasing(series.bounds):
                raise Rejected("bad_birth", "series %d: bounds must be finite and increasing" % sid, topic_device)
        with self._lock:
            runs = self._births.get(birth.device)
            if runs is None:
                if len(self._births) >= self.max_devices:
                    raise Rejected("too_many_devices", "limit %d" % self.max_devices, topic_device)
                runs = self._births[birth.device] = []
            try:
                self._admit_new_series(birth, runs)
            except Rejected:
                self._pending[birth.device] = birth  # retried when a batch needs it (see resolve)
                raise
            self._pending.pop(birth.device, None)
            self._store(runs, birth)
        return birth

    def _store(self, runs: list[RunRecord], birth: RunRecord) -> None:
        key = (birth.boot, birth.base)
        for i, known in enumerate(runs):
            if (known.boot, known.base) == key:
                del runs[i]
                # within one run the dictionary only grows: a late, older birth adds nothing
                if known.dict_epoch > birth.dict_epoch:
                    birth = known
                break
        runs.append(birth)
        if len(runs) > self.keep:
            del runs[:len(runs) - self.keep]

    def _admit_new_series(self, birth: RunRecord, runs: list[RunRecord]) -> None:
        """Charge the birth's new series to its device's allowance, a token bucket of `max_new_series`
        refilled per minute; a birth with more new series than that passes only on a full bucket and
        leaves it in debt, so a burst is paid for by waiting. Raises `series_rate` when short."""
        if self.max_new_series <= 0 or not runs:  # a device's first birth is bounded by max_series alone
            return
        known = set()
        for run in runs:
            known.update(s.key for s in run.series.values())
        new = sum(1 for s in birth.series.values() if s.key not in known)
        now = self.clock()
        rate = self.max_new_series
        allowed, then = self._allowance.get(birth.device, (rate, now))
        allowed = min(rate, allowed + (now - then) * rate / 60.0)
        if new > allowed and allowed < rate:
            self._allowance[birth.device] = (allowed, now)
            raise Rejected("series_rate", "%d new series, %d allowed now (limit %d a minute)"
                           % (new, allowed, self.max_new_series), birth.device)
        self._allowance[birth.device] = (allowed - new, now)

    def latest(self, device: str) -> RunRecord | None:
        with self._lock:
            runs = self._births.get(device)
            return runs[-1] if runs else None

    def devices(self) -> list[str]:
        with self._lock:
            return list(self._births)

    def _birth(self, device: str, boot: int, epoch: int) -> RunRecord | None:
        """The birth of the agent run whose append-only dictionary covers `epoch`: base <= epoch <= dict."""
        with self._lock:
            for birth in self._births.get(device) or ():
                if birth.boot == boot and birth.base <= epoch <= birth.dict_epoch:
                    return birth
        return None

    def forget(self, device: str) -> bool:
        """Drop everything known about a device (gone for longer than the gateway keeps devices)."""
        with self._lock:
            self._allowance.pop(device, None)
            self._pending.pop(device, None)
            return self._births.pop(device, None) is not None

    def _admit_pending(self, device: str, boot: int, epoch: int) -> RunRecord | None:
        """A birth refused for series_rate that a batch needs: admitted once the allowance has refilled."""
        with self._lock:
            pending = self._pending.get(device)
            if pending is None or pending.boot != boot or not pending.base <= epoch <= pending.dict_epoch:
                return None
            try:
                self._admit_new_series(pending, self._births[device])
            except Rejected:
                return None
            del self._pending[device]
            self._store(self._births[device], pending)
        return self._birth(device, boot, epoch)

    # ------------------------------------------------------------ data

    def resolve(self, topic_device: str, payload: bytes,
                settled: Callable[[tuple[str, int, int]], bool] | None = None) -> Resolved:
        """`settled(key)`, asked once the header is read and before the body is: True raises `Settled`
        (a batch exported before costs its header only, not the whole decode)."""
        key = None
        try:
            obj = decode(payload, unpack, self.max_payload)
            key = _header_key(obj, topic_device)
            if key is not None and settled is not None and settled(key):
                raise Settled(key)
            batch = parse_batch(obj, unpack)
        except WireError as exc:
            raise Rejected(exc.reason, exc.detail, topic_device, key)
        if batch.device != topic_device:
            raise Rejected("device_mismatch", "header says %r" % batch.device, topic_device)
        key = (batch.device, batch.boot, batch.seq)
        birth = self._birth(batch.device, batch.boot, batch.dict_epoch)
        if birth is None and self._pending:
            birth = self._admit_pending(batch.device, batch.boot, batch.dict_epoch)
        if birth is None:
            raise UnknownDictionary("unknown_dict", "boot %08x dictionary %d" % (batch.boot, batch.dict_epoch),
                                    topic_device, key)
        points = []
        table = birth.series.table()
        dense = type(table) is tuple
        size = len(table)
        for sid, indexes, values in batch.columns:  # sid is an unsigned int (parse_batch checked)
            series = (table[sid] if sid < size else None) if dense else table.get(sid)
            if series is None:
                raise Rejected("unknown_series", "series id %d" % sid, topic_device, key)
            kind = series.kind
            # the common cases inline (a gauge, a counter that rises); _check_values says what is wrong
            if kind == HISTOGRAM or type(values[0]) is not int or (
                    kind == COUNTER and (values[0] < 0 or values != sorted(values))):
                try:
                    _check_values(series, values)
                except Rejected as exc:
                    exc.device, exc.key = topic_device, key
                    raise
            points.append((series, indexes, values))
        return Resolved(batch, birth, points, len(payload))


def _header_key(obj: object, topic_device: str) -> tuple[str, int, int] | None:
    """(device, boot, seq) of a batch whose header fields can be read, even if the rest is bad."""
    if isinstance(obj, list) and len(obj) >= 5 and obj[2] == topic_device:
        boot, seq = obj[3], obj[4]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (boot, seq)) and 0 <= boot < 1 << 32 \
                and 0 <= seq < UINT64:
            return topic_device, boot, seq
    return None


def _increasing(bounds: object) -> bool:
    if not isinstance(bounds, list):
        return False
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds):
        return False
    return all(a < b for a, b in zip(bounds, bounds[1:], strict=False))


def _check_values(series: SeriesRecord, values: list) -> None:
    name = series.key
    if series.kind == HISTOGRAM:
        width = len(series.bounds) + 3  # count, sum, one bucket per bound and +Inf
        prev = None
        for value in values:
            if not isinstance(value, list) or len(value) != width:
                raise Rejected("histogram_shape", "%s: %d values expected" % (name, width))
            count, buckets = value[0], value[2:]
            if not all(0 <= x < UINT64 for x in buckets) or sum(buckets) != count:
                raise Rejected("histogram_shape", "%s: buckets do not add up to count %r" % (name, count))
            if prev is not None and count < prev:
                raise Rejected("counter_backwards", "%s: count %d after %d" % (name, count, prev))
            prev = count
        return
    if isinstance(values[0], list):  # the decoder lets no column mix histograms and integers
        raise Rejected("bad_value", "%s: histogram value for a scalar series" % name)
    if series.kind == COUNTER and (values[0] < 0 or values != sorted(values)):
        if values[0] < 0:
            raise Rejected("bad_value", "%s: negative counter %d" % (name, values[0]))
        for a, b in zip(values, values[1:], strict=False):
            if b < a:
                raise Rejected("counter_backwards", "%s: %d after %d" % (name, b, a))
