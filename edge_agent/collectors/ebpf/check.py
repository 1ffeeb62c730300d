"""Can the eBPF programs run here? Cheap checks, made before anything of the loader is imported.

    reason = missing("cpu")   # None, or a short phrase: "no privileges: needs root, or CAP_BPF and CAP_PERFMON"

Selection (select.py) asks this first, so an agent that cannot use eBPF (not root, no tracefs, an
old kernel) never imports the loader, ctypes or the objects. Also here: where the compiled objects
are (`object_data`), and where tracefs is.
"""

import os
import sys

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
# what each object attaches to (tests check these against the objects' sections)
TRACEPOINTS = {
    "cpu": ("sched/sched_switch", "sched/sched_wakeup", "sched/sched_wakeup_new", "irq/softirq_entry", "irq/softirq_exit"),
    "net": ("net/netif_receive_skb", "net/net_dev_xmit", "tcp/tcp_retransmit_skb", "sock/inet_sock_set_state",
            "skb/kfree_skb"),
}
MIN_KERNEL = (5, 2)  # .rodata as a frozen read-only map (BPF_F_RDONLY_PROG, BPF_MAP_FREEZE)
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
# the objects: bpf/ beside the package (a checkout, a wheel's site-packages, or inside the zipapp)
BPF_DIR = os.environ.get("EDGE_AGENT_BPF_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))), "bpf"
)


def object_name(program):
    """"cpu" -> "cpu.bpfel.o" (or .bpfeb.o on a big-endian CPU)."""
    return "%s.bpf%s.o" % (program, "el" if sys.byteorder == "little" else "eb")


def object_data(program):
    """The bytes of the compiled object for this CPU's byte order; OSError when it is absent.
    Read through the module's loader, so it works from a zipapp as from files."""
    path = os.path.join(BPF_DIR, object_name(program))
    loader = globals().get("__loader__")
    if loader is not None and hasattr(loader, "get_data") and not os.environ.get("EDGE_AGENT_BPF_DIR"):
        return loader.get_data(path)
    with open(path, "rb") as f:
        return f.read()


def tracefs():
    for path in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    return None


def kernel_version(release=None):
    """"6.18.44-fc" -> (6, 18)"""
    parts = (release or os.uname().release).split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def has_caps():
    """Root, or CAP_BPF and CAP_PERFMON (5.8+), or CAP_SYS_ADMIN in the effective set."""
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

    Loading can still fail later (the verifier, a locked-down kernel); the caller reports that.
    """
    if not os.path.isdir("/proc/sys/kernel"):
        return "not Linux"
    version = kernel_version()
    if version < MIN_KERNEL:
        return "kernel %s is older than %d.%d" % (os.uname().release, MIN_KERNEL[0], MIN_KERNEL[1])
    if not has_caps():
        return "no privileges: needs root, or CAP_BPF and CAP_PERFMON"
    root = tracefs()
    if root is None:
        return "tracefs not mounted: mount -t tracefs tracefs /sys/kernel/tracing"
    absent = [tp for tp in TRACEPOINTS[program] if not os.path.isdir(os.path.join(root, "events", tp))]
    if absent:
        return "kernel lacks tracepoint %s" % ", ".join(absent)
    fmt = os.path.join(root, "events", TRACEPOINTS[program][0], "format")
    if not os.access(fmt, os.R_OK):
        return "cannot read %s (tracefs is root's: run as root or with CAP_DAC_READ_SEARCH)" % fmt
    try:
        object_data(program)
    except OSError:
        return "no compiled %s in %s (python -m bpf.build)" % (object_name(program), BPF_DIR)
    return None
