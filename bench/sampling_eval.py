"""The adaptive sampling policy against its baselines on two dev sets: NAB and this machine's 1 s traces.

    .venv/bin/python bench/sampling_eval.py [--set nab|local|both] [--split all|tune|eval]
        [--param k=v ...] [--frontier 0.05,0.1,0.15,0.2,0.3] [--baselines uniform,deadband,adam,optimum]
        [--load] [--batch 10] [--jobs 2] [--json OUT] [--quiet]

Every trace is replayed through the real agent code (edge_agent.sampling.replay: Sampler and BatchBuilder,
batches of --batch base intervals) with the `adaptive` policy and ONE parameter set for every
trace (defaults unless --param). Each baseline is then tuned per trace to keep the same number of
readings: uniform decimation, send-on-delta (its threshold bisected on the whole trace: an oracle
setting), AdaM, and the offline optimum (edge_agent.sampling.baselines.optimum_match: the least error any
choice of that many readings can reach, a floor erring low). Scored alike (edge_agent.sampling.replay.score):
NMAE = mean |x - shown| / (p99 - p1), peaks as runs at or above p99 and as runs above p95, missed
when the highest value shown during the run is more than 0.1 of the range below the run's top.

The sets, and how they are split so that nothing is tuned on one set only or judged on what it
was tuned on (`--split tune` is what the defaults were chosen on; `--split eval` the rest):
    nab     the 13 CPU and 3 network traces of /work/shared/datasets/nab (5-minute AWS CloudWatch
            averages, one base interval = 300 s); sorted by name, the even ones are `tune`
    local   bench/traces/*.csv.gz, 1 s traces of this machine (bench/record_trace.py): CPU busy
            percent, network bytes/s and memory in use, under six kinds of work; the sessions
            idle, compress and tests are `tune`, compile, network and mixed are `eval`; replayed with
            the agent's defaults (1 s reads, 10 s batches, heartbeat 300 s)

--frontier runs the policy at each kept share (adaptive_share) and the baselines at its counts:
the frontier of median kept share against median NMAE, per method. --load adds `load+adaptive`
on the CPU traces, the trace doubling as the device's load: how long the reconstruction stays
off after a busy spell ends (stale_after_load_s).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from multiprocessing import Pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from edge_agent.cli.replay import parse_number  # noqa: E402
from edge_agent.sampling.replay import evaluate  # noqa: E402

NAB = "/work/shared/datasets/nab"
NAB_TRACES = [
    "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_53ea38.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_77c1ca.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_825cc2.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_ac20cd.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_c6585a.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_fe7f93.csv",
    "realAWSCloudwatch/rds_cpu_utilization_cc0c53.csv",
    "realAWSCloudwatch/rds_cpu_utilization_e47b3b.csv",
    "realAWSCloudwatch/grok_asg_anomaly.csv",
    "realKnownCause/cpu_utilization_asg_misconfiguration.csv",
    "realKnownCause/ec2_request_latency_system_failure.csv",
    "realAWSCloudwatch/ec2_network_in_257a54.csv",
    "realAWSCloudwatch/ec2_network_in_5abac7.csv",
    "realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
]
LOCAL = os.path.join(ROOT, "bench", "traces")
LOCAL_TUNE = ("idle", "compress", "tests")  # sessions the defaults were chosen on
METHODS = ("adaptive", "deadband", "uniform", "adam", "optimum")


def traces(which: str, split: str, local_dir: str) -> list[tuple[str, str, str, bool]]:
    """(set, name, path, is_cpu) of the traces in `which` and `split`."""
    out = []
    if which in ("nab", "both"):
        names = sorted(NAB_TRACES, key=os.path.basename)
        for i, rel in enumerate(names):
            if split == "all" or (split == "tune") == (i % 2 == 0):
                name = os.path.basename(rel)[:-4]
                out.append(("nab", name, os.path.join(NAB, rel), "cpu" in name or "failure" in name))
    if which in ("local", "both"):
        for path in sorted(glob.glob(os.path.join(local_dir, "*.csv.gz"))):
            name = os.path.basename(path)[:-7]
            session = name.rsplit("-", 1)[0]
            if split == "all" or (split == "tune") == (session in LOCAL_TUNE):
                out.append(("local", name, path, name.endswith("-cpu")))
    return out


def run_one(job):
    kind, name, path, is_cpu, params, shares, baselines, load, batch = job
    rows = []
    cache: dict = {}
    if kind == "local":  # 1 s traces: the agent's own settings (heartbeat 300 s), not replay's 30 x the step
        params = dict({"max_interval_ms": 300000}, **params)
    for share in shares:
        p = dict(params)
        if share is not None:
            p["adaptive_share"] = share
        res = evaluate(path, "adaptive", p, baselines, batch=batch, cache=cache)
        row = {"set": kind, "trace": name, "share": share, "n": res["samples_in"], "adaptive": res}
        for b, entry in res.get("baselines", {}).items():
            row[b] = entry
        if load and is_cpu and share is None:
            row["load+adaptive"] = evaluate(path, "load+adaptive", p, (), load_from_trace=True, batch=batch)
        rows.append(row)
    return rows


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2.0


def per_trace_table(rows, methods):
    head = ["trace", "n", "kept", "NMAE"] + [m for m in methods if m != "adaptive"] + \
           ["vs deadband", "of optimum", "peaks p99 missed/events", "peaks p95 missed/events", "max shortfall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        a = r["adaptive"]
        cells = [r["trace"], str(r["n"]), "%.3f" % a["kept_share"], "%.4f" % a["err_mean"]]
        for m in methods:
            if m != "adaptive":
                cells.append("%.4f" % r[m]["err_mean"] if m in r else "–")
        d = r.get("deadband")
        cells.append(("win" if a["err_mean"] < d["err_mean"] else "loss") if d else "–")
        o = r.get("optimum")
        cells.append("%.2f" % (a["err_mean"] / o["err_mean"]) if o and o["err_mean"] > 0 else "–")
        cells.append("%d/%d" % (a["peaks_missed"], a["peaks"]))
        cells.append("%d/%d" % (a["peaks95_missed"], a["peaks95"]))
        cells.append("%.3f" % a["peak_shortfall_max"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows, methods):
    lines = ["| method | traces | median kept share | median NMAE | median NMAE p99 | peaks p99 missed | "
             "peaks p95 missed | adaptive below it |",
             "|---|---|---|---|---|---|---|---|"]
    for m in methods:
        got = [r[m] for r in rows if m in r]
        if not got:
            continue
        wins = sum(1 for r in rows if m in r and m != "adaptive" and r["adaptive"]["err_mean"] < r[m]["err_mean"])
        lines.append("| %s | %d | %.3f | %.4f | %.4f | %d of %d | %d of %d | %s |" % (
            m, len(got), median([g["kept_share"] for g in got]), median([g["err_mean"] for g in got]),
            median([g["err_p99"] for g in got]), sum(g["peaks_missed"] for g in got), sum(g["peaks"] for g in got),
            sum(g["peaks95_missed"] for g in got), sum(g["peaks95"] for g in got),
            "–" if m == "adaptive" else "%d of %d" % (wins, len(got))))
    return "\n".join(lines)


def targets(rows):
    """The issue's targets on these rows: a dict of figures and verdicts."""
    a = [r["adaptive"] for r in rows]
    out = {"traces": len(rows), "median_kept": median([x["kept_share"] for x in a]),
           "median_nmae": median([x["err_mean"] for x in a]),
           "peaks_missed": sum(x["peaks_missed"] + x["peaks95_missed"] for x in a)}
    if all("deadband" in r for r in rows):
        out["median_nmae_deadband"] = median([r["deadband"]["err_mean"] for r in rows])
        out["wins_vs_deadband"] = sum(1 for r in rows if r["adaptive"]["err_mean"] < r["deadband"]["err_mean"])
    if all("optimum" in r for r in rows):
        out["median_nmae_optimum"] = median([r["optimum"]["err_mean"] for r in rows])
        out["of_optimum"] = out["median_nmae"] / out["median_nmae_optimum"] if out["median_nmae_optimum"] else None
    return out


def load_table(rows):
    got = [r for r in rows if "load+adaptive" in r]
    if not got:
        return ""
    lines = ["| trace | kept | NMAE | back-offs ended | stale after load (s) | stale max (s) |", "|---|---|---|---|---|---|"]
    for r in got:
        la = r["load+adaptive"]
        lines.append("| %s | %.3f | %.4f | %d | %.0f | %.0f |" % (r["trace"], la["kept_share"], la["err_mean"],
                                                              la["load_resumed"], la["stale_after_load_s"],
                                                              la["stale_max_s"]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", default="both", choices=("nab", "local", "both"))
    ap.add_argument("--split", default="all", choices=("all", "tune", "eval"))
    ap.add_argument("--local-dir", default=LOCAL)
    ap.add_argument("--param", action="append", default=[], help="sampler knob k=v (the same for every trace)")
    ap.add_argument("--frontier", default="", help="kept shares to run the policy at, e.g. 0.05,0.1,0.2")
    ap.add_argument("--baselines", default="uniform,deadband,adam,optimum")
    ap.add_argument("--load", action="store_true", help="also load+adaptive on the CPU traces")
    ap.add_argument("--batch", type=float, default=10.0, help="batch length in base intervals (agent: 10 s / 1 s)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--quiet", action="store_true", help="summaries only")
    args = ap.parse_args(argv)
    params = {}
    for kv in args.param:
        k, _, v = kv.partition("=")
        params[k] = parse_number(v)
    baselines = tuple(b for b in args.baselines.split(",") if b)
    methods = ("adaptive",) + baselines
    shares = [None] + [float(s) for s in args.frontier.split(",") if s]
    jobs = [(kind, name, path, cpu, params, shares, baselines, args.load, args.batch)
            for kind, name, path, cpu in traces(args.set, args.split, args.local_dir)]
    with Pool(args.jobs) as pool:
        results = pool.map(run_one, jobs)
    rows = [r for rs in results for r in rs if r["share"] is None]
    print("parameters: %s; batch %g base intervals; split %s\n" % (json.dumps(params, sort_keys=True) or "defaults",
                                                                   args.batch, args.split))
    verdicts = {}
    for kind in ("nab", "local"):
        got = [r for r in rows if r["set"] == kind]
        if not got:
            continue
        if not args.quiet:
            print("### %s: per trace (NMAE at the same kept count)\n" % kind)
            print(per_trace_table(got, methods))
            print()
        print("### %s: summary\n" % kind)
        print(summary(got, methods))
        verdicts[kind] = targets(got)
        print("\ntargets: " + json.dumps(verdicts[kind], sort_keys=True))
        if args.load:
            print()
            print(load_table(got))
        print()
    if len(shares) > 1:
        print("### frontier: median kept share / median NMAE per method\n")
        print("| set | adaptive_share | " + " | ".join(methods) + " |")
        print("|---|---|" + "---|" * len(methods))
        for kind in ("nab", "local"):
            for share in shares[1:]:
                got = [r for rs in results for r in rs if r["share"] == share and r["set"] == kind]
                if not got:
                    continue
                cells = []
                for m in methods:
                    vals = [r[m] for r in got if m in r]
                    cells.append("%.3f / %.4f" % (median([v["kept_share"] for v in vals]),
                                                  median([v["err_mean"] for v in vals])) if vals else "–")
                print("| %s | %s | %s |" % (kind, share, " | ".join(cells)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"params": params, "verdicts": verdicts, "rows": [r for rs in results for r in rs]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
