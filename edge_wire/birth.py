"""The birth message (wire format v1, docs/wire-format.md): its encoder and `boot_tag`.

Birth message (retained, `<prefix>/<device>/birth`): a msgpack map announcing the device, its
boot and the series dictionary (`id -> name, unit, kind, attributes, scale, bounds, source`).

A device needs this module only when it starts and when it announces its series dictionary (at
start, and when the dictionary grows), so it is imported for those moments and released in between
(edge_agent.unload("edge_wire.birth")); importers keep none of its names in their globals.
"""

import binascii
import errno

from edge_wire import VERSION
from edge_wire.batch import CHUNK
from edge_wire.pack import pack_array_header, pack_into


def boot_tag(boot_id):
    """The 32-bit tag of a boot id that data batches carry instead of the full 36-byte UUID."""
    return binascii.crc32(boot_id.encode()) & 0xFFFFFFFF


def encode_birth(info, table):
    """The birth message: `info` holds device, boot_id, boot_time_ms, agent, platform, collectors,
    and optionally host, host_id, os_description, start_ms (docs/wire-format.md)."""
    out = bytearray()
    encode_birth_into(out, info, table)
    return bytes(out)


def encode_birth_into(out, info, table):
    """The birth message onto `out` (a bytearray, or a wire.Chunks to send it in pieces)."""
    birth = {
        "v": VERSION,
        "dev": info["device"],
        "boot": info["boot_id"],
        "bt": boot_tag(info["boot_id"]),
        "btime": info["boot_time_ms"],
        "dict": table.epoch,
        "base": table.base if getattr(table, "base", None) is not None else table.epoch,
        "agent": info.get("agent", ""),
        "os": info.get("os", ""),
        "platform": info.get("platform", ""),
        "collectors": info.get("collectors", {}),
    }
    for key in ("interval_ms", "sampling", "group"):
        if key in info:
            birth[key] = info[key]
    # who the host is and when the agent started: small additive fields (docs/wire-format.md)
    for key, name in (("host", "host"), ("hid", "host_id"), ("osd", "os_description"), ("ast", "start_ms")):
        if info.get(name):
            birth[key] = info[name]
    series = table.series
    n = getattr(table, "count", None)  # the first `count` series only (StreamedBirth); else all of them
    if n is None:
        n = len(series)
    starts = {}  # series that count from another moment than the boot: [[start_ms, id, ...], ...]
    for i in range(n):
        s = series[i]
        if s.start:
            if s.start not in starts:
                starts[s.start] = [s.start]
            starts[s.start].append(s.id)
    if starts:
        birth["st"] = list(starts.values())
    # the series go last, packed one at a time: the whole list never exists at once (small heaps)
    pack_array_header(len(birth) + 1, out, 0x80)  # a fixmap up to 15 keys, a map 16 beyond
    for key in birth:
        pack_into(key, out)
        pack_into(birth[key], out)
    pack_into("series", out)
    pack_array_header(n, out)
    for i in range(n):
        s = series[i]
        name, kind, unit, scale, source = s.family
        pack_into([s.id, name, unit, kind, s.attrs, scale, s.bounds, source], out)


class StreamedBirth:
    """A birth that a transport writes as it is encoded (`write_to`), for transports that take one
    (`streams`, transport/umqtt.py): a birth is retained and QoS 1, so it is kept until its PUBACK, and
    kept encoded it is ~75 bytes a series (6 KB for 80 series, in 512-byte pieces) at the moment a data
    batch is encoded too: the largest allocation a 64 KB heap sees. Kept as this, it is the series known
    now (how many of the table's, which only grows) and one CHUNK-byte buffer, allocated here (so that
    a heap without room fails before anything is written); `len()` is its size in bytes, counted by
    encoding it once without keeping anything. The series table only grows, and the `info` given is a
    copy: every write (the first one, and one after a reconnect) sends the same bytes."""

    base = None

    def __init__(self, info, table):
        self.info = info
        self.series = table.series
        self.count = len(table.series)
        self.epoch = table.epoch
        if getattr(table, "base", None) is not None:
            self.base = table.base
        self.buf = bytearray(CHUNK)
        count = Count()
        encode_birth_into(count, info, self)
        self.size = count.n

    def __len__(self):
        return self.size

    def write_to(self, write):
        """Encode the birth again, handing `write` a piece each time the buffer is full. `write`
        returns the bytes it took (None: all of them); fewer is a timeout (OSError)."""
        out = Flush(self.buf, write)
        encode_birth_into(out, self.info, self)
        out.flush()


class Count:
    """A byte sink (as pack_into needs) that keeps only how many bytes it was given."""

    def __init__(self):
        self.n = 0

    def extend(self, data):
        self.n += 1 if isinstance(data, int) else len(data)

    append = extend


class Flush:
    """A byte sink that fills `buf` and hands it to `write` each time it is full (and at `flush`)."""

    def __init__(self, buf, write):
        self.buf = buf
        self.write = write
        self.fill = 0

    def extend(self, data):
        buf = self.buf
        if isinstance(data, int):
            if self.fill == len(buf):
                self.flush()
            buf[self.fill] = data
            self.fill += 1
            return
        n = len(data)
        done = 0
        while done < n:
            if self.fill == len(buf):
                self.flush()
            k = min(n - done, len(buf) - self.fill)
            buf[self.fill:self.fill + k] = data if k == n else memoryview(data)[done:done + k]
            self.fill += k
            done += k

    append = extend

    def flush(self):
        if self.fill:
            n = self.write(memoryview(self.buf)[:self.fill])
            if n is not None and n < self.fill:  # MicroPython's write returns short on a timeout
                raise OSError(errno.ETIMEDOUT)
            self.fill = 0
