"""The sampler's cost on the device: CPU per tick and heap, today's agent against this tree's.

    .venv/bin/python bench/sampling_cost.py [--base COMMIT] [--ticks 300] [--rounds 5] [--cpython]

Runs the agent's core in-process under the real `micropython` (the unix port, `-X heapsize=1M` so
that no MemoryError changes what is timed): the real /proc collectors of this machine (cpu with
per-CPU series, memory, network on lo and eth0), the sampler, wire.BatchBuilder, and Agent.flush
every 10 ticks (for `adaptive`: the look-ahead's thinning, then the encoding into wire.Chunks), the
transport acknowledging at once. The wall clock the batch timestamps come from advances one second
a tick (edge_agent.agent.wall_ms is replaced), the ticks themselves run back to back.

The trees: BASE (default: `git merge-base HEAD main`; the issue's "today" is 5485987, the tree issue 15 was
filed against, whose default policy is `fixed`; its module layout predates issue 17 and is imported as such),
exported with `git archive`, and the working tree. The configurations, each in its own interpreter:
    base fixed       today's default (agent.EveryInterval)
    base adaptive    today's adaptive policy (a band around the last sent value)
    fixed            this tree's default (agent.EveryInterval)
    adaptive         the batch look-ahead
    load+adaptive    the same with the load watch (edge_agent.sampling.loadwatch) read at every base interval
Rounds are interleaved (A B C D E, A B C D E, ...) and the median is reported: the machine is shared.

Figures per configuration: CPU per tick (us: the loop's time / ticks, flushes included), the flush
alone (us), the heap after a collection (B) with the agent warmed up, the heap the sampler adds per
series (B: steady heap minus its own tree's `fixed`, minus the sampling module's own code, over the
series), and the bytes allocated during one flush with the collector off (B: every transient
allocation of thinning and encoding, the payload included). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

SCRIPT = r"""
import sys, gc
sys.path.insert(0, %(tree)r)
try:
    from time import ticks_us, ticks_diff
except ImportError:
    import time
    def ticks_us():
        return int(time.perf_counter() * 1000000)
    def ticks_diff(a, b):
        return a - b
POLICY = %(policy)r
TICKS = %(ticks)d
gc.collect()
start_heap = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
from edge_agent import agent as agent_module
from edge_agent.agent import Agent, EveryInterval
from edge_agent.config import build
try:  # the layout of issue 17; the base tree may predate it
    from edge_agent.collectors.procfs.registry import enabled_procfs
except ImportError:
    from edge_agent.collectors.procfs import enabled_procfs
gc.collect()
code_heap = 0
if POLICY != "fixed":
    before = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
    try:
        from edge_agent.sampling.sampler import Sampler
    except ImportError:
        from edge_agent.sampling import Sampler
    gc.collect()
    code_heap = (gc.mem_alloc() - before) if hasattr(gc, "mem_alloc") else 0

class Acks:
    connected = True
    chunked = True
    def publish(self, topic, payload, qos=1, retain=False):
        return 1
    def acked(self, token):
        return True
    def subscribe(self, topic, qos=1):
        pass
    def start(self, a, b):
        pass
    def poll(self, t):
        pass
    def stop(self):
        pass

cfg = build({"device_id": "cost", "commands": {"enabled": False},
             "collectors": {"load": {"enabled": False}, "system": {"enabled": False},
                            "network": {"include": ["lo", "eth0"]}}})
collectors, effective = enabled_procfs(cfg["collectors"])
info = {"device": "cost", "boot_id": "b", "boot_time_ms": 0, "collectors": effective}
clock = [1700000000000]
agent_module.wall_ms = lambda: clock[0]
if POLICY == "fixed":
    sampler = EveryInterval(interval_ms=1000)
    loadwatch = None
else:
    sampler = Sampler({"policy": POLICY, "interval_ms": 1000})
    loadwatch = None
    if "load" in POLICY:
        try:
            from edge_agent.sampling.loadwatch import LoadWatch
        except ImportError:
            from edge_agent.loadwatch import LoadWatch
        loadwatch = LoadWatch()
a = Agent(cfg, collectors, Acks(), info, sampler=sampler, loadwatch=loadwatch)
a.birth_due = a.connect_due = False
a.table.changed = False
names = [c.name for c in collectors]

def tick(i):
    now = i * 1000
    due = a.sampler.due(now)
    if due or a.sampler.load_due(now):
        a.observe_load(now)
    if due:
        a.sample(due, now)
    clock[0] += 1000

def flush():
    a.table.changed = False  # no births here: the data path only
    a.flush()
    a.pump()

for i in range(60):  # warm up: every series seen, the sampler's state made
    tick(i)
    if i %% 10 == 9:
        flush()
gc.collect()
series = len(a.table.series)
steady = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
flush_us = 0
transient = []
t0 = ticks_us()
for i in range(60, 60 + TICKS):
    tick(i)
    if i %% 10 == 9:
        if hasattr(gc, "mem_alloc") and len(transient) < 3:
            gc.collect()
            gc.disable()
            before = gc.mem_alloc()
            f0 = ticks_us()
            flush()
            flush_us += ticks_diff(ticks_us(), f0)
            transient.append(gc.mem_alloc() - before)
            gc.enable()
        else:
            f0 = ticks_us()
            flush()
            flush_us += ticks_diff(ticks_us(), f0)
total = ticks_diff(ticks_us(), t0)
print("RESULT", POLICY, series, total // TICKS, flush_us // (TICKS // 10), steady - start_heap, code_heap,
      max(transient) if transient else 0, a.stats["samples_read"], a.stats["samples_kept"])
"""


def export_base(commit: str, tmp: str) -> str:
    base = os.path.join(tmp, "base")
    os.makedirs(base)
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "edge_agent"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", base], input=archive.stdout, check=True)
    return base


def run(interpreter: str, tree: str, policy: str, ticks: int, tmp: str) -> dict:
    path = os.path.join(tmp, "cost_%s.py" % policy.replace("+", "_"))
    with open(path, "w") as f:
        f.write(SCRIPT % {"tree": tree, "policy": policy, "ticks": ticks})
    cmd = [interpreter, "-X", "heapsize=1M", path] if interpreter == MICROPYTHON else [interpreter, path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            w = line.split()
            return {"series": int(w[2]), "tick_us": int(w[3]), "flush_us": int(w[4]), "heap": int(w[5]),
                    "code": int(w[6]), "transient": int(w[7]), "read": int(w[8]), "kept": int(w[9])}
    raise SystemExit("%s %s failed:\n%s%s" % (tree, policy, proc.stdout[-2000:], proc.stderr[-3000:]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default=None, help="today's commit (default: git merge-base HEAD main)")
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpython", action="store_true", help="also time the same on CPython")
    args = ap.parse_args(argv)
    base = args.base or subprocess.run(["git", "-C", ROOT, "merge-base", "HEAD", "main"], capture_output=True,
                                       text=True, check=True).stdout.strip()
    configs = [("base fixed", "base", "fixed"), ("base adaptive", "base", "adaptive"), ("fixed", "tree", "fixed"),
               ("adaptive", "tree", "adaptive"), ("load+adaptive", "tree", "load+adaptive")]
    interpreters = [("micropython", MICROPYTHON)] + ([("cpython", sys.executable)] if args.cpython else [])
    out = {"base": base, "ticks": args.ticks, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"base": export_base(base, tmp), "tree": ROOT}
        for label, interpreter in interpreters:
            results = {name: [] for name, _, _ in configs}
            for _ in range(args.rounds):
                for name, tree, policy in configs:
                    results[name].append(run(interpreter, trees[tree], policy, args.ticks, tmp))
            table = {}
            for name, _, _ in configs:
                rs = results[name]
                table[name] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            ref = table["base fixed"]
            print("\n%s (base %s, %d ticks, median of %d rounds)\n" % (label, base[:8], args.ticks, args.rounds))
            print("| configuration | series | CPU per tick (us) | vs base fixed | vs its tree's fixed | per series vs "
                  "base fixed | flush (us) | kept share | heap (B) | sampler heap per series (B) | allocated in one flush (B) |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for name, tree, _ in configs:
                r = table[name]
                own = table["base fixed" if tree == "base" else "fixed"]  # the same tree, the same series
                per_series = (r["heap"] - own["heap"] - r["code"]) / r["series"] if label == "micropython" else 0
                r["per_series"] = per_series
                print("| %s | %d | %d | %.2f | %.2f | %.2f | %d | %.3f | %d | %s | %d |" % (
                    name, r["series"], r["tick_us"], r["tick_us"] / ref["tick_us"], r["tick_us"] / own["tick_us"],
                    (r["tick_us"] / r["series"]) / (ref["tick_us"] / ref["series"]), r["flush_us"],
                    r["kept"] / r["read"] if r["read"] else 0, r["heap"],
                    "%.0f" % per_series if label == "micropython" else "–", r["transient"]))
            out[label] = table
    print()
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
