"""A small msgpack encoder, written for MicroPython and CPython alike, and its bounded decoder.

The encoder's output is byte-identical to the msgpack package's `packb(obj)` with its defaults
(`use_bin_type=True`, doubles for floats, the smallest integer form). The decoder (`unpackb`,
in edge_agent/umsgpack_decode.py) is strict: every length is checked against the bytes that
remain and nesting is capped, so a hostile payload costs at most its own size in work and can
never raise anything but `ValueError`. A device only encodes, so the decoder is not part of the
MicroPython bundle; `umsgpack.unpackb` still works wherever the decoder module exists (it is
loaded on first use through the module's `__getattr__`, PEP 562).
Supported types: None, bool, int (-2^63 .. 2^64-1), float, str, bytes, list/tuple, dict.
"""

import struct

MAX_DEPTH = 32


def packb(obj):
    out = bytearray()
    _pack(obj, out, 0)
    return bytes(out)


def pack_into(obj, out):
    """Append the msgpack of `obj` to the bytearray `out` (packb without the copy)."""
    _pack(obj, out, 0)


def pack_array_header(n, out):
    """Append the header of an n-element array to `out`; its n elements are packed after it."""
    _pack_len(n, out, 0x90, 0xDC)


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


def __getattr__(name):
    """`unpackb` and the decoder's internals, from edge_agent/umsgpack_decode.py on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    from edge_agent import umsgpack_decode

    try:
        value = getattr(umsgpack_decode, name)
    except AttributeError:
        raise AttributeError("module 'edge_agent.umsgpack' has no attribute '%s'" % name)
    globals()[name] = value
    return value
