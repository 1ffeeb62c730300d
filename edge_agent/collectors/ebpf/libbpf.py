"""The same compiled objects loaded by Debian's libbpf (libbpf.so.1, through ctypes): a second loader.

    from edge_agent.collectors.ebpf.libbpf import load
    program = NetProgram(loader=load)      # bpf_loader's readers over libbpf's maps

For development and cross-checks only, never on a device: libbpf resolves the CO-RE relocations
against the kernel's BTF (/sys/kernel/btf/vmlinux), where our loader uses tracefs, so the two
agreeing on the same object checks our relocation, map and attach code against libbpf's.
Selected in an agent with EDGE_AGENT_BPF_LOADER=libbpf. The map layouts still come from the
object's BTF as our loader reads it (bpf_object.py); the maps themselves are libbpf's.
"""

import ctypes
import ctypes.util
import os
import time

from edge_agent.collectors.ebpf import syscall as sys_
from edge_agent.collectors.ebpf.check import object_data
from edge_agent.collectors.ebpf.loader import Loaded, LoadError
from edge_agent.collectors.ebpf.objects import BpfObject

_lib = None
_printer = None
# expected: the flavor of a field whose size does not match this kernel is poisoned in dead code
# (cpu.bpf.c, prev_state); libbpf warns about it at every load
EXPECTED = b"accesses field incorrectly"


def _quiet(lib):
    """Route libbpf's messages through a filter: warnings only, without the expected one."""
    global _printer
    libc = ctypes.CDLL(None)
    buf = ctypes.create_string_buffer(1024)

    def printer(level, fmt, args):
        if level == 0:  # LIBBPF_WARN
            libc.vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(args))
            if EXPECTED not in buf.value:
                os.write(2, buf.value)
        return 0

    _printer = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(printer)
    lib.libbpf_set_print.restype = ctypes.c_void_p
    lib.libbpf_set_print(_printer)


def libbpf():
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        lib = ctypes.CDLL(name, use_errno=True)
        p = ctypes.c_void_p
        for fn, restype, argtypes in (
            ("bpf_object__open_mem", p, [p, ctypes.c_size_t, p]),
            ("bpf_object__find_map_by_name", p, [p, ctypes.c_char_p]),
            ("bpf_object__next_map", p, [p, p]),
            ("bpf_object__next_program", p, [p, p]),
            ("bpf_object__load", ctypes.c_int, [p]),
            ("bpf_object__close", None, [p]),
            ("bpf_map__name", ctypes.c_char_p, [p]),
            ("bpf_map__fd", ctypes.c_int, [p]),
            ("bpf_map__set_max_entries", ctypes.c_int, [p, ctypes.c_uint32]),
            ("bpf_map__set_initial_value", ctypes.c_int, [p, p, ctypes.c_size_t]),
            ("bpf_program__name", ctypes.c_char_p, [p]),
            ("bpf_program__fd", ctypes.c_int, [p]),
            ("bpf_program__attach", p, [p]),
            ("bpf_link__destroy", ctypes.c_int, [p]),
        ):
            f = getattr(lib, fn)
            f.restype, f.argtypes = restype, argtypes
        _quiet(lib)
        _lib = lib
    return _lib


class LibbpfLoaded(Loaded):
    """Loaded by libbpf: maps are bpf_syscall.Map over duplicates of libbpf's fds."""

    def __init__(self, name):
        Loaded.__init__(self, name)
        self.obj = None
        self.bpf_links = []

    def close(self):
        for m in self.maps.values():
            m.close()
        self.maps, self.programs = {}, {}
        lib = libbpf()
        for link in self.bpf_links:
            lib.bpf_link__destroy(link)
        self.bpf_links = []
        if self.obj:
            lib.bpf_object__close(self.obj)
            self.obj = None


def load(name, constants=None, sizes=None):
    """bpf_loader.load's contract, done by libbpf."""
    t0 = time.monotonic()
    lib = libbpf()
    data = object_data(name)
    ours = BpfObject(data)  # for the value layouts and the .rodata variables
    buf = ctypes.create_string_buffer(data, len(data))
    loaded = LibbpfLoaded(name)
    try:
        loaded.obj = lib.bpf_object__open_mem(buf, len(data), None)
        if not loaded.obj:
            raise LoadError("libbpf could not open %s: %s" % (name, os.strerror(ctypes.get_errno())))
        for map_name, entries in (sizes or {}).items():
            lib.bpf_map__set_max_entries(lib.bpf_object__find_map_by_name(loaded.obj, map_name.encode()), entries)
        rodata = bytearray(ours.rodata)
        for var, value in (constants or {}).items():
            offset, size = ours.rodata_vars[var]
            rodata[offset : offset + size] = int(value).to_bytes(size, ours.byteorder)
        m = lib.bpf_object__next_map(loaded.obj, None)
        while m:
            if lib.bpf_map__name(m).endswith(b".rodata"):
                init = ctypes.create_string_buffer(bytes(rodata), len(rodata))
                lib.bpf_map__set_initial_value(m, init, len(rodata))
            m = lib.bpf_object__next_map(loaded.obj, m)
        if lib.bpf_object__load(loaded.obj):
            raise LoadError("libbpf could not load %s: %s" % (name, os.strerror(ctypes.get_errno())))
        for map_name, d in ours.maps.items():
            fd = os.dup(lib.bpf_map__fd(lib.bpf_object__find_map_by_name(loaded.obj, map_name.encode())))
            entries = (sizes or {}).get(map_name, d.max_entries)
            loaded.maps[map_name] = sys_.Map(fd, map_name, d.type, d.key_size, d.value_size, entries,
                                             sys_.layout(ours.btf, d.key_type), sys_.layout(ours.btf, d.value_type))
        prog = lib.bpf_object__next_program(loaded.obj, None)
        while prog:
            loaded.programs[lib.bpf_program__name(prog).decode()] = lib.bpf_program__fd(prog)
            link = lib.bpf_program__attach(prog)
            if not link:
                raise LoadError("libbpf could not attach %s: %s" % (lib.bpf_program__name(prog).decode(),
                                                                   os.strerror(ctypes.get_errno())))
            loaded.bpf_links.append(link)
            prog = lib.bpf_object__next_program(loaded.obj, prog)
    except BaseException:
        loaded.close()
        raise
    loaded.load_s = time.monotonic() - t0
    return loaded
