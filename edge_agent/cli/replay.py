"""`edge-agent replay`'s command line: the options (argparse) and the summary table; the evaluation
itself is edge_agent/sampling/replay.py (`evaluate`, which `--json` prints as it is)."""

import argparse
import json
import sys

BASELINES = ("uniform", "deadband", "adam")  # the default set, as edge_agent.sampling.replay.BASELINES (not imported: it loads
ALL_BASELINES = BASELINES + ("optimum",)  # the sampler); the offline optimum needs numpy and O(n^2) per price


def main(argv=None):
    """`python -m edge_agent.cli.replay`: the parser of `edge-agent replay`, on its own."""
    parser = argparse.ArgumentParser(prog="python -m edge_agent.cli.replay", **PARSER)
    add_arguments(parser)
    return command_replay(parser.parse_args(argv))


def add_parser(sub):
    add_arguments(sub.add_parser("replay", help="evaluate a sampling policy on a recorded trace", **PARSER))


PARSER = dict(formatter_class=argparse.RawDescriptionHelpFormatter,
              description="Run a recorded trace through the real sampler and measure what is lost, "
                       "against baselines that keep as many samples (docs/sampling.md).",
                       epilog="TRACE.csv: a header, then timestamp,value rows (YYYY-MM-DD HH:MM:SS[.ffffff] UTC, "
                       "or seconds).\nColumns: kept = samples sent (share of the trace); err = |x - reconstructed| / "
                       "range, mean and p99;\npeaks missed = events above p99 whose top was missed by more than "
                       "--change x range (runs at or above p99, and runs above p95);\nstale = longest time off by more than that.")


def add_arguments(p):
    p.add_argument("trace", metavar="TRACE.csv")
    p.add_argument("--policy", required=True, help="fixed, load, adaptive or load+adaptive")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="a sampling knob, e.g. adaptive_share=0.1 (repeatable; default: the policy's defaults, "
                   "interval_ms from the trace's step)")
    p.add_argument("--baseline", default=",".join(BASELINES), metavar="NAMES",
                   help="%s, all or none (default: %s; optimum: the least error any choice of as many "
                   "samples reaches, the floor)" % (",".join(ALL_BASELINES), ",".join(BASELINES)))
    p.add_argument("--change", type=float, default=0.1, help="a change worth reporting, as a share of the "
                   "trace's range (default: 0.1)")
    p.add_argument("--kind", choices=("gauge", "counter"), default="gauge",
                   help="gauge, or counter: values are a rate per second (default: gauge)")
    p.add_argument("--collector", default="cpu", help="the collector the series belongs to (default: cpu)")
    p.add_argument("--load-from-trace", action="store_true", help="feed the trace to the load policy as CPU load")
    p.add_argument("--batch", type=float, default=10.0, help="batch length in base intervals: the adaptive policy "
                   "chooses what to send at each batch's flush (default: 10, the agent's 10 s at 1 s reads)")
    p.add_argument("--json", action="store_true", help="print the full result as one JSON object")


def parse_params(items):
    params = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ValueError("--param %r: expected K=V" % item)
        params[key.strip()] = parse_number(text.strip())
    return params


def parse_number(text):
    """A --param value: an int, else a float, else the text as given."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_baselines(text):
    names = [] if text == "none" else list(ALL_BASELINES) if text == "all" else [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in ALL_BASELINES]
    if unknown:
        raise ValueError("--baseline: unknown %s (choose from %s, all, none)" % (", ".join(unknown),
                                                                              ", ".join(ALL_BASELINES)))
    return names


def command_replay(args):
    from edge_agent.sampling.replay import evaluate
    from edge_wire import MAX_TICKS

    if not 1 <= args.batch <= MAX_TICKS - 1:
        print("edge-agent replay: --batch: between 1 and %d base intervals, got %s" % (MAX_TICKS - 1, args.batch),
              file=sys.stderr)
        return 2
    try:
        result = evaluate(args.trace, args.policy, parse_params(args.param), parse_baselines(args.baseline),
                          args.change, args.kind, args.collector, args.load_from_trace, args.batch)
    except ImportError as exc:
        print("edge-agent replay: the offline optimum needs numpy (%s)" % exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print("edge-agent replay: %s: cannot read it (%s)" % (args.trace, exc.strerror or exc), file=sys.stderr)
        return 2
    except ValueError as exc:
        print("edge-agent replay: %s" % exc, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(table(result))
    return 0


def table(result):
    """The policy and its baselines, one row each, under a line about the trace."""
    lines = ["trace %s: %d samples, step %ss, %s; change threshold %s x range (%.6g)" % (
        result["trace"], result["samples_in"], _short(result.get("step_s")), result["kind"],
        result["change_threshold"], result["range"])]
    params = " ".join("%s=%s" % kv for kv in sorted(result.get("params", {}).items()) if kv[0] != "policy")
    if params:
        lines.append("policy %s: %s" % (result["policy"], params))
    rows = [("", "KEPT", "SHARE", "ERR MEAN", "ERR P99", "P99 PEAKS MISSED", "P95 PEAKS MISSED", "UNSAMPLED",
             "STALE MAX")]
    entries = [(result["policy"], result)] + sorted((result.get("baselines") or {}).items())
    for name, entry in entries:
        rows.append((name, str(entry["samples_kept"]), "%.1f%%" % (100 * entry["kept_share"]),
                     "%.4f" % entry["err_mean"], "%.4f" % entry["err_p99"],
                     "%d / %d" % (entry["peaks_missed"], entry["peaks"]),
                     "%d / %d" % (entry["peaks95_missed"], entry["peaks95"]), str(entry["peaks_unsampled"]),
                     "%ss" % _short(entry["stale_max_s"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, len(row))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _short(value):
    return ("%.3f" % value).rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
