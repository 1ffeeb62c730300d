"""What the eBPF backend costs, against the procfs and netlink collectors (root; not run in CI).

    sudo .venv/bin/python bench/ebpf_cost.py [--duration 60] [--load-seconds 5] [--load-packets 200000]

1. Kernel side: with kernel.bpf_stats_enabled=1 (restored afterwards), run_time_ns and run_cnt of
   each loaded program (bpftool prog show -j) over a bounded UDP load on 127.0.0.1; printed per
   event and per second of wall time.
2. Start-up: for each mode (procfs, netlink, ebpf) a fresh process builds the cpu and network
   collectors: wall time, eBPF compile+load time, peak RSS (VmHWM) after the first collect.
3. Steady state: each mode collects once a second for --duration seconds (the three modes run at
   the same time, in separate processes); RSS (VmRSS) at the end and process CPU (user+sys) as a
   share of one core. The eBPF programs' own kernel time is part 1, not in this figure.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODE = """
import json, os, sys, time
sys.path.insert(0, %(root)r)
t0 = time.monotonic()
mode, duration = sys.argv[1], float(sys.argv[2])
from edge_agent.collectors.select import build_collectors
backend = {"procfs": ("procfs", "procfs"), "netlink": ("procfs", "netlink"), "ebpf": ("ebpf", "ebpf")}[mode]
config = {"cpu": {"backend": backend[0]}, "network": {"backend": backend[1]}}
lines = []
collectors, effective = build_collectors(config, log=lines.append)
compile_s = sum(getattr(getattr(c, "program", None), "compile_s", 0.0) for c in collectors)
samples = sum(len(c.collect()) for c in collectors)
start_s = time.monotonic() - t0
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
hwm = status("VmHWM")
c0, w0 = os.times(), time.monotonic()
n = 0
while time.monotonic() - w0 < duration:
    time.sleep(max(0.0, w0 + n + 1 - time.monotonic()))
    for c in collectors:
        c.collect()
    n += 1
c1, w1 = os.times(), time.monotonic()
cpu = (c1.user + c1.system - c0.user - c0.system) / max(w1 - w0, 1e-9)
print(json.dumps({"mode": mode, "effective": effective, "lines": lines, "start_s": start_s, "compile_s": compile_s,
                  "samples": samples, "peak_rss_mib": hwm, "steady_rss_mib": status("VmRSS"), "cpu_share": cpu,
                  "reads": n}))
"""


def bpftool_stats(ids):
    out = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout)
    return dict((p["id"], (p.get("name", "?"), p.get("run_time_ns", 0), p.get("run_cnt", 0))) for p in out if p["id"] in ids)


def udp_load(seconds, packets):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr, payload, sent, end = rx.getsockname(), b"x" * 200, 0, time.monotonic() + seconds
    while sent < packets and time.monotonic() < end:
        tx.sendto(payload, addr)
        sent += 1
        try:
            while True:
                rx.recv(2048)
        except BlockingIOError:
            pass
    return sent


def kernel_cost(args):
    from edge_agent.collectors.bpf_loader import CpuProgram, NetProgram

    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        was = f.read().strip()
    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True)
    programs = [CpuProgram(), NetProgram()]
    try:
        ids = set()
        for p in programs:
            ids.update(p.program_ids())
        before, t0 = bpftool_stats(ids), time.monotonic()
        sent = udp_load(args.load_seconds, args.load_packets)
        after, wall = bpftool_stats(ids), time.monotonic() - t0
    finally:
        for p in programs:
            p.close()
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=%s" % was], check=False)
    print("kernel side: %d UDP datagrams on 127.0.0.1 in %.2f s (%.0f/s)" % (sent, wall, sent / wall))
    print("  %-38s %12s %10s %12s %10s" % ("program", "events", "ns/event", "events/s", "CPU %"))
    total_ns = 0
    for pid in sorted(after):
        name, ns1, cnt1 = after[pid]
        _, ns0, cnt0 = before.get(pid, (name, 0, 0))
        events, ns = cnt1 - cnt0, ns1 - ns0
        total_ns += ns
        print("  %-38s %12d %10.0f %12.0f %10.3f" % (name, events, ns / events if events else 0, events / wall, 100.0 * ns / (wall * 1e9)))
    print("  all programs: %.3f %% of one CPU" % (100.0 * total_ns / (wall * 1e9)))


def process_cost(args):
    procs = [subprocess.Popen([sys.executable, "-c", MODE % {"root": ROOT}, mode, str(args.duration)],
                              stdout=subprocess.PIPE, text=True) for mode in ("procfs", "netlink", "ebpf")]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    print("agent process, cpu + network collectors, steady state over %.0f s at 1 read/s:" % args.duration)
    print("  %-8s %9s %10s %14s %16s %9s %8s" % ("mode", "start s", "compile s", "peak RSS MiB", "steady RSS MiB", "CPU %", "samples"))
    for r in results:
        print("  %-8s %9.2f %10.2f %14.1f %16.1f %9.2f %8d" % (r["mode"], r["start_s"], r["compile_s"], r["peak_rss_mib"],
                                                             r["steady_rss_mib"], 100 * r["cpu_share"], r["samples"]))
        for line in r["lines"]:
            print("    " + line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="steady-state seconds per mode (default 60)")
    parser.add_argument("--load-seconds", type=float, default=5.0)
    parser.add_argument("--load-packets", type=int, default=200000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/ebpf_cost.py needs root (eBPF, kernel.bpf_stats_enabled)")
    print("kernel %s, %d CPUs" % (os.uname().release, os.cpu_count()))
    kernel_cost(args)
    process_cost(args)


if __name__ == "__main__":
    main()
