"""`edge-fleet-sim`: thousands of simulated devices publishing to a broker, as agents do.

    edge-fleet-sim --devices 1000 --broker mqtt://127.0.0.1:1883 --duration 60 [--report FILE]

Each device is one MQTT connection (fleetsim/mqtt.py) speaking the agent's protocol
(fleetsim/device.py) with values replayed from recorded agent output (fleetsim/replay.py). Devices
connect over `--ramp` seconds and make a batch every `--batch` seconds; `--restart-every S` makes
each device's agent restart (and `--reboot-every S` its machine reboot) at random, S seconds apart
on average. After `--duration` no new batch is made; the simulator waits up to `--drain` seconds
for the receipts of what is still undelivered, then prints one JSON line with the totals, and
writes every batch made (device, boot, seq, samples, first and last tick in ms, fate) to
`--report`, so a test or benchmark can check what arrived. `--processes N` splits the devices over
N processes (one event loop each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

from edge_wire.paho import parse_flag
from fleetsim.device import Device
from fleetsim.replay import DEFAULT, Recording


def parse_broker(url: str) -> tuple[str, int]:
    """(host, port) of --broker (edge_wire.broker's parser); the simulated devices speak plain MQTT."""
    host, port, tls = parse_flag(url, "--broker")
    if tls:
        raise ValueError("--broker: %r: the simulated devices speak plain MQTT, not mqtts://" % url)
    return host, port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-fleet-sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--broker", action="append", default=None, metavar="URL",
                   help="mqtt://host:port; repeat for a cluster (a device tries the next one when its broker goes)")
    p.add_argument("--topic-prefix", default="edge")
    p.add_argument("--device-prefix", default="sim-", help="device ids are PREFIX + a number")
    p.add_argument("--first", type=int, default=0, help="number of the first device")
    p.add_argument("--batch", type=float, default=10.0, help="seconds between a device's batches")
    p.add_argument("--ticks", type=int, default=10, help="recorded ticks per batch")
    p.add_argument("--stride", type=int, default=1, help="replay every N-th recorded 1 s tick (sampling every N s)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of batches")
    p.add_argument("--ramp", type=float, default=None, help="seconds over which devices connect (default: --batch)")
    p.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the last receipts")
    p.add_argument("--restart-every", type=float, default=0.0, metavar="S", help="mean seconds between agent restarts")
    p.add_argument("--reboot-every", type=float, default=0.0, metavar="S", help="mean seconds between reboots")
    p.add_argument("--classes", type=int, default=16, help="distinct value offsets among devices")
    p.add_argument("--recording", default=DEFAULT, help="recorded agent output to replay")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--report", help="write every batch made, and its fate, to this JSON file")
    p.add_argument("--seed", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        brokers = [parse_broker(u) for u in (args.broker or ["mqtt://127.0.0.1:1883"])]
    except ValueError as exc:
        print("edge-fleet-sim: %s" % exc, file=sys.stderr)
        return 2
    if args.processes > 1:
        return _split(args)
    _raise_file_limit(args.devices + 100)
    summary, batches = asyncio.run(simulate(args, brokers))
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"summary": summary, "batches": batches}, f, separators=(",", ":"))
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


def _raise_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(wanted, soft), hard), hard))
        except (ValueError, OSError):
            pass


async def simulate(args: argparse.Namespace, brokers: list[tuple[str, int]]) -> tuple[dict, list]:
    rng = random.Random(args.seed)
    recording = Recording(args.recording, args.ticks, args.classes, args.stride)
    loop = asyncio.get_running_loop()
    devices = [Device(args.first + i, "%s%05d" % (args.device_prefix, args.first + i), recording, brokers,
                      args.topic_prefix, args.batch) for i in range(args.devices)]
    ramp = args.batch if args.ramp is None else args.ramp
    started = time.monotonic()
    for i, device in enumerate(devices):  # connections spread over the ramp, first batches a batch later
        offset = ramp * i / max(1, len(devices))
        loop.call_later(offset, device.start, loop, args.batch)
    chaos = [asyncio.ensure_future(_restarts(devices, args, rng))] if args.restart_every or args.reboot_every else []
    await asyncio.sleep(ramp + args.duration)
    for task in chaos:
        task.cancel()
    for device in devices:
        device.stop_batches()
    drain_until = time.monotonic() + args.drain
    while time.monotonic() < drain_until and any(d.outbox.entries for d in devices):
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - started
    await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
    batches = []
    for d in devices:
        for boot, seq, samples, first, last in d.made:
            batches.append([d.name, boot, seq, samples, first, last, d.fate.get((boot, seq), "pending")])
    fates = [b[6] for b in batches]
    summary = {
        "devices": len(devices), "batches": len(batches), "samples": sum(b[3] for b in batches),
        "exported": fates.count("exported"), "dropped": fates.count("dropped"), "pending": fates.count("pending"),
        "samples_exported": sum(b[3] for b in batches if b[6] == "exported"),
        "sends": sum(d.sends for d in devices),
        "connects": sum(d.client.connects for d in devices), "connect_failures": sum(d.client.failures for d in devices),
        "restarts": sum(d.runs - 1 for d in devices), "reboots": sum(d.boots - 1 for d in devices),
        "seconds": round(elapsed, 1), "cpu_s": round(time.process_time(), 1),
    }
    return summary, batches


async def _restarts(devices: list[Device], args: argparse.Namespace, rng: random.Random) -> None:
    """Agent restarts and reboots at random across the fleet, `--restart-every` apart per device on average."""
    rates = [(args.restart_every, False), (args.reboot_every, True)]
    total = sum(len(devices) / every for every, _ in rates if every)
    while True:
        await asyncio.sleep(rng.expovariate(total))
        reboot = rng.random() < (len(devices) / args.reboot_every / total if args.reboot_every else 0)
        device = rng.choice(devices)
        asyncio.ensure_future(device.restart(reboot=reboot))


def _split(args: argparse.Namespace) -> int:
    """Run `--processes` copies of this command, each with its share of the devices, and merge."""
    n = args.processes
    tmp = tempfile.mkdtemp(prefix="fleetsim-")
    procs = []
    for k in range(n):
        count = args.devices // n + (1 if k < args.devices % n else 0)
        first = args.first + sum(args.devices // n + (1 if j < args.devices % n else 0) for j in range(k))
        argv = [sys.executable, "-m", "fleetsim.cli", "--devices", str(count), "--first", str(first),
                "--processes", "1", "--report", os.path.join(tmp, "%d.json" % k)]
        skip = {"devices", "first", "processes", "report", "broker"}
        for key, value in vars(args).items():
            if key in skip or value is None:
                continue
            argv += ["--" + key.replace("_", "-"), str(value)]
        for url in args.broker or []:
            argv += ["--broker", url]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
    codes = [p.wait() for p in procs]
    if any(codes):
        print("edge-fleet-sim: a worker failed (%s)" % codes, file=sys.stderr)
        return 1
    summary: dict = {}
    batches: list = []
    for k in range(n):
        with open(os.path.join(tmp, "%d.json" % k)) as f:
            part = json.load(f)
        os.remove(os.path.join(tmp, "%d.json" % k))
        batches += part["batches"]
        for key, value in part["summary"].items():
            summary[key] = max(summary.get(key, 0), value) if key == "seconds" else summary.get(key, 0) + value
    os.rmdir(tmp)
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"summary": summary, "batches": batches}, f, separators=(",", ":"))
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
