"""The gateway's conversion to OTLP, this tree against other revisions, in one run: samples/s per core.

    .venv/bin/python bench/gateway_conversion.py --rev 093392e --rev main [--seconds 120] [--rounds 4]

Batches: `--batches` real 10 s batches of this machine's stream, recorded once with this tree's agent
(`bench/wire_size.py`'s recorder, as bench/gateway_throughput.py does); wire format v1, which every
revision compared decodes. Each revision (`git archive REV`, into a temporary folder) and this tree
then run the same measurement with their own gateway code, in a child process pinned to one CPU:

- convert: resolved batches -> the bytes that revision's pipeline sends, 32 batches per request (as
  the pipeline groups them): `gateway.otlp.to_request(...).SerializeToString()` before issue 18,
  `otlpwire.encode(...)` since (found in either layout: gateway/otlpwire.py, gateway/convert/);
- all: decode + validate (`Dictionaries.resolve`, msgpack C, found in either layout) and convert,
  the recorded payloads as one request.

The trees take turns (`--rounds` rounds, each tree once a round, in the order given) so load that
comes and goes on a shared machine falls on all of them; a figure is the samples of all its rounds
over their CPU seconds (`time.process_time` of the child). Prints a table, this tree's ratio to each
revision, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# the child: measures one tree's gateway on the recorded batches; its only import path is that tree
CHILD = r'''
import json, os, pickle, sys, time
tree, data, seconds, cpu = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
sys.path[:0] = [tree]
os.sched_setaffinity(0, {cpu})
with open(data, "rb") as f:
    device, births, payloads, samples = pickle.load(f)
try:
    from gateway.decode.resolve import Dictionaries
except ImportError:
    from gateway.decode import Dictionaries
try:
    from gateway.convert.otlpwire import encode
    path = "gateway.convert.otlpwire.encode"
except ImportError:
    try:
        from gateway.otlpwire import encode
        path = "gateway.otlpwire.encode"
    except ImportError:
        from gateway.otlp import to_request as encode
        path = "gateway.otlp.to_request"
import gateway
assert os.path.dirname(os.path.dirname(os.path.abspath(gateway.__file__))) == os.path.abspath(tree), gateway.__file__
dictionaries = Dictionaries()
for birth in births:
    dictionaries.add_birth(device, birth)
resolved = [dictionaries.resolve(device, p) for p in payloads]
group = (resolved * (32 // len(resolved) + 1))[:32]
group_samples = sum(r.samples() for r in group)

def convert():
    encode(group).SerializeToString()

def everything():
    encode([dictionaries.resolve(device, p) for p in payloads]).SerializeToString()

out = {"encode": path}
for name, work, per_call in (("convert", convert, group_samples), ("all", everything, samples)):
    work()
    calls = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        work()
        calls += 1
    out[name] = [calls * per_call, time.process_time() - cpu0]
print(json.dumps(out))
'''


def export(rev, into):
    """`git archive REV` unpacked into `into`; the revision's short hash."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev], check=True, capture_output=True,
                          text=True).stdout.strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", action="append", default=[], metavar="REV",
                        help="a revision to compare with this tree (repeat; the first is the baseline)")
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="measuring time per tree over all rounds and both steps (default 120)")
    parser.add_argument("--rounds", type=int, default=4, help="turns each tree takes (default 4)")
    parser.add_argument("--batches", type=int, default=2, help="10 s batches of real stream to record (default 2)")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin the children to (default: the last one)")
    args = parser.parse_args(argv)

    from bench.wire_size import machine, record
    from edge_wire.decode import decode

    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    started = time.time()
    print("recording %d x 10 s of this machine's stream with the real agent ..." % args.batches, file=sys.stderr,
          flush=True)
    agent, recorded = record(10.0 * max(1, args.batches), 1.0, 10.0, "pi-0001")
    device = decode(recorded[-1].birth)["dev"]
    births = list(dict((r.birth, None) for r in recorded))
    payloads = [r.payload for r in recorded]
    samples = sum(r.samples for r in recorded)
    with tempfile.TemporaryDirectory(prefix="gateway-conversion-") as tmp:
        data = os.path.join(tmp, "batches.pickle")
        with open(data, "wb") as f:
            pickle.dump((device, births, payloads, samples), f)
        trees = []
        for i, rev in enumerate(args.rev):
            folder = os.path.join(tmp, "rev%d" % i)
            os.mkdir(folder)
            trees.append(("%s (%s)" % (rev, export(rev, folder)), folder))
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "gateway", "edge_wire"],
                               capture_output=True, text=True).stdout.strip()
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        trees.append(("this tree (%s%s)" % (head, ", modified" if dirty else ""), ROOT))
        totals = {name: {"convert": [0, 0.0], "all": [0, 0.0]} for name, _ in trees}
        encoders = {}
        each = args.seconds / args.rounds / 2
        for turn in range(args.rounds):
            for name, folder in trees:
                proc = subprocess.run([sys.executable, "-c", CHILD, folder, data, str(each), str(cpu)],
                                      capture_output=True, text=True, cwd=tmp)
                if proc.returncode:
                    sys.stderr.write(proc.stderr)
                    raise SystemExit("the measurement of %s failed" % name)
                got = json.loads(proc.stdout)
                encoders[name] = got["encode"]
                for step in ("convert", "all"):
                    totals[name][step][0] += got[step][0]
                    totals[name][step][1] += got[step][1]
                print("  round %d %-40s convert %9.0f  all %9.0f samples/CPU-s" % (
                    turn + 1, name, got["convert"][0] / got["convert"][1], got["all"][0] / got["all"][1]),
                    file=sys.stderr, flush=True)
    rates = {name: {step: round(totals[name][step][0] / totals[name][step][1]) for step in ("convert", "all")}
             for name, _ in trees}
    names = [name for name, _ in trees]
    print("gateway conversion: %d recorded batch(es), %.0f samples per batch, %d series; %d rounds; one CPU (%d)"
          % (len(recorded), samples / len(recorded), len(agent.table), args.rounds, cpu))
    print("machine: %s" % machine())
    print()
    print("| tree | OTLP encoder | convert, 32 batches/request: samples/s (CPU) | µs/sample "
          "| decode+validate+convert: samples/s (CPU) | µs/sample |")
    print("|---|---|---:|---:|---:|---:|")
    for name in names:
        r = rates[name]
        print("| %s | `%s` | %d | %.3f | %d | %.3f |" % (name, encoders[name], r["convert"], 1e6 / r["convert"],
                                                        r["all"], 1e6 / r["all"]))
    print()
    for base in names[:-1]:
        print("this tree / %s: convert %.2fx, decode+validate+convert %.2fx" % (
            base, rates[names[-1]]["convert"] / rates[base]["convert"], rates[names[-1]]["all"] / rates[base]["all"]))
    figures = {"bench": "gateway_conversion", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
               "seconds": args.seconds, "rounds": args.rounds, "cpu": cpu, "samples_per_batch": samples / len(recorded),
               "trees": names, "encoders": encoders, "samples_per_cpu_s": rates, "machine": machine()}
    print(json.dumps(figures, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
