"""The bounded msgpack decoder beside edge_wire/pack.py's encoder (the gateway's and tests' side).

Strict: every length is checked against the bytes that remain and nesting is capped, so a hostile
payload costs at most its own size in work and can never raise anything but `ValueError`. Not part
of the device's modules (a device never decodes).
"""

import struct

from edge_wire.pack import MAX_DEPTH


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
