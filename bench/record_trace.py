"""Record 1 s traces of this machine under a chosen kind of real work: the second dev set for sampling.

    .venv/bin/python bench/record_trace.py WORK [--seconds 1500] [--out bench/traces] [--seed 1]
                                                [--src MICROPYTHON_SOURCE]

WORK is `idle`, `compile`, `compress`, `network`, `tests` or `mixed`. While the work runs (bursts
with random pauses, from --seed) this reads /proc every second and writes three traces, each a
gzip-compressed `timestamp,value` CSV that `edge-agent replay` and bench/sampling_eval.py read:

    <out>/<WORK>-cpu.csv.gz   busy share of all CPUs over the last second, percent (/proc/stat)
    <out>/<WORK>-net.csv.gz   bytes received + transmitted per second over all interfaces, lo
                              included (/proc/net/dev; interfaces that come or go between two
                              reads are left out of that second)
    <out>/<WORK>-mem.csv.gz   memory in use, MemTotal - MemAvailable, MiB (/proc/meminfo)

The work, in its own process group (ended at the close), at the lowest priority (nice 19):
    idle      nothing of ours: whatever else runs on the machine
    compile   the MicroPython unix port (`make clean; make -j2` or `-j1`) from the source at --src
              (Debian's `micropython` source package, `apt-get source micropython` from trixie)
    compress  xz, gzip and zstd over slices of a 96 MB corpus built from /usr (binaries and text)
    network   TCP bursts over loopback to a local sink: 5-400 MB at full speed, or a trickle of
              0.2-5 MB/s for 10-60 s, with pauses of 1-30 s
    tests     the project's fast pytest files, one random file after another, with pauses
    mixed     a random one of compile, compress, network and tests at each burst
The machine is shared, so every trace also holds whatever else ran: that is the point.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKS = ("idle", "compile", "compress", "network", "tests", "mixed")
TESTS = ["tests/unit/test_wire.py", "tests/unit/test_gateway_decode.py", "tests/unit/test_sampling.py", "tests/unit/test_commands.py",
         "tests/unit/test_replay.py", "tests/unit/test_counters.py", "tests/unit/test_procfs_collectors.py", "tests/unit/test_config.py",
         "tests/unit/test_fuzz_properties.py", "tests/unit/test_gateway_otlp.py", "tests/unit/test_msgpack_compat.py"]


# ---------------------------------------------------------------------- reading the machine

def cpu_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])  # user..steal (guest time is already in user)
    return total - fields[3] - fields[4], total


def net_bytes() -> dict[str, int]:
    """Bytes received + transmitted so far, per interface."""
    out = {}
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, rest = line.partition(":")
            fields = rest.split()
            out[name.strip()] = int(fields[0]) + int(fields[8])
    return out


def net_delta(before: dict[str, int], after: dict[str, int]) -> int:
    """Bytes moved between two reads, over the interfaces present in both (test veths come and go)."""
    total = 0
    for name, count in after.items():
        if name in before and count >= before[name]:
            total += count - before[name]
    return total


def mem_used_mib() -> float:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024.0


def record(seconds: int, stop: threading.Event) -> list[tuple[int, float, int, float]]:
    """(unix second, cpu %, net bytes/s, mem MiB) once a second, on a fixed grid."""
    rows = []
    start = int(time.time()) + 1
    busy0, all0 = cpu_ticks()
    net0, t0 = net_bytes(), time.monotonic()
    for i in range(seconds):
        delay = start + i + 1 - time.time()
        if delay > 0:
            time.sleep(delay)
        busy, total = cpu_ticks()
        net, t = net_bytes(), time.monotonic()
        cpu = 100.0 * (busy - busy0) / max(1, total - all0)
        rows.append((start + i + 1, round(cpu, 2), int(round(net_delta(net0, net) / (t - t0))), round(mem_used_mib(), 1)))
        busy0, all0, net0, t0 = busy, total, net, t
        if stop.is_set():
            break
    return rows


# ---------------------------------------------------------------------- the work

def pause(rng: random.Random, low: float, high: float, stop: threading.Event) -> None:
    stop.wait(rng.uniform(low, high))


def run(cmd: list[str], stop: threading.Event, cwd: str | None = None) -> None:
    """Run one step of work at nice 19; stopped (its process group) when recording ends."""
    if stop.is_set():
        return
    proc = subprocess.Popen(["nice", "-n", "19"] + cmd, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None:
        if stop.wait(0.2):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()


def compile_step(rng, stop, src):
    unix = os.path.join(src, "ports", "unix")
    run(["make", "-C", unix, "clean"], stop)
    jobs = rng.choice(["-j1", "-j2", "-j2"])
    run(["make", "-C", unix, jobs, "MICROPY_PY_BTREE=0", "MICROPY_PY_SSL=0", "MICROPY_PY_FFI=0",
         "FROZEN_MANIFEST="], stop)
    pause(rng, 3, 40, stop)


def corpus(path: str) -> str:
    """96 MB of real files (binaries and text from /usr), built once."""
    if os.path.exists(path) and os.path.getsize(path) >= 96 << 20:
        return path
    with open(path, "wb") as out:
        size = 0
        for top in ("/usr/bin", "/usr/share/doc", "/usr/lib/python3", "/usr/lib/x86_64-linux-gnu"):
            for dirpath, _dirs, files in os.walk(top):
                for name in sorted(files):
                    try:
                        with open(os.path.join(dirpath, name), "rb") as f:
                            data = f.read(4 << 20)
                    except OSError:
                        continue
                    out.write(data)
                    size += len(data)
                    if size >= 96 << 20:
                        return path
    return path


def compress_step(rng, stop, data):
    mb = rng.choice([8, 16, 32, 64, 96])
    tool = rng.choice([["xz", "-6", "-T1"], ["xz", "-3", "-T2"], ["gzip", "-6"], ["gzip", "-9"], ["zstd", "-12"],
                       ["zstd", "-3", "-T2"]])
    run(["sh", "-c", "head -c %dM %s | %s -c > /dev/null" % (mb, data, " ".join(tool))], stop)
    pause(rng, 2, 35, stop)


class Sink:
    """A TCP server on loopback that reads and discards."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self.drain, args=(conn,), daemon=True).start()

    @staticmethod
    def drain(conn):
        with conn:
            while conn.recv(1 << 16):
                pass


def network_step(rng, stop, sink):
    block = os.urandom(1 << 16)
    with socket.create_connection(("127.0.0.1", sink.port)) as conn:
        if rng.random() < 0.6:  # a burst at full speed
            left = rng.randint(5, 400) << 20
            while left > 0 and not stop.is_set():
                conn.sendall(block)
                left -= len(block)
        else:  # a trickle
            rate = rng.uniform(0.2, 5.0) * (1 << 20)
            end = time.monotonic() + rng.uniform(10, 60)
            while time.monotonic() < end and not stop.is_set():
                conn.sendall(block)
                stop.wait(len(block) / rate)
    pause(rng, 1, 30, stop)


def tests_step(rng, stop):
    run([os.path.join(ROOT, ".venv", "bin", "python"), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         rng.choice(TESTS)], stop, cwd=ROOT)
    pause(rng, 2, 30, stop)


def work(name: str, rng: random.Random, stop: threading.Event, src: str, tmp: str) -> None:
    steps = {}
    if name in ("compile", "mixed"):
        steps["compile"] = lambda: compile_step(rng, stop, src)
    if name in ("compress", "mixed"):
        data = corpus(os.path.join(tmp, "corpus.bin"))
        steps["compress"] = lambda: compress_step(rng, stop, data)
    if name in ("network", "mixed"):
        sink = Sink()
        steps["network"] = lambda: network_step(rng, stop, sink)
    if name in ("tests", "mixed"):
        steps["tests"] = lambda: tests_step(rng, stop)
    names = sorted(steps)
    while steps and not stop.is_set():
        steps[rng.choice(names)]()


def write(out: str, name: str, rows: list) -> list[str]:
    paths = []
    for col, series in ((1, "cpu"), (2, "net"), (3, "mem")):
        path = os.path.join(out, "%s-%s.csv.gz" % (name, series))
        with gzip.open(path, "wt", compresslevel=9) as f:
            f.write("timestamp,value\n")
            for row in rows:
                f.write("%d,%s\n" % (row[0], row[col]))
        paths.append(path)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", choices=WORKS)
    ap.add_argument("--seconds", type=int, default=1500)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "traces"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--src", default=os.environ.get("MICROPYTHON_SRC", "/tmp/i15work/mpsrc"))
    ap.add_argument("--tmp", default="/tmp/i15work")
    args = ap.parse_args(argv)
    if args.work in ("compile", "mixed") and not os.path.isdir(os.path.join(args.src, "ports", "unix")):
        sys.stderr.write("record_trace: no MicroPython source at %s (--src)\n" % args.src)
        return 2
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.tmp, exist_ok=True)
    stop = threading.Event()
    rng = random.Random(args.seed)
    worker = threading.Thread(target=work, args=(args.work, rng, stop, args.src, args.tmp), daemon=True)
    worker.start()
    try:
        rows = record(args.seconds, stop)
    finally:
        stop.set()
        worker.join(30)
    for path in write(args.out, args.work, rows):
        print(path, len(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
