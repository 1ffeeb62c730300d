"""Gateway decode + validate + convert throughput, in samples per second on one core.

    .venv/bin/python bench/gateway_throughput.py [--seconds 60] [--batches 2] [--cpu N]

Realistic batches: the real agent (`bench/wire_size.py`'s recorder: `edge_agent.agent.Agent`, the
project's /proc collectors, 1 s interval, 10 s batches) records `--batches` batches of this
machine's stream; each is kept plain and, from the same builder, with a deflated body.

The measured code is the gateway's own: `gateway.decode.resolve.Dictionaries.resolve` (size limit, msgpack
decode, `edge_wire.decode.parse_batch`, dictionary lookup, value checks) and the conversion to the
bytes the OTLP exporters send: `gateway.convert.otlpwire.encode` (what the pipeline runs: protobuf written
directly, issue 18) and, for comparison, `gateway.convert.otlp.to_request` + `SerializeToString()` (message
objects, the reference the other is checked against byte for byte). The pipeline
(`gateway/export/pipeline.py`) converts up to 32 queued batches into one request, so conversion is
measured with 1 and with 32 batches per request.

The gateway always decodes msgpack with the C extension (`gateway.decode.resolve.unpack`); it offers no
switch. For the comparison with the pure-Python decoder the bench replaces `gateway.decode.resolve.unpack`
with one built on `edge_wire.unpack.unpackb` for those variants only.

Single thread, pinned to one CPU; throughput is samples per CPU second of this process
(`time.process_time`), which other load on a shared machine disturbs less than wall time (also
shown). Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import gateway.decode.resolve as gateway_decode  # noqa: E402
from bench.wire_size import deflated_twin, machine, record  # noqa: E402
from edge_wire.decode import decode  # noqa: E402
from edge_wire.unpack import unpackb  # noqa: E402
from gateway.convert.otlp import to_request  # noqa: E402
from gateway.convert.otlpwire import encode  # noqa: E402
from gateway.decode.resolve import Dictionaries  # noqa: E402

C_UNPACK = gateway_decode.unpack


def pure_unpack(payload):
    """What the gateway would do with the pure decoder: same limits, same error type on failure."""
    return unpackb(payload)


def run_for(seconds, work, samples_per_call):
    """Call `work()` repeatedly for about `seconds`; returns (calls, cpu_s, wall_s)."""
    work()  # warm up
    calls = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline = wall0 + seconds
    while True:
        for _ in range(5):
            work()
        calls += 5
        if time.perf_counter() >= deadline:
            break
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return calls, cpu, wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="total measuring time over all variants (default 60)")
    parser.add_argument("--batches", type=int, default=2, help="10 s batches of real stream to record first (default 2)")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one)")
    args = parser.parse_args(argv)

    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    started = time.time()
    print("recording %d x 10 s of this machine's stream with the real agent ..." % args.batches, file=sys.stderr, flush=True)
    agent, recorded = record(10.0 * max(1, args.batches), 1.0, 10.0, "pi-0001")
    birth = recorded[-1].birth
    device = decode(birth)["dev"]
    plain = [r.payload for r in recorded]
    deflated = [deflated_twin(r) for r in recorded]
    samples = sum(r.samples for r in recorded)
    per_batch = samples / len(recorded)

    dictionaries = Dictionaries()
    for r in dict((r.birth, r) for r in recorded).values():
        dictionaries.add_birth(device, r.birth)
    resolved = [dictionaries.resolve(device, p) for p in plain]
    group32 = (resolved * (32 // len(resolved) + 1))[:32]

    def resolve_all(payloads):
        def work():
            for p in payloads:
                dictionaries.resolve(device, p)
        return work

    def end_to_end(payloads):
        def work():
            for p in payloads:
                to_request([dictionaries.resolve(device, p)]).SerializeToString()
        return work

    def convert(group):
        def work():
            to_request(group).SerializeToString()
        return work

    def convert_only(group):
        def work():
            to_request(group)
        return work

    def encoded(group):
        def work():
            encode(group).SerializeToString()
        return work

    def end_to_end_encoded(payloads):
        def work():
            encode([dictionaries.resolve(device, p) for p in payloads]).SerializeToString()
        return work

    n = len(recorded)
    variants = [
        # name, unpack, work, samples per call
        ("decode+validate, plain, msgpack C", C_UNPACK, resolve_all(plain), samples),
        ("decode+validate, deflated, msgpack C", C_UNPACK, resolve_all(deflated), samples),
        ("decode+validate, plain, pure umsgpack", pure_unpack, resolve_all(plain), samples),
        ("decode+validate, deflated, pure umsgpack", pure_unpack, resolve_all(deflated), samples),
        ("to_request only (1 batch/request)", C_UNPACK, convert_only(resolved[:1]), resolved[0].samples()),
        ("convert+serialize (1 batch/request)", C_UNPACK, convert(resolved[:1]), resolved[0].samples()),
        ("convert+serialize (32 batches/request)", C_UNPACK, convert(group32), sum(r.samples() for r in group32)),
        ("all: decode+validate+convert+serialize, plain", C_UNPACK, end_to_end(plain), samples),
        ("all: decode+validate+convert+serialize, deflated", C_UNPACK, end_to_end(deflated), samples),
        ("otlpwire encode (1 batch/request)", C_UNPACK, encoded(resolved[:1]), resolved[0].samples()),
        ("otlpwire encode (32 batches/request)", C_UNPACK, encoded(group32), sum(r.samples() for r in group32)),
        ("all with otlpwire: decode+validate+encode, plain", C_UNPACK, end_to_end_encoded(plain), samples),
        ("all with otlpwire: decode+validate+encode, deflated", C_UNPACK, end_to_end_encoded(deflated), samples),
    ]
    each = args.seconds / len(variants)
    results = []
    for name, unpack, work, per_call in variants:
        gateway_decode.unpack = unpack
        try:
            calls, cpu_s, wall_s = run_for(each, work, per_call)
        finally:
            gateway_decode.unpack = C_UNPACK
        results.append({"variant": name, "samples_per_cpu_s": round(calls * per_call / cpu_s),
                        "samples_per_wall_s": round(calls * per_call / wall_s),
                        "batches_per_cpu_s": round(calls * per_call / cpu_s / per_batch, 1),
                        "us_per_sample": round(cpu_s / (calls * per_call) * 1e6, 3), "calls": calls})
        print("  %-50s %10d samples/CPU-s" % (name, results[-1]["samples_per_cpu_s"]), file=sys.stderr, flush=True)

    print("gateway throughput: %d recorded batch(es), %.0f samples per batch (%d ticks at 1 s, %d series), "
          "plain %d bytes, deflated %d bytes (mean), one thread pinned to CPU %d"
          % (n, per_batch, recorded[0].ticks, len(agent.table), sum(map(len, plain)) / n,
             sum(map(len, deflated)) / n, cpu))
    print("machine: %s" % machine())
    print()
    print("| step | samples/s (CPU) | samples/s (wall) | batches/s (CPU) | us/sample |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print("| %s | %d | %d | %.1f | %.3f |" % (r["variant"], r["samples_per_cpu_s"], r["samples_per_wall_s"],
                                                r["batches_per_cpu_s"], r["us_per_sample"]))
    by = dict((r["variant"], r) for r in results)
    c_plain = by["decode+validate, plain, msgpack C"]["samples_per_cpu_s"]
    pure_plain = by["decode+validate, plain, pure umsgpack"]["samples_per_cpu_s"]
    print()
    print("decode+validate with the msgpack C extension is %.1fx the pure umsgpack decoder (plain)"
          % (c_plain / pure_plain))
    figures = {
        "bench": "gateway_throughput", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": args.seconds, "recorded_batches": args.batches, "cpu": cpu, "batches": n,
        "samples_per_batch": per_batch, "results": results, "c_over_pure_decode": round(c_plain / pure_plain, 2),
        "machine": machine(),
    }
    print(json.dumps(figures, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
