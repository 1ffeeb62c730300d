"""The birth message's encoder and `boot_tag` (wire format v1, docs/wire-format.md), apart from
edge_agent/wire.py.

A device needs them only when it starts and when it announces its series dictionary (at start, and
when the dictionary grows), so this code is loaded for those moments and may be released in between
(mpy_main.release): `wire.encode_birth`, `wire.encode_birth_into` and `wire.boot_tag` reach it.
"""

import binascii

from edge_agent.umsgpack import pack_array_header, pack_into
from edge_agent.wire import VERSION


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
    starts = {}  # series that count from another moment than the boot: [[start_ms, id, ...], ...]
    for s in table.series:
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
    pack_array_header(len(table.series), out)
    for s in table.series:
        name, kind, unit, scale, source = s.family
        pack_into([s.id, name, unit, kind, s.attrs, scale, s.bounds, source], out)
