"""`edge-gateway run --state-dir DIR`: what a gateway killed with SIGKILL must still know.

Two things, each written before the MQTT ack that makes the broker forget the message:

- the dedupe state (gateway/decode/dedupe.py), so a batch the broker redelivers after a restart is not
  exported twice: an append-only log, one JSON line per accepted export request listing its
  batches' (device, boot, seq), flushed and fsync'd before the acks; compacted into a snapshot
  (tmp + fsync + rename) at start and whenever the log outgrows the snapshot. Appending costs the
  same for one device or 100000; rewriting the whole state per request grows with the fleet
  (figures in docs/reliability.md).
- the births, per device the kept agent runs' raw birth payloads in one file (tmp + fsync +
  rename), so a redelivered batch of an earlier run resolves even though the broker only retains
  the newest birth. Written only when a run is new or its dictionary grew: a reconnect that
  replays every retained birth writes nothing.

Layout: `lock` (flock: one gateway per directory), `dedupe.snapshot`, `dedupe.log`,
`births/<sha256(device)[:32]>.birth` (msgpack [device, [payload, ...]]).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator

import msgpack

from edge_wire.decode import Birth
from gateway.decode.dedupe import SeqTracker

log = logging.getLogger("gateway.state")

COMPACT_MIN = 10000  # log records before a compaction is considered


class StateError(Exception):
    pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # a full disk leaves no half file behind
        raise
    _fsync_dir(os.path.dirname(path))


class GatewayState:
    def __init__(self, directory: str, keep: int = 4) -> None:
        self.directory = directory
        self.keep = keep
        self.births_dir = os.path.join(directory, "births")
        os.makedirs(self.births_dir, exist_ok=True)
        self._lock_file = open(os.path.join(directory, "lock"), "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise StateError("state directory %s is in use by another gateway" % directory) from None
        self.snapshot_path = os.path.join(directory, "dedupe.snapshot")
        self.log_path = os.path.join(directory, "dedupe.log")
        self._log = None
        self._records = 0  # batches in the log since the last compaction
        self._snapshot_streams = 0
        self._dedupe_lock = threading.Lock()
        self._births: dict[str, OrderedDict[tuple[int, int], tuple[int, bytes]]] = {}
        self._births_lock = threading.Lock()

    def close(self) -> None:
        with self._dedupe_lock:
            self._close_log()
        self._lock_file.close()

    def _close_log(self) -> None:
        """Close the log; what a full disk kept in its buffer is dropped (it never was durable)."""
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()  # the file is closed even when the final flush fails
            self._log = None

    # ------------------------------------------------------------ dedupe

    def load_dedupe(self, tracker: SeqTracker) -> int:
        """Snapshot + log into `tracker`, then compact; returns how many batches the log replayed."""
        try:
            with open(self.snapshot_path) as f:
                tracker.restore(json.load(f))
        except FileNotFoundError:
            pass
        except ValueError as exc:  # written atomically, so only a foreign hand damages it
            log.warning("dedupe snapshot unreadable, ignored: %s", exc, extra={"fields": {"event": "state_damaged"}})
        replayed = 0
        try:
            with open(self.log_path) as f:
                for line in f:
                    try:
                        records = json.loads(line)
                    except ValueError:
                        continue  # a line a crash cut short: its acks were never sent
                    for device, boot, seq in records:
                        tracker.mark(device, boot, seq)
                        replayed += 1
        except FileNotFoundError:
            pass
        self.compact(tracker)
        return replayed

    def record(self, keys: list[tuple[str, int, int]], tracker: SeqTracker) -> None:
        """Append the batches of one accepted export request; durable when this returns."""
        line = json.dumps([list(k) for k in keys], separators=(",", ":")) + "\n"
        with self._dedupe_lock:
            try:
                if self._log is None:
                    self._log = open(self.log_path, "a")
                self._log.write(line)
                self._log.flush()
                os.fsync(self._log.fileno())
            except OSError:
                self._close_log()  # the next request starts on a clean line
                raise
            self._records += len(keys)
            due = self._records >= max(COMPACT_MIN, 4 * self._snapshot_streams)
        if due:
            self.compact(tracker)

    def compact(self, tracker: SeqTracker) -> None:
        """Snapshot the tracker (atomically), then start an empty log.

        A crash between the two replays the old log over the new snapshot: marks are idempotent."""
        with self._dedupe_lock:
            streams = tracker.snapshot()
            write_atomic(self.snapshot_path, json.dumps(streams, separators=(",", ":")).encode())
            self._close_log()
            self._log = open(self.log_path, "w")
            self._log.flush()
            os.fsync(self._log.fileno())
            self._records = 0
            self._snapshot_streams = len(streams)

    # ------------------------------------------------------------ births

    def _birth_path(self, device: str) -> str:
        return os.path.join(self.births_dir, hashlib.sha256(device.encode()).hexdigest()[:32] + ".birth")

    def save_birth(self, device: str, payload: bytes, birth: Birth) -> bool:
        """Keep this birth if its run is new or its dictionary grew; True when a file was written."""
        with self._births_lock:
            runs = self._births.setdefault(device, OrderedDict())
            key = (birth.boot, birth.base)
            known = runs.get(key)
            if known is not None and known[0] >= birth.dict_epoch:
                return False
            runs.pop(key, None)
            runs[key] = (birth.dict_epoch, payload)
            while len(runs) > self.keep:
                runs.popitem(last=False)
            data = msgpack.packb([device, [p for _, p in runs.values()]], use_bin_type=True)
            write_atomic(self._birth_path(device), data)
            return True

    def births(self) -> Iterator[tuple[str, bytes]]:
        """Every saved (device, birth payload), each device's runs oldest first."""
        for name in sorted(os.listdir(self.births_dir)):
            if not name.endswith(".birth"):
                continue
            try:
                with open(os.path.join(self.births_dir, name), "rb") as f:
                    device, payloads = msgpack.unpackb(f.read(), raw=False)
            except (OSError, ValueError, msgpack.ExtraData):
                continue
            for payload in payloads:
                yield device, payload

    def remember_birth(self, device: str, payload: bytes, birth: Birth) -> None:
        """Note a birth loaded from disk, so saving it again is skipped."""
        with self._births_lock:
            runs = self._births.setdefault(device, OrderedDict())
            runs.pop((birth.boot, birth.base), None)
            runs[(birth.boot, birth.base)] = (birth.dict_epoch, payload)
            while len(runs) > self.keep:
                runs.popitem(last=False)
