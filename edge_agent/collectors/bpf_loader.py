"""Load bpf/cpu.c and bpf/net.c with bcc and read their maps into plain Python values.

This is the only module that imports bcc (lazily, inside `_compile`), so everything else —
the converters in ebpf_cpu.py / ebpf_net.py, selection, tests of the conversion — runs without
it. A loader for precompiled CO-RE objects (libbpf) can replace this module: it has to offer
the same `read()` results, documented on `CpuProgram.read` and `NetProgram.read`.

Options reach the C code as compiler defines (`-DTOP_PIDS=32`), never spliced into the source.
"""

import os
import re
import time

BPF_DIR = os.environ.get("EDGE_AGENT_BPF_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bpf"
)
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

TRACEPOINTS = {
    "cpu": ("sched/sched_switch", "sched/sched_wakeup", "sched/sched_wakeup_new", "irq/softirq_entry", "irq/softirq_exit"),
    "net": ("net/netif_receive_skb", "net/net_dev_xmit", "tcp/tcp_retransmit_skb", "sock/inet_sock_set_state", "skb/kfree_skb"),
}

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
TCP_STATE_NAMES = {1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2", 6: "time_wait",
                   7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing", 12: "new_syn_recv"}
RUNQ_SLOTS = 26  # keep equal to bpf/telemetry.h
SOFTIRQ_SLOTS = 16
DROP_REASONS = 160


def tracefs():
    for path in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    return None


def parse_symbolic(format_text, field):
    """The `{code, "NAME"}` table that a tracefs format's print fmt gives for `REC->field`."""
    match = re.search(r"__print_symbolic\(REC->%s,(.*?)\)(?:,|$)" % re.escape(field), format_text, re.S)
    if not match:
        return {}
    return {int(code): name for code, name in re.findall(r'\{\s*(-?\d+),\s*"([^"]*)"\s*\}', match.group(1))}


def _has_field(format_text, field):
    return re.search(r"field:[^;]*\b%s(\[\d+\])?;" % re.escape(field), format_text) is not None


def _has_caps():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps >> CAP_SYS_ADMIN & 1) or (bool(caps >> CAP_BPF & 1) and bool(caps >> CAP_PERFMON & 1))
    except OSError:
        pass
    return os.geteuid() == 0


def missing(program):
    """What stops `program` ("cpu" or "net") from loading here, as a short phrase, or None.

    Checks the cheap things before any compile: bcc importable, privileges, tracefs and every
    tracepoint the program attaches, kernel headers for bcc's clang. Loading can still fail
    later (the verifier, a locked-down kernel); the caller then reports the exception.
    """
    if not os.path.isdir("/proc/sys/kernel"):
        return "not Linux"
    try:
        import bcc  # noqa: F401
    except Exception as e:  # ImportError, or a broken libbcc
        return "bcc not importable: %s; Debian package python3-bpfcc" % (str(e).splitlines()[0] if str(e) else type(e).__name__)
    if not _has_caps():
        return "no privileges: needs root, or CAP_BPF and CAP_PERFMON"
    root = tracefs()
    if root is None:
        return "tracefs not mounted: mount -t tracefs tracefs /sys/kernel/tracing"
    absent = [tp for tp in TRACEPOINTS[program] if not os.path.isdir(os.path.join(root, "events", tp))]
    if absent:
        return "kernel lacks tracepoint %s" % ", ".join(absent)
    release = os.uname().release
    if not os.path.isdir("/lib/modules/%s/build/include" % release) and not os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return "no kernel headers at /lib/modules/%s/build; Debian package linux-headers-<arch>" % release
    return None


class BccProgram:
    """One compiled program: `self.bpf` holds the bcc module, its tracepoints already attached."""

    source = ""

    def __init__(self, defines=None):
        self.defines = dict(defines or {})
        self.compile_s = 0.0
        self.bpf = self._compile()

    def _compile(self):
        import bcc

        cflags = ["-I" + BPF_DIR] + ["-D%s=%s" % (k, int(v)) for k, v in sorted(self.defines.items())]
        t0 = time.monotonic()
        bpf = bcc.BPF(src_file=os.path.join(BPF_DIR, self.source).encode(), cflags=cflags)
        self.compile_s = time.monotonic() - t0  # clang, verifier and attach (TRACEPOINT_PROBE auto-attaches)
        return bpf

    def program_ids(self):
        """Kernel ids of the loaded programs (for bpftool / run-time statistics)."""
        ids = []
        for fn in self.bpf.funcs.values():
            try:
                with open("/proc/self/fdinfo/%d" % fn.fd) as f:
                    for line in f:
                        if line.startswith("prog_id:"):
                            ids.append(int(line.split()[1]))
            except OSError:
                pass
        return ids

    def close(self):
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None


def _percpu_array(table, n):
    """Per-CPU u64 array -> [per-CPU sums], one list per key 0..n-1."""
    return [sum(int(v) for v in table.getvalue(table.Key(i))) for i in range(n)]


class CpuProgram(BccProgram):
    source = "cpu.c"

    def __init__(self, top_pids=0, runq_max_tasks=10240):
        defines = {"TOP_PIDS": top_pids, "RUNQ_MAX_TASKS": runq_max_tasks}
        root = tracefs() or TRACEFS_DIRS[0]
        with open(os.path.join(root, "events/irq/softirq_entry/format")) as f:
            self.softirq_names = {k: v.lower() for k, v in parse_symbolic(f.read(), "vec").items()}
        BccProgram.__init__(self, defines)
        self.top_pids = top_pids

    def read(self):
        """{"cpus": [(cpu, busy_ns, idle_ns, switches)], "runq": (slot_counts, sum_us),
        "softirq": [(vector, ns)], "top": [(comm, ns since the last read)]}

        Times count from the program's load. busy/idle include the interval still running since
        the CPU's last switch, so a CPU that runs one task without switching still advances.
        """
        now = time.monotonic_ns()  # CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns()
        cpus = []
        for cpu, acct in enumerate(self.bpf[b"cpu_acct"].getvalue(self.bpf[b"cpu_acct"].Key(0))):
            busy, idle, last = acct.busy_ns, acct.idle_ns, acct.last_ns
            if last and now > last:
                if acct.idle_now:
                    idle += now - last
                else:
                    busy += now - last
            cpus.append((cpu, busy, idle, acct.switches))
        online = _online_cpus()
        if online is not None:
            cpus = [c for c in cpus if c[0] in online]
        hist = _percpu_array(self.bpf[b"runq_hist"], RUNQ_SLOTS + 1)
        soft = _percpu_array(self.bpf[b"softirq_ns"], SOFTIRQ_SLOTS)
        softirq = [(self.softirq_names.get(vec, "vec%d" % vec), ns) for vec, ns in enumerate(soft) if vec in self.softirq_names or ns]
        top = []
        if self.top_pids:
            top = [(bytes(v.comm).split(b"\0", 1)[0].decode("utf-8", "replace"), v.ns) for _, v in _drain(self.bpf[b"pid_time"])]
        return {"cpus": cpus, "runq": (hist[:RUNQ_SLOTS], hist[RUNQ_SLOTS]), "softirq": softirq, "top": top}


def _online_cpus():
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        return None
    cpus = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def _drain(table):
    try:
        return list(table.items_lookup_and_delete_batch())
    except Exception:  # kernels before 5.6 have no batch operations
        items = []
        for key in list(table.keys()):
            try:
                items.append((key, table[key]))
                del table[key]
            except KeyError:
                pass
        return items


class NetProgram(BccProgram):
    source = "net.c"

    def __init__(self, max_devices=256):
        root = tracefs() or TRACEFS_DIRS[0]
        with open(os.path.join(root, "events/skb/kfree_skb/format")) as f:
            fmt = f.read()
        has_reason = _has_field(fmt, "reason")
        self.drop_names = {k: v.lower() for k, v in parse_symbolic(fmt, "reason").items()} if has_reason else {0: "unknown"}
        with open(os.path.join(root, "events/tcp/tcp_retransmit_skb/format")) as f:
            has_err = _has_field(f.read(), "err")
        defines = {"MAX_DEVICES": max_devices, "HAVE_DROP_REASON": int(has_reason), "HAVE_RETRANS_ERR": int(has_err)}
        BccProgram.__init__(self, defines)
        self.max_devices = max_devices

    def read(self):
        """{"devices": [(name, rx_bytes, rx_packets, tx_bytes, tx_packets)], "tcp": {event: n},
        "tcp_states": [(state, transitions into it)], "drops": [(reason, n)]}

        Counts since the program's load, summed over CPUs and over network namespaces (devices
        are keyed by name). rx bytes exclude the link-layer header; the converter adds it.
        """
        table = self.bpf[b"dev_stats"]
        devices = []
        try:
            items = list(table.items_lookup_batch())
        except Exception:
            items = [(k, table.getvalue(k)) for k in list(table.keys())]
        for key, per_cpu in items:
            name = bytes(key.name).split(b"\0", 1)[0].decode("utf-8", "replace")
            devices.append((name, sum(v.rx_bytes for v in per_cpu), sum(v.rx_packets for v in per_cpu),
                            sum(v.tx_bytes for v in per_cpu), sum(v.tx_packets for v in per_cpu)))
        if len(items) > self.max_devices * 3 // 4:
            self._prune(table, items)
        ev = _percpu_array(self.bpf[b"tcp_events"], 5)
        tcp = {"retransmits": ev[0], "opened_active": ev[1], "opened_passive": ev[2], "closed": ev[3], "retransmit_failures": ev[4]}
        states = _percpu_array(self.bpf[b"tcp_state_in"], 16)
        tcp_states = [(TCP_STATE_NAMES[s], n) for s, n in enumerate(states) if s in TCP_STATE_NAMES]
        drops = _percpu_array(self.bpf[b"drop_reason"], DROP_REASONS)
        named = [(self.drop_names.get(r, "reason%d" % r), n) for r, n in enumerate(drops) if n]
        return {"devices": devices, "tcp": tcp, "tcp_states": tcp_states, "drops": named}

    def _prune(self, table, items):
        """Forget devices gone from this namespace so the bounded map keeps room for new ones."""
        present = set(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else set()
        for key, _ in items:
            if bytes(key.name).split(b"\0", 1)[0].decode("utf-8", "replace") not in present:
                try:
                    del table[key]
                except KeyError:
                    pass
