"""A simulated fleet through a real broker and the real gateway: throughput per core, latency, memory.

    .venv/bin/python bench/fleet.py [--devices 1000,10000] [--batch 10] [--seconds 60]
                                    [--saturate] [--replicas 1] [--sim-processes 1]

Per scenario, all on loopback: mosquitto (testbed/mosquitto.py) or, with `--rabbitmq N`, a RabbitMQ
cluster of N nodes (testbed/rabbitmq.py; the gateways consume its quorum queue over AMQP and the
devices spread over the nodes' MQTT listeners), `edge-gateway run` process(es)
exporting OTLP/HTTP to a receiver in this process that stores each request's bytes and arrival
time, and `edge-fleet-sim` with N devices (one MQTT connection each, the agent's protocol and
receipts, recorded values). The gateway is pinned to the last CPU, broker and simulator to the
others where there are any (`--spread`: nothing pinned). `--baseline REV` runs the gateway of
another git revision first in each scenario (before/after in one run); `--profile PREFIX` runs the
gateway under cProfile (bench/profiled.py).

Figures, over the window from the first batch to the end of the run:
- exported samples/s and the gateway's CPU (utime + stime of its process from /proc), hence samples
  per gateway CPU-second ("per core", end to end: MQTT intake, decode, convert, export, receipts);
- latency per sample from its tick to the receiver's arrival of the request holding it (p50, p99),
  and from a batch's last tick (about when it is published) to that arrival;
- the gateway's RSS before any device and at the end; the difference per device;
- the check: every batch the simulator made arrived once (fleetsim/check.py), no sample missing.

`--saturate` sends one batch per device per second (instead of every `--batch` s) of the same 10
ticks, to find where one gateway process saturates. Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.wire_size import machine  # noqa: E402
from fleetsim.check import Tally, compare  # noqa: E402
from testbed.mosquitto import free_port, start_mosquitto, stop  # noqa: E402
from testbed.rabbitmq import Cluster  # noqa: E402

BIN = os.path.dirname(sys.executable)
TICK_S = os.sysconf("SC_CLK_TCK")


class Receiver:
    """OTLP/HTTP receiver that keeps (arrival, bytes) and parses nothing while the run goes on."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/metrics":
                    receiver.requests.append((time.time(), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def cpu_s(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK_S


def group_cpu_s(pgid: int) -> float:
    """CPU seconds of every process in a process group (a RabbitMQ node: its script, the VM, helpers)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / TICK_S
    return total


def rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(pairs: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of weighted values [(value, weight)]."""
    pairs = sorted(pairs)
    total = sum(w for _, w in pairs)
    running = 0.0
    for value, weight in pairs:
        running += weight
        if running >= q * total:
            return value
    return pairs[-1][0] if pairs else float("nan")


def scenario(tmp: str, devices: int, batch_s: float, seconds: float, replicas: int, sim_processes: int,
             saturate: bool, queue: int, rabbitmq: int = 0, stride: int = 1, source: str | None = None,
             profile: str | None = None, gateway_args: list[str] | None = None, spread: bool = False) -> dict:
    cluster = None
    if rabbitmq:
        cluster = Cluster(tmp, nodes=rabbitmq).start()
        intake = [a for node in cluster.nodes for a in ("--amqp", node.amqp_url)]
        brokers = [a for node in cluster.nodes for a in ("--broker", node.mqtt_url)]

        def broker_cpu() -> float:
            return sum(group_cpu_s(node.proc.pid) for node in cluster.nodes)
    else:
        broker, port = start_mosquitto(tmp, extra_conf="max_queued_messages 100000\nmax_inflight_messages 0\n")
        intake = ["--broker", "mqtt://127.0.0.1:%d" % port]
        brokers = intake

        def broker_cpu() -> float:
            return cpu_s(broker.pid)
    receiver = Receiver()
    cpus = sorted(os.sched_getaffinity(0))
    gateway_cpu, other_cpus = {cpus[-1]}, set(cpus[:-1]) or {cpus[-1]}
    if spread:  # every process on every CPU: the gateways may use what the simulator and broker leave
        gateway_cpu = other_cpus = set(cpus)
    gateways = []
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    if source:  # the gateway of another revision (--baseline): its package first on the path
        env["PYTHONPATH"] = source + os.pathsep + env.get("PYTHONPATH", "")
    for k in range(replicas):
        if profile:  # cProfile in every thread of the gateway (bench/profiled.py)
            command = [sys.executable, os.path.join(HERE, "profiled.py"), "%s-%d.pstats" % (profile, k),
                       "gateway.cli:main"]
        else:
            command = [sys.executable, "-m", "gateway.cli"]
        argv = [*command, "run", *intake, "--client-id",
                "bench-gw-%d" % k, "--metrics-port", str(free_port()), "--queue-size", str(queue),
                "--log-format", "json", *(gateway_args or [])] + (["--share-group", "bench"] if replicas > 1 else [])
        log = open(os.path.join(tmp, "gateway-%d.log" % k), "ab")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        os.sched_setaffinity(proc.pid, gateway_cpu)
        gateways.append(proc)
    time.sleep(3)
    rss0 = [rss_kb(g.pid) for g in gateways]
    for g in gateways:
        with open(os.path.join(tmp, "gateway-%d.log" % gateways.index(g)), "rb") as f:
            if b'"started"' not in f.read():
                raise RuntimeError("the gateway did not start, see its log")
    report = os.path.join(tmp, "report-%d.json" % devices)
    interval = 1.0 if saturate else batch_s
    ramp = max(min(interval, 10.0), devices / 500)  # births and connections spread: 500 devices a second
    sim = subprocess.Popen([BIN + "/edge-fleet-sim", "--devices", str(devices), *brokers,
                            "--batch", str(interval), "--duration", str(seconds), "--stride", str(stride),
                            "--ticks", str(max(1, round(batch_s / stride))),
                            "--ramp", str(ramp), "--drain", "60", "--processes", str(sim_processes),
                            "--report", report], stdout=subprocess.PIPE, text=True)
    for pid in [sim.pid]:
        try:
            os.sched_setaffinity(pid, other_cpus)
        except OSError:
            pass
    time.sleep(ramp + interval)  # devices connected and their first batches on the way
    window0 = time.time()
    cpu0 = [cpu_s(g.pid) for g in gateways]
    broker0 = broker_cpu()
    requests0 = len(receiver.requests)
    time.sleep(max(1.0, seconds - interval))
    window1 = time.time()
    cpu1 = [cpu_s(g.pid) for g in gateways]
    broker1 = broker_cpu()
    requests1 = len(receiver.requests)
    rss1 = [rss_kb(g.pid) for g in gateways]
    out, _ = sim.communicate(timeout=seconds + 300)
    summary = json.loads(out.strip().splitlines()[-1])
    for g in gateways:
        stop(g, 15)
    if cluster is not None:
        cluster.stop()
    else:
        stop(broker)
    receiver.stop()
    with open(report) as f:
        batches = json.load(f)["batches"]
    tally = Tally()
    arrival: dict[tuple[str, int], float] = {}
    window_samples = 0
    for i, (arrived, body) in enumerate(receiver.requests):
        points, keys = tally.add(body)
        if requests0 <= i < requests1:
            window_samples += points
        for key in keys:
            arrival.setdefault(key, arrived)
    check = compare(batches, tally)
    sample_lat, batch_lat = [], []
    for device, _boot, _seq, samples, first, last, _fate in batches:
        arrived = arrival.get((device, last))
        if arrived is None:
            continue
        batch_lat.append((arrived - last / 1000, 1))
        ticks = max(2, round(batch_s / stride))
        for k in range(ticks):  # samples spread over the batch's ticks
            t = (first + (last - first) * k / (ticks - 1)) / 1000
            sample_lat.append((arrived - t, samples / ticks))
    gw_cpu = sum(b - a for a, b in zip(cpu0, cpu1, strict=True))
    wall = window1 - window0
    return {
        "devices": devices, "batch_s": interval, "sample_s": stride, "replicas": replicas, "seconds": round(wall, 1),
        "offered_samples_per_s": round(summary["samples"] / max(1e-9, summary["seconds"])),
        "exported_samples_per_s": round(window_samples / wall),
        "broker": "rabbitmq x%d" % rabbitmq if rabbitmq else "mosquitto",
        "gateway_cpu_cores": round(gw_cpu / wall, 2), "broker_cpu_cores": round((broker1 - broker0) / wall, 2),
        "samples_per_gateway_cpu_s": round(window_samples / gw_cpu) if gw_cpu else None,
        "latency_sample_p50_s": round(percentile(sample_lat, 0.5), 3),
        "latency_sample_p99_s": round(percentile(sample_lat, 0.99), 3),
        "latency_batch_p50_s": round(percentile(batch_lat, 0.5), 3),
        "latency_batch_p99_s": round(percentile(batch_lat, 0.99), 3),
        "gateway_rss_mib_start": round(sum(rss0) / 1024, 1), "gateway_rss_mib_end": round(sum(rss1) / 1024, 1),
        "gateway_rss_kib_per_device": round((sum(rss1) - sum(rss0)) / devices, 2),
        "sim": summary, "check": check,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="1000,10000", help="comma-separated fleet sizes")
    parser.add_argument("--batch", type=float, default=10.0, help="seconds between a device's batches")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of batches per scenario")
    parser.add_argument("--saturate", action="store_true", help="a batch per device per second")
    parser.add_argument("--stride", type=int, default=1, metavar="S",
                        help="devices sample every S s (every S-th tick of the 1 s recording)")
    parser.add_argument("--replicas", type=int, default=1, help="gateway processes (a share group when > 1)")
    parser.add_argument("--sim-processes", type=int, default=1)
    parser.add_argument("--queue", type=int, default=256, help="the gateway's --queue-size")
    parser.add_argument("--rabbitmq", type=int, default=0, metavar="N",
                        help="a RabbitMQ cluster of N nodes (testbed/rabbitmq.py) instead of mosquitto; gateways on AMQP")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the gateway of git revision REV, before this tree's, in each scenario")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="profile the gateway (bench/profiled.py): PREFIX-<replica>.pstats per scenario")
    parser.add_argument("--spread", action="store_true",
                        help="do not pin: gateways, broker and simulator share every CPU (several --replicas)")
    parser.add_argument("--gateway-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for `edge-gateway run` (repeat)")
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fleet-baseline-") as base:
        sources: list[tuple[str, str | None]] = [("this tree", None)]
        if args.baseline:
            archive = subprocess.run(["git", "-C", ROOT, "archive", args.baseline], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
            revision = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", args.baseline], check=True,
                                      capture_output=True, text=True).stdout.strip()
            sources.insert(0, (revision, base))
        for devices in [int(n) for n in args.devices.split(",")]:
            for label, source in sources:
                with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
                    print("fleet of %d devices, gateway of %s ..." % (devices, label), file=sys.stderr, flush=True)
                    profile = "%s-%d-%s" % (args.profile, devices, label.replace(" ", "-")) if args.profile else None
                    rows.append(scenario(tmp, devices, args.batch, args.seconds, args.replicas, args.sim_processes,
                                         args.saturate, args.queue, args.rabbitmq, args.stride, source, profile,
                                         args.gateway_arg, args.spread))
                    rows[-1]["gateway"] = label
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("machine: %s" % machine())
    print()
    print("| gateway | broker | devices | batch s | sample s | replicas | offered samples/s | exported samples/s | gateway cores | broker "
          "cores | samples/s per gateway core | sample→export p50 / p99 s | batch→export p50 / p99 s | gateway RSS "
          "MiB (start → end) | KiB per device | batches made / received / missing / doubled |")
    print("|---|---|" + "---:|" * 14)
    for r in rows:
        c = r["check"]
        print("| %s | %s | %d | %g | %d | %d | %d | %d | %.2f | %.2f | %s | %.2f / %.2f | %.2f / %.2f | %.1f → %.1f | %.1f | "
              "%d / %d / %d / %d |" % (
            r["gateway"], r["broker"], r["devices"], r["batch_s"], r["sample_s"], r["replicas"], r["offered_samples_per_s"], r["exported_samples_per_s"],
            r["gateway_cpu_cores"], r["broker_cpu_cores"], r["samples_per_gateway_cpu_s"], r["latency_sample_p50_s"],
            r["latency_sample_p99_s"], r["latency_batch_p50_s"], r["latency_batch_p99_s"],
            r["gateway_rss_mib_start"], r["gateway_rss_mib_end"], r["gateway_rss_kib_per_device"],
            c["batches_made"], c["batches_received"], c["batches_missing"], c["batches_duplicated"]))
    print(json.dumps({"bench": "fleet", "date": started, "args": vars(args), "rows": rows, "machine": machine()},
                     separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
