"""A small msgpack encoder and a bounded decoder, written for MicroPython and CPython alike.

The encoder's output is byte-identical to the msgpack package's `packb(obj)` with its defaults
(`use_bin_type=True`, doubles for floats, the smallest integer form). The decoder is strict:
every length is checked against the bytes that remain and nesting is capped, so a hostile
payload costs at most its own size in work and can never raise anything but `ValueError`.
Supported types: None, bool, int (-2^63 .. 2^64-1), float, str, bytes, list/tuple, dict.
"""

import struct

MAX_DEPTH = 32


def packb(obj):
    out = bytearray()
    _pack(obj, out, 0)
    return bytes(out)


def _pack(obj, out, depth):
    if depth > MAX_DEPTH:
        raise ValueError("msgpack: nesting deeper than %d" % MAX_DEPTH)
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        _pack_int(obj, out)
    elif isinstance(obj, float):
        out.append(0xCB)
        out.extend(struct.pack(">d", obj))
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        n = len(data)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 0x100:
            out.append(0xD9)
            out.append(n)
        elif n < 0x10000:
            out.append(0xDA)
            out.extend(struct.pack(">H", n))
        else:
            out.append(0xDB)
            out.extend(struct.pack(">I", n))
        out.extend(data)
    elif isinstance(obj, (bytes, bytearray)):
        n = len(obj)
        if n < 0x100:
            out.append(0xC4)
            out.append(n)
        elif n < 0x10000:
            out.append(0xC5)
            out.extend(struct.pack(">H", n))
        else:
            out.append(0xC6)
            out.extend(struct.pack(">I", n))
        out.extend(obj)
    elif isinstance(obj, (list, tuple)):
        _pack_len(len(obj), out, 0x90, 0xDC)
        for item in obj:
            _pack(item, out, depth + 1)
    elif isinstance(obj, dict):
        _pack_len(len(obj), out, 0x80, 0xDE)
        for key in obj:
            _pack(key, out, depth + 1)
            _pack(obj[key], out, depth + 1)
    else:
        raise ValueError("msgpack: cannot encode %s" % type(obj))


def _pack_len(n, out, fix, wide16):
    if n < 16:
        out.append(fix | n)
    elif n < 0x10000:
        out.append(wide16)
        out.extend(struct.pack(">H", n))
    else:
        out.append(wide16 + 1)
        out.extend(struct.pack(">I", n))


def _pack_int(n, out):
    if 0 <= n < 0x80:
        out.append(n)
    elif -32 <= n < 0:
        out.append(n & 0xFF)
    elif n >= 0:
        if n < 0x100:
            out.append(0xCC)
            out.append(n)
        elif n < 0x10000:
            out.append(0xCD)
            out.extend(struct.pack(">H", n))
        elif n < 0x100000000:
            out.append(0xCE)
            out.extend(struct.pack(">I", n))
        elif n < 0x10000000000000000:
            out.append(0xCF)
            out.extend(struct.pack(">Q", n))
        else:
            raise ValueError("msgpack: integer %d does not fit 64 bits" % n)
    else:
        if n >= -0x80:
            out.append(0xD0)
            out.extend(struct.pack(">b", n))
        elif n >= -0x8000:
            out.append(0xD1)
            out.extend(struct.pack(">h", n))
        elif n >= -0x80000000:
            out.append(0xD2)
            out.extend(struct.pack(">i", n))
        elif n >= -0x8000000000000000:
            out.append(0xD3)
            out.extend(struct.pack(">q", n))
        else:
            raise ValueError("msgpack: integer %d does not fit 64 bits" % n)


def unpackb(data, max_depth=MAX_DEPTH):
    """Decode exactly one msgpack object from `data`; raise ValueError on anything malformed."""
    reader = _Reader(data, max_depth)
    obj = reader.read(0)
    if reader.pos != len(data):
        raise ValueError("msgpack: %d trailing bytes" % (len(data) - reader.pos))
    return obj


# (struct format, size) of the fixed-width scalars, by first byte
_SCALARS = {
    0xCA: (">f", 4), 0xCB: (">d", 8),
    0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8),
    0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8),
}


class _Reader:
    def __init__(self, data, max_depth):
        self.data = data if isinstance(data, (bytes, bytearray)) else bytes(data)
        self.pos = 0
        self.max_depth = max_depth

    def take(self, n):
        end = self.pos + n
        if end > len(self.data):
            raise ValueError("msgpack: truncated (need %d bytes at %d)" % (n, self.pos))
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def uint(self, size):
        return struct.unpack((">B", ">H", None, ">I")[size - 1], self.take(size))[0]

    def read(self, depth):
        if depth > self.max_depth:
            raise ValueError("msgpack: nesting deeper than %d" % self.max_depth)
        b = self.take(1)[0]
        if b < 0x80:
            return b
        if b >= 0xE0:
            return b - 0x100
        if b <= 0x8F:
            return self.read_map(b & 0x0F, depth)
        if b <= 0x9F:
            return self.read_array(b & 0x0F, depth)
        if b <= 0xBF:
            return self.read_str(b & 0x1F)
        if b == 0xC0:
            return None
        if b == 0xC2:
            return False
        if b == 0xC3:
            return True
        if b in _SCALARS:
            fmt, size = _SCALARS[b]
            return struct.unpack(fmt, self.take(size))[0]
        if b in (0xC4, 0xC5, 0xC6):
            return bytes(self.take(self.uint((1, 2, 4)[b - 0xC4])))
        if b in (0xD9, 0xDA, 0xDB):
            return self.read_str(self.uint((1, 2, 4)[b - 0xD9]))
        if b in (0xDC, 0xDD):
            return self.read_array(self.uint(2 if b == 0xDC else 4), depth)
        if b in (0xDE, 0xDF):
            return self.read_map(self.uint(2 if b == 0xDE else 4), depth)
        raise ValueError("msgpack: unsupported type byte 0x%02x" % b)

    def check_count(self, n):
        # every element takes at least one byte: a count larger than what remains is a lie
        if n > len(self.data) - self.pos:
            raise ValueError("msgpack: length %d exceeds the remaining %d bytes" % (n, len(self.data) - self.pos))

    def read_str(self, n):
        try:
            return str(self.take(n), "utf-8")
        except UnicodeError:
            raise ValueError("msgpack: string is not UTF-8")

    def read_array(self, n, depth):
        self.check_count(n)
        return [self.read(depth + 1) for _ in range(n)]

    def read_map(self, n, depth):
        self.check_count(2 * n)
        result = {}
        for _ in range(n):
            key = self.read(depth + 1)
            if not isinstance(key, (str, int)):
                raise ValueError("msgpack: map key of type %s" % type(key).__name__)
            result[key] = self.read(depth + 1)
        return result
