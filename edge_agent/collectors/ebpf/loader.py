"""Load the compiled programs (bpf/cpu.bpfel.o, bpf/net.bpfel.o) and read their maps into plain values.

No compiler, libbpf, kernel headers or kernel BTF on the device: the object is parsed here
(bpf_object.py), its CO-RE relocations resolved from tracefs format files (bpf_core.py), and maps,
programs and tracepoint attachments made with the bpf() and perf_event_open() system calls
(bpf_syscall.py). `load()` does that for one object; `CpuProgram` and `NetProgram` add the reading:

    program = NetProgram(max_devices=256)   # loaded and attached, or BpfError / OSError
    program.read()                          # {"devices": [...], "tcp": {...}, ...}: see read()
    program.load_s                          # seconds the load took (parse, relocate, verify, attach)
    program.close()                         # detach and free

The converters (ebpf_cpu.py, ebpf_net.py) take only what `read()` returns. Another loader of the
same objects can stand in through `loader=`: bpf_libbpf.load (Debian's libbpf, tests and
development) has the same signature.

Run-time options are .rodata constants (`constants={"top_pids": 1}`) and map sizes
(`sizes={"runq_start": 10240}`), set before loading; the verifier then drops code an option
switches off.
"""

import os
import struct
import time

from edge_agent.collectors.ebpf import syscall as sys_
from edge_agent.collectors.ebpf.check import object_data, tracefs
from edge_agent.collectors.ebpf.core import parse_format, parse_symbolic, relocate
from edge_agent.collectors.ebpf.objects import BPF_LD_IMM64, BpfObject, BpfObjectError

BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE = 1, 2
TCP_STATE_NAMES = {1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2", 6: "time_wait",
                   7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing", 12: "new_syn_recv"}
# helpers that kernels before 5.5 only know by their older names
OLD_HELPERS = {113: 4, 115: 45}  # probe_read_kernel -> probe_read, probe_read_kernel_str -> probe_read_str
ZERO_KEY = b"\0\0\0\0"


class LoadError(Exception):
    """The object could not be loaded here: the first line of the message says which step and why;
    `log` holds the verifier's log when the kernel refused a program."""

    def __init__(self, message, log=""):
        Exception.__init__(self, message)
        self.log = log


def read_tracefs(path):
    with open(os.path.join(tracefs() or "/sys/kernel/tracing", "events", path)) as f:
        return f.read()


def verifier_summary(log):
    """The line of a verifier log that says why, with the instruction it stopped at."""
    lines = [line for line in log.strip().split("\n") if line.strip()]
    while lines and lines[-1].startswith(("processed ", "verification time", "stack depth", "max_states")):
        lines.pop()
    if not lines:
        return "no verifier log"
    reason = lines[-1].strip()
    for line in reversed(lines[:-1]):
        if line[:1].isdigit() and ": (" in line:
            return "%s (at %s)" % (reason, line.split(";")[0].strip())
    return reason


class Loaded:
    """One object in the kernel: `maps` (name -> bpf_syscall.Map), program fds, attachments."""

    def __init__(self, name):
        self.name = name
        self.maps = {}
        self.programs = {}  # program name -> fd
        self.links = []  # perf event fds
        self.load_s = 0.0

    def program_ids(self):
        """Kernel ids of the loaded programs (for bpftool and run-time statistics)."""
        ids = []
        for fd in self.programs.values():
            with open("/proc/self/fdinfo/%d" % fd) as f:
                ids.extend(int(line.split()[1]) for line in f if line.startswith("prog_id:"))
        return ids

    def close(self):
        for fd in self.links + list(self.programs.values()):
            os.close(fd)
        for m in self.maps.values():
            m.close()
        self.links, self.programs, self.maps = [], {}, {}


def load(name, constants=None, sizes=None):
    """Load bpf/<name>.bpf*.o: maps (sizes override max_entries), .rodata with `constants`, every
    program relocated for this kernel, verified and attached to its tracepoint. LoadError if not."""
    t0 = time.monotonic()
    loaded = Loaded(name)
    step = "reading the object"
    try:
        obj = BpfObject(object_data(name))
        step = "creating its maps"
        _raise_memlock()
        _create_maps(loaded, obj, constants or {}, sizes or {})
        old = _kernel_lacks_probe_read_kernel()
        for program in obj.programs:
            step = "relocating %s for this kernel" % program.name
            poisoned = relocate(program, obj.btf, parse_format(read_tracefs(program.tracepoint + "/format")), obj.order)
            _link_maps(program, loaded, obj.order)
            if old:
                _old_helpers(program, obj.order)
            step = "loading %s" % program.name
            try:
                fd = sys_.prog_load(program.insns, obj.license, program.name)
            except sys_.BpfError as e:
                raise _refused(program, e, poisoned)
            loaded.programs[program.name] = fd
            step = "attaching %s to %s" % (program.name, program.tracepoint)
            loaded.links.append(sys_.attach_tracepoint(fd, int(read_tracefs(program.tracepoint + "/id"))))
    except LoadError:
        loaded.close()
        raise
    except (OSError, ValueError) as e:
        loaded.close()
        raise LoadError("%s.bpf: %s: %s" % (name, step, getattr(e, "strerror", None) or e))
    except BaseException:
        loaded.close()
        raise
    loaded.load_s = time.monotonic() - t0
    return loaded


def _create_maps(loaded, obj, constants, sizes):
    for m in obj.maps.values():
        entries = sizes.get(m.name, m.max_entries)
        fd = sys_.map_create(m.type, m.key_size, m.value_size, entries, m.flags, m.name)
        loaded.maps[m.name] = sys_.Map(fd, m.name, m.type, m.key_size, m.value_size, entries,
                                       sys_.layout(obj.btf, m.key_type), sys_.layout(obj.btf, m.value_type))
    unknown = set(constants) - set(obj.rodata_vars)
    if unknown:
        raise BpfObjectError("no constant %s in .rodata" % ", ".join(sorted(unknown)))
    if obj.rodata:
        rodata = bytearray(obj.rodata)
        for var, value in constants.items():
            offset, size = obj.rodata_vars[var]
            rodata[offset : offset + size] = int(value).to_bytes(size, obj.byteorder)
        fd = sys_.map_create(sys_.BPF_MAP_TYPE_ARRAY, 4, len(rodata), 1, sys_.BPF_F_RDONLY_PROG, loaded.name + ".rodata")
        m = loaded.maps[".rodata"] = sys_.Map(fd, ".rodata", sys_.BPF_MAP_TYPE_ARRAY, 4, len(rodata), 1)
        m.update(ZERO_KEY, rodata)
        sys_.map_freeze(fd)  # read-only for programs and from now on for us: the verifier may use the values


def _link_maps(program, loaded, order):
    """Point each ld_imm64 at its map's fd (or at .rodata + offset)."""
    for index, map_name, offset in program.map_refs:
        pos = index * 8
        if program.insns[pos] != BPF_LD_IMM64:
            raise BpfObjectError("%s: instruction %d refers to %s but is not a load" % (program.name, index, map_name))
        pseudo = BPF_PSEUDO_MAP_VALUE if map_name == ".rodata" else BPF_PSEUDO_MAP_FD
        regs = program.insns[pos + 1]
        # the source register is the high nibble in a little-endian object, the low one in a big-endian one
        program.insns[pos + 1] = (regs & 0x0F) | (pseudo << 4) if order == "<" else (regs & 0xF0) | pseudo
        struct.pack_into(order + "i", program.insns, pos + 4, loaded.maps[map_name].fd)
        struct.pack_into(order + "i", program.insns, pos + 12, offset)


def _raise_memlock():
    """Kernels before 5.11 charge maps to RLIMIT_MEMLOCK (often 64 KiB): lift it, as libbpf does."""
    from edge_agent.collectors.ebpf.check import kernel_version

    if kernel_version() >= (5, 11):
        return
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):  # not privileged to raise the hard limit: up to it
        hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


def _kernel_lacks_probe_read_kernel():
    from edge_agent.collectors.ebpf.check import kernel_version

    return kernel_version() < (5, 5)


def _old_helpers(program, order):
    for pos in range(0, len(program.insns), 8):
        if program.insns[pos] == 0x85:  # call
            imm, = struct.unpack_from(order + "i", program.insns, pos + 4)
            if imm in OLD_HELPERS:
                struct.pack_into(order + "i", program.insns, pos + 4, OLD_HELPERS[imm])


def _refused(program, error, poisoned):
    log = getattr(error, "log", "") or ""
    why = verifier_summary(log) if log else error.strerror
    if "unknown#195896080" in log and poisoned:
        why = "it reaches a field this kernel's tracepoint record lacks: %s" % ", ".join(poisoned)
    tail = "\n".join(log.strip().split("\n")[-20:])
    return LoadError("the kernel refused program %s (tracepoint %s): %s%s"
                     % (program.name, program.tracepoint, why, ("\n" + tail) if tail else ""), log)


# ---------------------------------------------------------------- the two programs' readers


def _sum(values, name):
    return sum(v[name] for v in values)


def _sums(values, name):
    return [sum(column) for column in zip(*[v[name] for v in values], strict=True)]


def _cstring(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _online_cpus():
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return sys_.cpu_ranges(f.read())
    except OSError:
        return None


class CpuProgram:
    """bpf/cpu.bpf.c in the kernel. top_pids: nonzero keeps on-CPU time per pid (up to that many
    pids between two reads); runq_max_tasks: woken tasks remembered for run-queue latency."""

    def __init__(self, top_pids=0, runq_max_tasks=10240, loader=load):
        self.softirq_names = dict((k, v.lower()) for k, v in
                                  parse_symbolic(read_tracefs("irq/softirq_entry/format"), "vec").items())
        self.top_pids = top_pids
        self.loaded = loader("cpu", {"top_pids": 1 if top_pids else 0},
                             {"runq_start": runq_max_tasks, "pid_time": max(top_pids, 1)})
        self.load_s = self.loaded.load_s
        self.stats = self.loaded.maps["cpu_stats"]

    def read(self):
        """{"cpus": [(cpu, busy_ns, idle_ns, switches)], "runq": (slot_counts, sum_us),
        "softirq": [(vector, ns)], "top": [(comm, ns since the last read)]}

        Times count from the program's load. busy/idle include the interval still running since
        the CPU's last switch, so a CPU that runs one task without switching still advances.
        """
        now = time.monotonic_ns()  # CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns()
        per_cpu = self.stats.per_cpu(self.stats.lookup(ZERO_KEY))
        online = _online_cpus()
        cpus = []
        for cpu, s in enumerate(per_cpu):
            if online is not None and cpu not in online:
                continue
            busy, idle, last = s["busy_ns"], s["idle_ns"], s["last_ns"]
            if last and now > last:
                if s["idle_now"]:
                    idle += now - last
                else:
                    busy += now - last
            cpus.append((cpu, busy, idle, s["switches"]))
        soft = _sums(per_cpu, "softirq_ns")
        softirq = [(self.softirq_names.get(vec, "vec%d" % vec), ns) for vec, ns in enumerate(soft)
                   if vec in self.softirq_names or ns]
        top = []
        if self.top_pids:
            table = self.loaded.maps["pid_time"]
            for key in table.keys():
                raw = table.lookup(key)
                table.delete(key)
                if raw is not None:
                    value = table.value_layout.decode(raw)
                    top.append((_cstring(value["comm"]), value["ns"]))
        return {"cpus": cpus, "runq": (_sums(per_cpu, "runq"), _sum(per_cpu, "runq_sum_us")), "softirq": softirq,
                "top": top}

    def close(self):
        self.loaded.close()


class NetProgram:
    """bpf/net.bpf.c in the kernel; max_devices bounds the interface map."""

    def __init__(self, max_devices=256, loader=load):
        fmt = read_tracefs("skb/kfree_skb/format")
        has_reason = "reason" in parse_format(fmt)
        self.drop_names = dict((k, v.lower()) for k, v in parse_symbolic(fmt, "reason").items()) if has_reason else {}
        self.drop_names.setdefault(0, "unknown")  # no reason field (before 5.17): every drop is slot 0
        self.max_devices = max_devices
        self.loaded = loader("net", {}, {"dev_stats": max_devices})
        self.load_s = self.loaded.load_s
        self.devices = self.loaded.maps["dev_stats"]
        self.stats = self.loaded.maps["net_stats"]

    def read(self):
        """{"devices": [(name, rx_bytes, rx_packets, tx_bytes, tx_packets)], "tcp": {event: n},
        "tcp_states": [(state, transitions into it)], "drops": [(reason, n)]}

        Counts since the program's load, summed over CPUs and over network namespaces (devices
        are keyed by name). rx bytes exclude the link-layer header, tx bytes include it; the
        converter adjusts per link type.
        """
        devices = []
        keys = self.devices.keys()
        for key in keys:
            raw = self.devices.lookup(key)
            if raw is None:
                continue
            values = self.devices.per_cpu(raw)
            devices.append((_cstring(key), _sum(values, "rx_bytes"), _sum(values, "rx_packets"),
                            _sum(values, "tx_bytes"), _sum(values, "tx_packets")))
        if len(keys) > self.max_devices * 3 // 4:
            self._prune(keys)
        per_cpu = self.stats.per_cpu(self.stats.lookup(ZERO_KEY))
        tcp = dict((event, _sum(per_cpu, event)) for event in
                   ("retransmits", "retransmit_failures", "opened_active", "opened_passive", "closed"))
        states = _sums(per_cpu, "tcp_state_in")
        drops = _sums(per_cpu, "drops")
        return {"devices": devices, "tcp": tcp,
                "tcp_states": [(TCP_STATE_NAMES[s], n) for s, n in enumerate(states) if s in TCP_STATE_NAMES],
                "drops": [(self.drop_names.get(r, "reason%d" % r), n) for r, n in enumerate(drops) if n]}

    def _prune(self, keys):
        """Forget devices gone from this namespace so the bounded map keeps room for new ones."""
        present = set(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else set()
        for key in keys:
            if _cstring(key) not in present:
                self.devices.delete(key)

    def close(self):
        self.loaded.close()
