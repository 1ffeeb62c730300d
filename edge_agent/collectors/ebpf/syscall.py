"""The kernel side of eBPF from pure Python: the bpf() and perf_event_open() system calls (ctypes),
maps as objects, and tracepoint attachment.

    fd = map_create(map_type, key_size, value_size, max_entries, flags, name)
    prog = prog_load(insns, license, name)          # BpfError with the verifier's log if refused
    link = attach_tracepoint(prog, tracepoint_id)   # a perf event fd: closing it detaches
    m = Map(fd, ...); m.lookup(key) -> bytes; m.keys(); m.delete(key)

Syscall numbers per architecture (ABI of this process, not of the kernel: a 32-bit userland on a
64-bit kernel uses the 32-bit numbers). Structures are packed explicitly with u64 for every
pointer, as the kernel defines them, so the same code serves 32- and 64-bit, little- and big-endian.
"""

import ctypes
import errno
import fcntl
import os
import struct

# (bpf, perf_event_open) by ABI; checked against each architecture's <asm/unistd.h> in tests
SYSCALLS = {
    "x86_64": (321, 298),
    "i386": (357, 336),
    "arm64": (280, 241),  # the generic table (asm-generic/unistd.h), also riscv64
    "arm": (386, 364),  # EABI
    "mips-o32": (4355, 4333),
    "mips-n64": (5315, 5292),
}
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 0, 1, 2, 3, 4
BPF_PROG_LOAD, BPF_MAP_FREEZE = 5, 22
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_F_RDONLY_PROG = 1 << 7
BPF_ANY = 0
BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY = 1, 2, 5, 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
PERCPU_TYPES = (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH)
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
LOG_SIZES = (1 << 16, 1 << 20, 1 << 24)  # the verifier's log, grown while it does not fit (ENOSPC)


class BpfError(OSError):
    pass


def abi(machine=None, pointer_bits=None):
    """The SYSCALLS key for this process: "x86_64", "i386", "arm64", "arm", "mips-o32" or "mips-n64"."""
    machine = machine or os.uname().machine
    bits = pointer_bits or struct.calcsize("P") * 8
    if machine in ("x86_64", "amd64", "i386", "i486", "i586", "i686"):
        return "x86_64" if bits == 64 else "i386"
    if machine in ("aarch64", "aarch64_be", "arm64", "riscv64"):
        return "arm64" if bits == 64 else "arm"
    if machine.startswith("arm"):
        return "arm"
    if machine.startswith("mips"):
        return "mips-n64" if bits == 64 else "mips-o32"
    raise BpfError(errno.ENOSYS, "no bpf() system call number known for %s (%d-bit)" % (machine, bits))


def ioctl_numbers(machine=None):
    """(PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF): _IO('$', 0) and _IOW('$', 8, u32)."""
    machine = machine or os.uname().machine
    if machine.startswith(("mips", "ppc", "powerpc", "sparc")):  # _IOC_NONE 1, _IOC_WRITE 4, dir at bit 29
        return (1 << 29) | 0x2400, (4 << 29) | (4 << 16) | 0x2408
    return 0x2400, (1 << 30) | (4 << 16) | 0x2408


_libc = None
_numbers = None


def _syscall(which, *args):
    global _libc, _numbers
    if _libc is None:
        _numbers = SYSCALLS[abi()]
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    result = _libc.syscall(ctypes.c_long(_numbers[which]), *[ctypes.c_long(a) for a in args])
    if result < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return result


def bpf(cmd, attr):
    """bpf(cmd, attr, sizeof attr) with `attr` a ctypes buffer; returns the result (an fd or 0)."""
    return _syscall(0, cmd, ctypes.addressof(attr), ctypes.sizeof(attr))


def _name(name):
    """A kernel object name: at most 15 characters of [A-Za-z0-9_.]."""
    return "".join(c if c.isalnum() or c in "_." else "_" for c in name)[:15].encode()


def map_create(map_type, key_size, value_size, max_entries, flags=0, name=""):
    attr = ctypes.create_string_buffer(48)
    struct.pack_into("=7I16s", attr, 0, map_type, key_size, value_size, max_entries, flags, 0, 0, _name(name))
    return bpf(BPF_MAP_CREATE, attr)


def map_freeze(fd):
    attr = ctypes.create_string_buffer(8)
    struct.pack_into("=I", attr, 0, fd)
    bpf(BPF_MAP_FREEZE, attr)


def prog_load(insns, license, name, log_level=0):
    """Load tracepoint program bytecode; on refusal BpfError carries the verifier's log.

    The first try is without a log (cheap); a refusal is retried with one, as libbpf does.
    """
    code = ctypes.create_string_buffer(bytes(insns), len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    for size in (0,) + LOG_SIZES:
        log = ctypes.create_string_buffer(size) if size else None
        attr = ctypes.create_string_buffer(72)
        struct.pack_into("=IIQQIIQII16s", attr, 0, BPF_PROG_TYPE_TRACEPOINT, len(insns) // 8, ctypes.addressof(code),
                         ctypes.addressof(lic), 1 if size else 0, size, ctypes.addressof(log) if size else 0, 0, 0,
                         _name(name))
        try:
            return bpf(BPF_PROG_LOAD, attr)
        except BpfError as e:
            if size and e.errno == errno.ENOSPC and size != LOG_SIZES[-1]:
                continue  # the log did not fit: a larger one
            if size or e.errno not in (errno.EACCES, errno.EINVAL):
                e.log = log.value.decode("utf-8", "replace") if size else ""
                raise e
    raise BpfError(errno.EINVAL, "program %s was refused" % name)


def attach_tracepoint(prog_fd, tracepoint_id):
    """Run `prog_fd` at every hit of the tracepoint (all CPUs); the returned perf event fd keeps it attached."""
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("=IIQ", attr, 0, PERF_TYPE_TRACEPOINT, 64, tracepoint_id)
    fd = _syscall(1, ctypes.addressof(attr), -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    enable, set_bpf = ioctl_numbers()
    try:
        fcntl.ioctl(fd, set_bpf, prog_fd)
        fcntl.ioctl(fd, enable, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def possible_cpus(path="/sys/devices/system/cpu/possible"):
    """The number of possible CPUs: the number of values in a per-CPU map entry."""
    with open(path) as f:
        return max(cpu_ranges(f.read())) + 1


def cpu_ranges(text):
    """"0-3,5" -> {0, 1, 2, 3, 5}"""
    cpus = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


class Map:
    """A map by its fd: lookups return the raw value bytes (for a per-CPU map, one value per
    possible CPU, each padded to 8 bytes); `layout` decodes them (bpf_syscall.Layout)."""

    def __init__(self, fd, name, map_type, key_size, value_size, max_entries, key_layout=None, value_layout=None):
        self.fd, self.name, self.type = fd, name, map_type
        self.key_size, self.value_size, self.max_entries = key_size, value_size, max_entries
        self.key_layout, self.value_layout = key_layout, value_layout
        self.cpus = possible_cpus() if map_type in PERCPU_TYPES else 1
        self.stride = (value_size + 7) // 8 * 8 if map_type in PERCPU_TYPES else value_size
        self._key = ctypes.create_string_buffer(max(key_size, 1))
        self._next = ctypes.create_string_buffer(max(key_size, 1))
        self._value = ctypes.create_string_buffer(self.stride * self.cpus)
        self._attr = ctypes.create_string_buffer(32)

    def _elem(self, cmd, key, value_addr, flags=0):
        if key is not None:
            ctypes.memmove(self._key, key, self.key_size)
        struct.pack_into("=IIQQQ", self._attr, 0, self.fd, 0, ctypes.addressof(self._key) if key is not None else 0,
                         value_addr, flags)
        return bpf(cmd, self._attr)

    def lookup(self, key):
        """The value bytes for `key` (bytes of key_size), or None when absent."""
        try:
            self._elem(BPF_MAP_LOOKUP_ELEM, key, ctypes.addressof(self._value))
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return self._value.raw

    def update(self, key, value, flags=BPF_ANY):
        buf = ctypes.create_string_buffer(bytes(value), len(value))
        self._elem(BPF_MAP_UPDATE_ELEM, key, ctypes.addressof(buf), flags)

    def delete(self, key):
        try:
            self._elem(BPF_MAP_DELETE_ELEM, key, 0)
        except BpfError as e:
            if e.errno != errno.ENOENT:
                raise

    def keys(self):
        """Every key (bytes), listed before any is used, so the caller may delete while going through."""
        out = []
        key = None
        while len(out) <= self.max_entries:
            try:
                self._elem(BPF_MAP_GET_NEXT_KEY, key, ctypes.addressof(self._next))
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    break
                raise
            key = self._next.raw[: self.key_size]
            out.append(key)
        return out

    def per_cpu(self, raw):
        """The values of one per-CPU entry, decoded: [value of CPU 0, CPU 1, ...]."""
        return [self.value_layout.decode(raw, cpu * self.stride) for cpu in range(self.cpus)]

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Layout:
    """A struct read by member name, from BTF: integers, arrays of integers, char arrays.

    decode(buf, offset) -> {member: int | [int, ...] | bytes}
    """

    def __init__(self, members, size, byteorder):
        # members: [(name, offset, element size, count or None, signed, is_char)]
        self.size = size
        fmt, names, pos = [byteorder], [], 0
        for name, offset, elem, count, signed, is_char in members:
            if offset > pos:
                fmt.append("%dx" % (offset - pos))
            if is_char:
                fmt.append("%ds" % count)
                names.append((name, None))
                pos = offset + count
                continue
            letter = {1: "b", 2: "h", 4: "i", 8: "q"}[elem]
            fmt.append(("%d" % (count or 1)) + (letter if signed else letter.upper()))
            names.append((name, count))
            pos = offset + elem * (count or 1)
        self.struct = struct.Struct("".join(fmt))
        self.names = names

    def decode(self, buf, offset=0):
        values = self.struct.unpack_from(buf, offset)
        out, i = {}, 0
        for name, count in self.names:
            if count is None:
                out[name] = values[i]
                i += 1
            else:
                out[name] = list(values[i : i + count])
                i += count
        return out


def layout(btf, type_id):
    """A Layout for BTF type `type_id` (a struct of integers and arrays of them, or an integer)."""
    from edge_agent.collectors.ebpf import objects as o

    order = btf.order
    if btf.kind(type_id) == o.INT:
        return Layout([("value", 0, btf.size(type_id), None, btf.signed(type_id), False)], btf.size(type_id), order)
    members = []
    for name, member_type, bit_offset in btf.members(type_id):
        if btf.kind(member_type) == o.ARRAY:
            elem, count = btf.array(member_type)
            is_char = btf.size(elem) == 1
            members.append((name, bit_offset // 8, btf.size(elem), count, btf.signed(elem), is_char))
        elif btf.kind(member_type) in (o.INT, o.ENUM):
            members.append((name, bit_offset // 8, btf.size(member_type), None, btf.signed(member_type), False))
        else:
            raise BpfError(errno.EINVAL, "map value member %s is neither an integer nor an array of them" % name)
    return Layout(members, btf.size(type_id), order)
