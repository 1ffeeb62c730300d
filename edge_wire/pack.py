"""A small msgpack encoder, written for MicroPython and CPython alike.

The output is byte-identical to the msgpack package's `packb(obj)` with its defaults
(`use_bin_type=True`, doubles for floats, the smallest integer form). Its bounded decoder is
edge_wire/unpack.py (`unpackb`), host-only: a device only encodes.
Supported types: None, bool, int (-2^63 .. 2^64-1), float, str, bytes, list/tuple, dict.

Small on a device (bytecode lives in the heap there): three functions (`packb` is `pack_into`
without a target), and every length or integer after a head byte is written by one loop (`_put`)
rather than through `struct`.
"""

import struct

MAX_DEPTH = 32


def pack_array_header(n, out, head=0x90):
    """Append the header of an n-element array (of an n-entry map with `head` 0x80, the fixmap's) to
    `out`; its elements are packed after it."""
    if n < 16:
        out.append(head | n)
    else:  # array 16/32 (0xDC, 0xDD), map 16/32 (0xDE, 0xDF)
        wide = n > 0xFFFF
        _put(out, (0xDC if head == 0x90 else 0xDE) + wide, n, 4 if wide else 2)


def pack_into(value, out=None, depth=0):
    """Append the msgpack of `value` to `out`, a bytearray or anything with `append` and `extend`;
    without `out`, return it as bytes (`packb` is this function)."""
    if out is None:
        out = bytearray()
        pack_into(value, out)
        return bytes(out)
    if depth > MAX_DEPTH:
        raise ValueError("msgpack: nesting deeper than %d" % MAX_DEPTH)
    if value is None:
        out.append(0xC0)
    elif value is True:
        out.append(0xC3)
    elif value is False:
        out.append(0xC2)
    elif isinstance(value, int):
        if -32 <= value < 0x80:
            out.append(value & 0xFF)  # a fixint is its own byte
            return
        for k in range(4):  # the smallest of 1, 2, 4, 8 bytes: uint 0xCC.. when positive, int 0xD0.. when not
            size = 1 << k
            if 0 <= value < 1 << 8 * size:
                return _put(out, 0xCC + k, value, size)
            if -(1 << 8 * size - 1) <= value < 0:
                return _put(out, 0xD0 + k, value, size)
        raise ValueError("msgpack: integer %d does not fit 64 bits" % value)
    elif isinstance(value, float):
        out.append(0xCB)
        out.extend(struct.pack(">d", value))
    elif isinstance(value, (str, bytes, bytearray)):
        text = isinstance(value, str)
        data = value.encode() if text else value
        n = len(data)
        if text and n < 32:
            out.append(0xA0 | n)  # fixstr
        else:  # str 8/16/32 (0xD9..), bin 8/16/32 (0xC4..)
            k = 0 if n < 0x100 else 1 if n < 0x10000 else 2
            _put(out, (0xD9 if text else 0xC4) + k, n, 1 << k)
        out.extend(data)
    elif isinstance(value, (list, tuple)):
        pack_array_header(len(value), out)
        for item in value:
            pack_into(item, out, depth + 1)
    elif isinstance(value, dict):
        pack_array_header(len(value), out, 0x80)
        for key in value:
            pack_into(key, out, depth + 1)
            pack_into(value[key], out, depth + 1)
    else:
        raise ValueError("msgpack: cannot encode %s" % type(value))


packb = pack_into  # packb(value): the msgpack of `value`, as bytes


def _put(out, head, n, size):
    """`head`, then `n` big-endian in `size` bytes (two's complement when negative)."""
    out.append(head)
    for shift in range(8 * size - 8, -8, -8):
        out.append(n >> shift & 0xFF)
