"""Replay every NAB CPU and network trace through the sampling policies and the baselines.

    .venv/bin/python bench/sampling_nab.py [--nab DIR] [--param k=v ...] [--jobs 2] [--extra] [--json OUT]

For each trace: the `adaptive` policy (default parameters unless --param), with uniform decimation,
send-on-delta and AdaM tuned to the same number of kept samples; `load+adaptive` and `load` with the
CPU trace itself as the device's CPU load (CPU traces only: a network trace says nothing about the
device's load). Prints a Markdown table per trace and the medians. --extra adds the disk and
request-count traces (not CPU, not network) in a separate table. The sampler runs as in the agent:
the trace's own step (300 s) is the base read interval.
"""

import argparse
import json
import os
import sys
from multiprocessing import Pool

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from edge_agent.replay import _number, evaluate  # noqa: E402

NAB = "/work/shared/datasets/nab"
CPU = [
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
]
NETWORK = [
    "realAWSCloudwatch/ec2_network_in_257a54.csv",
    "realAWSCloudwatch/ec2_network_in_5abac7.csv",
    "realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
]
EXTRA = [
    "realAWSCloudwatch/ec2_disk_write_bytes_1ef3de.csv",
    "realAWSCloudwatch/ec2_disk_write_bytes_c0d644.csv",
    "realAWSCloudwatch/elb_request_count_8c0756.csv",
]
FIELDS = ("kept_share", "err_mean", "err_p99", "peaks_missed", "peak_missed_max", "stale_max_s")


def run_one(job):
    nab, rel, is_cpu, params = job
    path = os.path.join(nab, rel)
    out = {"trace": os.path.basename(rel)[:-4], "kind": "cpu" if is_cpu else "network"}
    res = evaluate(path, "adaptive", params)
    out["adaptive"] = res
    for name, entry in res.get("baselines", {}).items():
        out[name] = entry
    if is_cpu:
        out["load+adaptive"] = evaluate(path, "load+adaptive", params, (), load_from_trace=True)
        out["load"] = evaluate(path, "load", params, (), load_from_trace=True)
    return out


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2.0


def fmt(value):
    if value is None:
        return "–"
    if isinstance(value, float):
        return "%.4f" % value if value < 10 else "%.0f" % value
    return str(value)


def trace_table(rows):
    lines = [
        "| trace | n | kept | err_mean | err_p99 | peaks missed/events | stale max (s) | uniform | AdaM | deadband |"
        " beats uniform & AdaM |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r["adaptive"]
        wins = a["err_mean"] < r["uniform"]["err_mean"] and a["err_mean"] < r["adam"]["err_mean"]
        lines.append("| %s | %d | %.3f | %.4f | %.4f | %d/%d | %.0f | %.4f | %.4f | %.4f | %s |" % (
            r["trace"], a["samples_in"], a["kept_share"], a["err_mean"], a["err_p99"], a["peaks_missed"], a["peaks"],
            a["stale_max_s"], r["uniform"]["err_mean"], r["adam"]["err_mean"], r["deadband"]["err_mean"],
            "yes" if wins else "no"))
    return "\n".join(lines)


def summary_table(rows):
    lines = ["| policy / baseline | traces | median kept share | total kept share | median err_mean | median err_p99 |"
             " peaks missed (sum) | median stale max (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("adaptive", "uniform", "adam", "deadband", "load+adaptive", "load"):
        got = [r[name] for r in rows if name in r]
        if not got:
            continue
        kept = sum(g["samples_kept"] for g in got)
        total = sum(r["adaptive"]["samples_in"] for r in rows if name in r)
        lines.append("| %s | %d | %.3f | %.3f | %.4f | %.4f | %d | %s |" % (
            name, len(got), median([g["kept_share"] for g in got]), kept / total,
            median([g["err_mean"] for g in got]), median([g["err_p99"] for g in got]),
            sum(g["peaks_missed"] for g in got), fmt(median([g["stale_max_s"] for g in got]))))
    wins = sum(1 for r in rows if r["adaptive"]["err_mean"] < r["uniform"]["err_mean"]
               and r["adaptive"]["err_mean"] < r["adam"]["err_mean"])
    lines.append("")
    lines.append("adaptive strictly below uniform and AdaM (err_mean, same kept count): %d of %d traces" % (wins, len(rows)))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nab", default=NAB)
    ap.add_argument("--param", action="append", default=[], help="sampler knob k=v (same for every trace)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--extra", action="store_true", help="also the disk and request-count traces")
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args(argv)
    params = {}
    for kv in args.param:
        k, _, v = kv.partition("=")
        params[k] = _number(v)
    jobs = [(args.nab, rel, True, params) for rel in CPU] + [(args.nab, rel, False, params) for rel in NETWORK]
    extra = [(args.nab, rel, False, params) for rel in EXTRA] if args.extra else []
    with Pool(args.jobs) as pool:
        rows = pool.map(run_one, jobs + extra)
    main_rows, extra_rows = rows[: len(jobs)], rows[len(jobs):]
    if params:
        print("parameters: %s\n" % json.dumps(params, sort_keys=True))
    if not args.summary_only:
        print("### CPU and network traces (%d)\n" % len(main_rows))
        print(trace_table(main_rows))
        print()
    print(summary_table(main_rows))
    if extra_rows:
        print("\n### Other traces (disk writes, request counts)\n")
        print(trace_table(extra_rows))
        print()
        print(summary_table(extra_rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
