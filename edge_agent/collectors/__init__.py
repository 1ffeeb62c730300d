"""The collectors: their one vocabulary of names, and what every backend shares.

- COLLECTORS and BACKENDS: the names a config, a command, the sampler and the agent use (one list);
- `wanted(name, include, exclude)`: the interface filter of every network collector;
- `advance(last, raw, bits)`: the one rule that keeps a counter from going backwards (wraps, resets);
- `lines(path, prefix)`: the reader the /proc collectors share.

The backends are sub-packages (procfs/, netlink/, ebpf/; collectors.select picks one per collector).

Read whole, a /proc file is a new string of its size every tick (1-2 KB for /proc/stat or
/proc/meminfo), grown by reallocation while it is read: on a small MicroPython heap those blocks,
made and dropped every tick, break the free memory into pieces, and then the read itself no longer
fits (seen at 64K: meminfo reads failing with 23 KB free, in pieces of 1.5 KB at most). `lines`
reads through one buffer reserved once (`reserve`, at start-up) and makes only the lines asked for,
each a small string. Part of the MicroPython-compatible core.
"""

COLLECTORS = ("cpu", "memory", "load", "network", "system")
BACKENDS = ("auto", "procfs", "netlink", "ebpf")  # auto: the best the host allows (collectors.select)

SIZE = 1024  # the buffer; a longer line (the intr line of /proc/stat) is skipped, never returned
BUFFER = []  # [bytearray(SIZE)] once reserved


def reserve():
    """The shared read buffer, allocated on the first call (a device calls it at start-up)."""
    if not BUFFER:
        BUFFER.append(bytearray(SIZE))
    return BUFFER[0]


def lines(path, prefixes=None):
    """The lines of the file at `path` as strings without their newline, in file order; with
    `prefixes` (a list of bytes) only the lines that start with one of them: each line made costs
    two small blocks of heap. Lines longer than SIZE are skipped."""
    buf = reserve()
    view = memoryview(buf)
    out = []
    with open(path, "rb") as f:
        have = 0  # bytes in buf; a line begins at buf[0]
        skip = False  # inside a line being dropped (not asked for, or longer than the buffer)
        while True:
            n = f.readinto(view[have:])
            have += n or 0
            start = 0
            while True:
                end = buf.find(b"\n", start, have)
                if end < 0:
                    if not n and start < have and not skip:  # the last line has no newline
                        end = have
                    else:
                        break
                if not skip and wanted(buf, start, prefixes):
                    out.append(str(view[start:end], "utf-8"))
                skip = False
                start = end + 1
            if not n:
                return out
            if skip or (start == 0 and have == SIZE) or unwanted(buf, start, have, prefixes):
                skip = True  # a line not asked for, or too long: drop it up to its end, uncopied
                have = 0
            elif start:  # the unfinished line to the front (a copy of it, as the two overlap; a short one)
                buf[0:have - start] = buf[start:have]
                have -= start


def wanted_interface(name, include, exclude):
    """An interface the network collectors report: in `include` (all when empty) and not in `exclude`;
    a pattern "name*" matches a prefix."""
    return (not include or _matches(name, include)) and not _matches(name, exclude)


def _matches(name, patterns):
    for pattern in patterns:
        if pattern == name or (pattern.endswith("*") and name.startswith(pattern[:-1])):
            return True
    return False


def advance(last, raw, bits=64):
    """How much a counter grew from its previous raw reading `last` to `raw` (a wrap or a reset).

    A drop that looks like a wrap of the declared width (from the top quarter of the range to the
    bottom quarter) adds the wrapped distance; any other drop is a reset, and the new raw value is
    growth since zero. The one rule for every collector: the /proc network collector calls it on its
    flat lists, counters.Monotonic (netlink) by key.
    """
    if raw >= last:
        return raw - last
    if (1 << bits) - (1 << (bits - 2)) <= last < (1 << bits) and raw < (1 << (bits - 2)):
        return (1 << bits) - last + raw  # wrapped at 2**bits
    return raw  # reset: counting again from zero


def wanted(buf, start, prefixes):
    if prefixes is None:
        return True
    for prefix in prefixes:
        if buf.startswith(prefix, start):
            return True
    return False


def unwanted(buf, start, have, prefixes):
    """True when the unfinished line at buf[start:have] already shows it is not one of `prefixes`."""
    if prefixes is None:
        return False
    for prefix in prefixes:
        if have - start < len(prefix) or buf.startswith(prefix, start):
            return False
    return True
