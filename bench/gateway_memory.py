"""What the gateway keeps per device, measured with tracemalloc on the gateway's own core.

    .venv/bin/python bench/gateway_memory.py [--devices 2000] [--batches 6] [--series-scale 1]

The real `gateway.app.Gateway` with its `Dictionaries`, dedupe tracker, metrics and export pipeline
(a null exporter that accepts every request) is fed, per device, the birth and `--batches` data
batches of fleetsim/recording.msgpack (a real agent's 69 series; `--series-scale 2` announces each
series twice over, 138) with the device id replaced, through the same calls MQTT intake makes. After
the pipeline settled everything, the Python heap it holds (tracemalloc) is divided by the devices,
and split by where it was allocated (the module of the allocating frame). The process's RSS growth
is shown too (it also counts freed memory the allocator kept).

`--time` instead measures CPU: no tracemalloc, the births first, then the data batches, and the
process's CPU seconds (`time.process_time`: the calling thread and the pipeline's, which encodes)
per batch — the gateway's per-batch cost without MQTT.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import tracemalloc
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from edge_wire.decode import decode  # noqa: E402
from edge_wire.pack import packb  # noqa: E402
from fleetsim.replay import DEFAULT  # noqa: E402
from gateway.app import Gateway  # noqa: E402
from gateway.cli import GC_THRESHOLD  # noqa: E402
from gateway.decode import records  # noqa: E402
from gateway.decode.dedupe import SeqTracker  # noqa: E402
from gateway.decode.resolve import Dictionaries  # noqa: E402
from gateway.export.exporter import OK  # noqa: E402
from gateway.export.pipeline import ExportPipeline  # noqa: E402
from gateway.ops.metrics import GatewayMetrics  # noqa: E402


class NullExporter:
    def send(self, request):
        return OK

    def close(self):
        pass


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def device_payloads(recording: dict, device: str, batches: int, series_scale: int) -> tuple[bytes, list[bytes]]:
    birth = decode(recording["births"][-1])
    birth["dev"] = device
    if series_scale > 1:  # each series again under another attribute value: a larger device
        extra = []
        top = max(s[0] for s in birth["series"]) + 1
        for k in range(1, series_scale):
            for s in birth["series"]:
                attrs = dict(s[4], copy=str(k))
                extra.append([s[0] + k * top, s[1], s[2], s[3], attrs, s[5], s[6], s[7]])
        birth["series"] = birth["series"] + extra
    data = []
    for payload in recording["batches"][-batches:]:
        obj = decode(payload)
        obj[2] = device
        if series_scale > 1:
            top = max(c[0] for c in obj[7][1]) + 1
            obj[7][1] = obj[7][1] + [[c[0] + k * top] + c[1:] for k in range(1, series_scale) for c in obj[7][1]]
        data.append(packb(obj))
    return packb(birth), data


def timed(names: list[str], template: bytes, birth: bytes, data: list[bytes], threshold: int) -> int:
    gc.set_threshold(threshold, 20, 100)  # as `edge-gateway run` does (gateway/cli.py GC_THRESHOLD)
    dictionaries = Dictionaries()
    metrics = GatewayMetrics(devices=lambda: len(dictionaries.devices()))
    pipeline = ExportPipeline(NullExporter(), metrics, queue_size=256).start()
    gateway = Gateway(dictionaries, pipeline, metrics, SeqTracker())
    gateway.publish_receipt = lambda device, payload: True  # receipts made, not sent
    fleet = [(name, [p.replace(template, name.encode()) for p in data]) for name in names]
    for name in names:
        gateway.on_birth(name, birth.replace(template, name.encode()))
    samples = sum(len(c) - 2 for p in data for c in decode(p)[7][1]) / len(data)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for k in range(len(data)):
        for name, payloads in fleet:
            gateway.on_data(name, payloads[k], lambda: None)
    while pipeline.depth():
        time.sleep(0.01)
    pipeline.stop()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    batches = len(names) * len(data)
    print("gateway core without MQTT: %d batches of %.0f samples: %.3f ms CPU per batch, %.0f samples per CPU-s "
          "(wall %.3f ms per batch)" % (batches, samples, cpu * 1000 / batches, batches * samples / cpu,
                                        wall * 1000 / batches))
    print(json.dumps({"bench": "gateway_memory --time", "batches": batches, "samples_per_batch": samples,
                      "cpu_ms_per_batch": round(cpu * 1000 / batches, 3),
                      "samples_per_cpu_s": round(batches * samples / cpu)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=6, help="data batches per device (<= 18)")
    parser.add_argument("--series-scale", type=int, default=1)
    parser.add_argument("--time", action="store_true", help="CPU per batch, without tracemalloc")
    parser.add_argument("--gc-threshold", type=int, default=GC_THRESHOLD,
                        help="the cyclic collector's youngest-generation threshold for --time (Python's default: 700)")
    args = parser.parse_args(argv)
    with open(DEFAULT, "rb") as f:
        recording = decode(f.read(), max_size=1 << 24)
    names = ["dev-%06d" % i for i in range(args.devices)]
    # one device's payloads as a template, renamed per device (msgpack str of equal length: same bytes)
    template_birth, template_data = device_payloads(recording, names[0], args.batches, args.series_scale)
    template = names[0].encode()

    if args.time:
        return timed(names, template, template_birth, template_data, args.gc_threshold)
    gc.collect()
    rss0 = rss_kb()
    tracemalloc.start(1)
    base = tracemalloc.take_snapshot()
    dictionaries = Dictionaries()
    metrics = GatewayMetrics(devices=lambda: len(dictionaries.devices()))
    pipeline = ExportPipeline(NullExporter(), metrics, queue_size=256).start()
    gateway = Gateway(dictionaries, pipeline, metrics, SeqTracker())
    started = time.perf_counter()
    for name in names:
        encoded = name.encode()
        gateway.on_birth(name, template_birth.replace(template, encoded))
        for payload in template_data:
            gateway.on_data(name, payload.replace(template, encoded), lambda: None)
    while pipeline.depth():
        time.sleep(0.05)
    time.sleep(0.3)
    pipeline.stop()
    elapsed = time.perf_counter() - started
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    rss1 = rss_kb()
    by_module: Counter = Counter()
    total = 0
    for stat in snapshot.compare_to(base, "filename"):
        path = stat.traceback[0].filename
        module = os.path.relpath(path, ROOT) if path.startswith(ROOT) else os.path.basename(path)
        by_module[module] += stat.size_diff
        total += stat.size_diff
    per_device = total / args.devices
    series = len(dictionaries.latest(names[0]).series)
    print("gateway memory: %d devices, %d series each, %d batches each (%.1f s)" % (
        args.devices, series, args.batches, elapsed))
    print()
    print("| held by | bytes per device |")
    print("|---|---:|")
    for module, size in by_module.most_common(12):
        print("| %s | %.0f |" % (module, size / args.devices))
    print("| **total (Python heap, tracemalloc)** | **%.0f** |" % per_device)
    print("| process RSS growth | %.0f |" % ((rss1 - rss0) * 1024 / args.devices))
    print()
    print("shared series records in the fleet: %d" % records.shared_series())
    print(json.dumps({"bench": "gateway_memory", "devices": args.devices, "series": series,
                      "batches": args.batches, "bytes_per_device": round(per_device),
                      "rss_bytes_per_device": round((rss1 - rss0) * 1024 / args.devices),
                      "by_module": {k: round(v / args.devices) for k, v in by_module.most_common(12)}},
                     separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
