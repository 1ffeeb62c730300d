"""What each collector backend costs the agent, all in one run; and what the eBPF programs cost the kernel.

    sudo .venv/bin/python bench/ebpf_cost.py [--seconds 60] [--warmup 5] [--loads 20] [--no-kernel]

1. Objects: the size of every compiled object (bpf/*.bpfel.o, *.bpfeb.o).
2. Loading: `--loads` times the cpu and network programs loaded (parse, relocate, verify, attach)
   and closed, by our loader and by Debian's libbpf (the same objects); median and worst.
3. Kernel side: with kernel.bpf_stats_enabled=1 (restored afterwards), run_time_ns and run_cnt of
   each program (bpftool prog show -j) over a bounded UDP load on 127.0.0.1.
4. Agents: real `edge-agent run` processes, started together against one mosquitto and measured
   over the same window (--seconds, after --warmup): every collector at 1 s, 10 s batches, QoS 1.
   Modes: procfs, netlink (network), ebpf (cpu + network, our loader), ebpf via libbpf, an agent
   that imported bcc first (the floor of any bcc loader: its libraries, no program compiled), the
   default as an unprivileged user (auto: procfs cpu, netlink network), and the zipapp (built by
   `python -m firmware build`) run from its .pyc and with its .pyc taken out. Per agent: start-up
   (wall and CPU seconds until `agent_start`), VmRSS and VmHWM at the end, CPU share in the
   window, births (count, bytes; a new series re-sends the birth) and bytes per sample on the wire
   (data messages; and with the births sent in the window).

Prints tables, then one JSON line with every figure. Not run in CI (root, minutes). On a shared
machine compare ratios, which come from one run under one load.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.agent_footprint import cpu_seconds, memory_kib  # noqa: E402
from bench.wire_size import machine  # noqa: E402

BIN = os.path.dirname(sys.executable)
NOBODY = ("--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all")
TARGETS = {"ebpf": 5.0, "netlink": 3.0, "default (non-root)": 3.0}  # MiB over procfs, at peak (VmHWM)


# ---------------------------------------------------------------- objects, loading, kernel side


def object_sizes():
    return dict((name, os.path.getsize(os.path.join(ROOT, "bpf", name)))
                for name in sorted(os.listdir(os.path.join(ROOT, "bpf"))) if name.endswith(".o"))


def load_times(loads):
    from edge_agent.collectors.ebpf.libbpf import load as libbpf_load
    from edge_agent.collectors.ebpf.loader import CpuProgram, NetProgram, load

    out = {}
    for label, loader in (("ours", load), ("libbpf", libbpf_load)):
        for cls in (CpuProgram, NetProgram):
            times = []
            for _ in range(loads):
                program = cls(loader=loader)
                times.append(program.load_s)
                program.close()
            out["%s %s" % (label, cls.__name__)] = {"median_ms": round(1000 * statistics.median(times), 2),
                                                    "max_ms": round(1000 * max(times), 2)}
    return out


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
    from edge_agent.collectors.ebpf.loader import CpuProgram, NetProgram

    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        was = f.read().strip()
    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True)
    programs = [CpuProgram(), NetProgram()]
    try:
        ids = set()
        for p in programs:
            ids.update(p.loaded.program_ids())
        before, t0 = bpftool_stats(ids), time.monotonic()
        sent = udp_load(args.load_seconds, args.load_packets)
        after, wall = bpftool_stats(ids), time.monotonic() - t0
    finally:
        for p in programs:
            p.close()
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=%s" % was], check=False)
    rows = []
    for pid in sorted(after):
        name, ns1, cnt1 = after[pid]
        _, ns0, cnt0 = before.get(pid, (name, 0, 0))
        rows.append((name, cnt1 - cnt0, ns1 - ns0))
    return {"sent": sent, "wall_s": wall, "programs": rows}


# ---------------------------------------------------------------- agents


class Births(threading.Thread):
    """Counts births and data bytes/samples per device on the bench's broker."""

    def __init__(self, port):
        import paho.mqtt.client as mqtt

        threading.Thread.__init__(self, daemon=True)
        self.lock = threading.Lock()
        self.births = {}  # device -> [sizes]
        self.data = {}  # device -> [bytes, samples]
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-ebpf-cost")
        self.client.on_connect = lambda c, *a: c.subscribe([("edge/+/birth", 1), ("edge/+/data", 1)])
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on_message(self, client, userdata, msg):
        from edge_wire.decode import WireError, decode, parse_batch

        device = msg.topic.split("/")[1]
        with self.lock:
            if msg.topic.endswith("/birth"):
                self.births.setdefault(device, []).append(len(msg.payload))
            else:
                entry = self.data.setdefault(device, [0, 0])
                entry[0] += len(msg.payload)
                try:
                    entry[1] += parse_batch(decode(msg.payload)).sample_count()
                except WireError:
                    pass

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def build_zipapps(tmp):
    """The firmware zipapp, and a copy of it without its .pyc."""
    out = os.path.join(tmp, "dist")
    subprocess.run([sys.executable, "-m", "firmware", "build", "--out", out], cwd=ROOT, check=True,
                   capture_output=True)
    pyz = [os.path.join(out, n) for n in os.listdir(out) if n.endswith(".pyz")][0]
    bare = os.path.join(tmp, "no-pyc.pyz")
    with zipfile.ZipFile(pyz) as src, open(bare, "wb") as f:
        f.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(f, "w") as dst:
            for info in src.infolist():
                if not info.filename.endswith(".pyc"):
                    dst.writestr(info, src.read(info.filename))
    return pyz, bare


def modes(tmp):
    agent = [os.path.join(BIN, "edge-agent")]
    system_python = "/usr/bin/python3"
    pyz, bare = build_zipapps(tmp)
    bcc_first = [sys.executable, "-c", "import sys, bcc; from edge_agent.cli.main import main; sys.argv[0] = 'edge-agent'; "
                 "sys.exit(main())"]
    out = [
        ("procfs", agent, {"cpu": "procfs", "network": "procfs"}, {}, ()),
        ("netlink", agent, {"cpu": "procfs", "network": "netlink"}, {}, ()),
        ("ebpf", agent, {"cpu": "ebpf", "network": "ebpf"}, {}, ()),
        ("ebpf via libbpf", agent, {"cpu": "ebpf", "network": "ebpf"}, {"EDGE_AGENT_BPF_LOADER": "libbpf"}, ()),
        ("default (non-root)", agent, {"cpu": "auto", "network": "auto"}, {}, ("setpriv",) + NOBODY),
        ("zipapp, .pyc (procfs)", [system_python, "-I", pyz], {"cpu": "procfs", "network": "procfs"}, {}, ()),
        ("zipapp, .py only (procfs)", [system_python, "-I", bare], {"cpu": "procfs", "network": "procfs"}, {}, ()),
    ]
    try:
        subprocess.run([sys.executable, "-c", "import bcc"], check=True, capture_output=True)
        out.append(("procfs + bcc imported", bcc_first, {"cpu": "procfs", "network": "procfs"}, {}, ()))
    except subprocess.CalledProcessError:
        print("NOTE: bcc is not importable (python3-bpfcc): no bcc row", file=sys.stderr)
    return out


def start_agent(tmp, index, label, command, backends, env, prefix, port, seconds):
    device = "bench-%d" % index
    work = os.path.join(tmp, device)
    os.makedirs(work)
    os.chmod(work, 0o777)
    config = os.path.join(work, "agent.json")
    with open(config, "w") as f:
        json.dump({"collectors": dict((name, {"backend": backend}) for name, backend in backends.items())}, f)
    os.chmod(config, 0o644)
    log_path = os.path.join(work, "agent.log")
    full_env = dict(os.environ, **env)
    full_env.pop("EDGE_AGENT_BPF_DIR", None)
    args = list(prefix) + command + ["run", "--config", config, "--broker", "mqtt://127.0.0.1:%d" % port,
                                     "--device-id", device, "--duration", str(seconds)]
    log = open(log_path, "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=work)
    return {"label": label, "device": device, "proc": proc, "log": log, "log_path": log_path, "t0": t0}


def wait_started(agent, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(agent["log_path"]) as f:
            text = f.read()
        for line in text.split("\n"):
            if line.startswith("agent_start"):
                agent["start_s"] = time.monotonic() - agent["t0"]
                agent["start_cpu_s"] = cpu_seconds(agent["proc"].pid)
                agent["collectors"] = line.split("collectors=", 1)[1].strip() if "collectors=" in line else ""
                agent["fallback"] = [ln for ln in text.split("\n") if ln.startswith("collector_fallback")]
                return
        if agent["proc"].poll() is not None:
            raise RuntimeError("%s exited: %s" % (agent["label"], text[-2000:]))
        time.sleep(0.02)
    raise RuntimeError("%s did not start" % agent["label"])


def agents_cost(args, tmp):
    from testbed.mosquitto import start_mosquitto, stop

    broker, port = start_mosquitto(tmp)
    counter = Births(port)
    agents = []
    try:
        time.sleep(0.5)
        lifetime = args.warmup + args.seconds + 60
        for i, (label, command, backends, env, prefix) in enumerate(modes(tmp)):
            agents.append(start_agent(tmp, i, label, command, backends, env, prefix, port, lifetime))
        for agent in agents:
            wait_started(agent)
        time.sleep(args.warmup)
        c0 = dict((a["device"], cpu_seconds(a["proc"].pid)) for a in agents)
        w0 = time.monotonic()
        time.sleep(args.seconds)
        wall = time.monotonic() - w0
        for a in agents:
            a["cpu_pct"] = 100.0 * (cpu_seconds(a["proc"].pid) - c0[a["device"]]) / wall
            mem = memory_kib(a["proc"].pid)
            a["rss_mib"], a["hwm_mib"] = mem["VmRSS"] / 1024.0, mem["VmHWM"] / 1024.0
        with counter.lock:
            for a in agents:
                a["births"] = list(counter.births.get(a["device"], []))
                sent, samples = counter.data.get(a["device"], [0, 0])
                a["bytes_per_sample"] = sent / samples if samples else None
                a["with_births"] = (sent + sum(a["births"])) / samples if samples else None
    finally:
        for a in agents:
            stop(a["proc"], 10)
            a["log"].close()
        counter.close()
        stop(broker)
    return agents


# ---------------------------------------------------------------- report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after every agent started (default 5)")
    parser.add_argument("--loads", type=int, default=20, help="loads per program and loader (default 20)")
    parser.add_argument("--load-seconds", type=float, default=5.0)
    parser.add_argument("--load-packets", type=int, default=200000)
    parser.add_argument("--no-kernel", action="store_true", help="skip the kernel-side measurement")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/ebpf_cost.py needs root (eBPF, kernel.bpf_stats_enabled, setpriv)")
    started = time.time()
    print("machine: %s; kernel %s" % (machine(), os.uname().release))
    figures = {"bench": "ebpf_cost", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
               "machine": machine(), "kernel": os.uname().release, "seconds": args.seconds}

    sizes = figures["objects"] = object_sizes()
    print("\nobjects (bytes): " + ", ".join("%s %d" % kv for kv in sizes.items()))

    loads = figures["load_ms"] = load_times(args.loads)
    print("\n| loading (parse, relocate, verify, attach) | median ms | worst ms |\n|---|---:|---:|")
    for label, t in loads.items():
        print("| %s | %.1f | %.1f |" % (label, t["median_ms"], t["max_ms"]))

    if not args.no_kernel:
        k = kernel_cost(args)
        figures["kernel"] = k
        print("\nkernel side: %d UDP datagrams on 127.0.0.1 in %.2f s (%.0f/s)" % (k["sent"], k["wall_s"], k["sent"] / k["wall_s"]))
        print("| program | events | ns/event | CPU % of one core |\n|---|---:|---:|---:|")
        total = 0
        for name, events, ns in k["programs"]:
            total += ns
            print("| %s | %d | %.0f | %.3f |" % (name, events, ns / events if events else 0, 100.0 * ns / (k["wall_s"] * 1e9)))
        print("| all programs | | | %.3f |" % (100.0 * total / (k["wall_s"] * 1e9)))

    tmp = tempfile.mkdtemp(prefix="bench-ebpf-")
    os.chmod(tmp, 0o755)
    try:
        agents = agents_cost(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = [a for a in agents if a["label"] == "procfs"][0]
    print("\nagents, every collector at 1 s, one broker, the same %.0f s window:" % args.seconds)
    print("| mode | backends | start s | start CPU s | VmRSS MiB | VmHWM MiB | HWM - procfs | CPU % | births (bytes) "
          "| bytes/sample | with births |\n|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    rows = []
    for a in agents:
        extra = a["hwm_mib"] - base["hwm_mib"]
        target = TARGETS.get(a["label"])
        verdict = "" if target is None else (" (≤ %g: %s)" % (target, "PASS" if extra <= target else "FAIL"))
        bps = "%.2f | %.2f" % (a["bytes_per_sample"], a["with_births"]) if a["bytes_per_sample"] else "- | -"
        print("| %s | %s | %.2f | %.2f | %.1f | %.1f | %+.1f%s | %.2f | %d (%s) | %s |" % (
            a["label"], a["collectors"].replace('"', ""), a["start_s"], a["start_cpu_s"], a["rss_mib"], a["hwm_mib"],
            extra, verdict, a["cpu_pct"], len(a["births"]), ", ".join(str(b) for b in a["births"]), bps))
        for line in a["fallback"]:
            print("    " + line)
        rows.append(dict((k, a[k]) for k in ("label", "collectors", "start_s", "start_cpu_s", "rss_mib", "hwm_mib",
                                             "cpu_pct", "births", "bytes_per_sample", "with_births", "fallback")))
    figures["agents"] = rows
    print(json.dumps(figures, separators=(",", ":")))


if __name__ == "__main__":
    main()
