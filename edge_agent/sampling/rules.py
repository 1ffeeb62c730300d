"""The sampling parameters: their defaults, their bounds, and `validate_sampling`.

Apart from edge_agent.sampling.sampler so that checking a `sampling` section (config at start-up, a
set_sampling command for the `fixed` policy's agent.EveryInterval) does not load the policies
themselves: on a small MicroPython heap this module is loaded only for a while. The meaning of each
knob is described below and in edge_agent.sampling.sampler, which builds SAMPLING_DEFAULTS from KNOBS.

MicroPython-compatible: imports only the collectors' names (edge_agent.collectors, resident anyway).
"""

from edge_agent.collectors import COLLECTORS

POLICIES = ("fixed", "load", "adaptive", "load+adaptive")

MS_LOW = 100
MS_HIGH = 86400000

# The knobs, one line each: name, default, bounds. The bounds are "low high" (a number between
# them, an integer when both are written as integers) or "ms" (0, which inherits, or an integer
# between MS_LOW and MS_HIGH ms). Text rather than a dict of tuples: a small heap holds one string
# instead of a key, a tuple and boxed floats per knob.
#   intervals in ms; a per-collector 0 inherits the global value
#     interval_ms         base read interval of every collector
#     max_interval_ms     longest gap between two sent samples of a series (the heartbeat); load ceiling
#     <c>_base_ms, <c>_max_ms   the same per collector <c> (COLLECTORS), default 0, "ms"
#   load policy
#     load_high           pressure at or above which the read interval steps up
#     load_low            pressure at or below which it returns to the base interval
#     load_step           read interval multiplier per step
#     load_hold           consecutive observations beyond a watermark before acting (hysteresis)
#     load_runq_full      runnable threads per CPU that count as pressure 1.0
#     cpu_budget          the agent's own CPU, as a fraction of one core
#   adaptive policy (the batch look-ahead, edge_agent.sampling.sampler)
#     adaptive_share      the share of its readings each series aims to send (its budget; on the dev
#                         sets' traces of 1,500-18,000 reads the kept share runs 1.1-1.2x it: docs/sampling.md)
#     adaptive_guard      peak guard tolerance, in running ranges: a new local high (low) further
#                         than this above (below) what the receiver would show is always sent
#     adaptive_guard_q    running quantile above which (below 1 - q) a local extreme is a high (low)
#     adaptive_settle     how many reads the budget controller takes to correct a share that is off
KNOBS = """
interval_ms 10000 100 86400000
max_interval_ms 300000 100 86400000
load_high 0.85 0.05 1.0
load_low 0.60 0.0 0.95
load_step 2.0 1.1 10.0
load_hold 2 1 100
load_runq_full 2.0 0.5 64.0
cpu_budget 0.01 0.0001 1.0
adaptive_share 0.16 0.01 1.0
adaptive_guard 0.08 0.0 1.0
adaptive_guard_q 0.9 0.5 0.9999
adaptive_settle 1000 10 1000000
"""
# knobs of the earlier adaptive policy (a band around the last sent value), refused with a pointer
RETIRED = ("min_interval_ms adaptive_k adaptive_floor adaptive_range adaptive_drift adaptive_peak_q adaptive_peak_rise "
           "adaptive_peak_z adaptive_growth adaptive_alpha adaptive_beta")
PER_COLLECTOR = ("_base_ms", "_max_ms")


def knob(key):
    """[default, low, high] of a knob, [0, "ms"] for an "ms" one, None for an unknown key."""
    collector, _, rest = key.partition("_")
    if collector in COLLECTORS and "_" + rest in PER_COLLECTOR:
        return [0, "ms"]
    at = KNOBS.find("\n" + key + " ")
    if at < 0:
        return None
    rule = []
    for word in KNOBS[at + 1:KNOBS.find("\n", at + 1)].split()[1:]:
        rule.append(word if word == "ms" else float(word) if "." in word else int(word))
    return rule


def validate_sampling(params):
    """Problems with `params` (a full or partial sampling dict) as "key: problem" strings.

    Each given key is checked against its bounds; cross-key rules (low < high watermark, base <=
    max per collector) are checked on the defaults overlaid with `params`.
    """
    if not isinstance(params, dict):
        return ["sampling: must be an object"]
    errors = []
    for key in sorted(params):
        value = params[key]
        rule = knob(key)
        number = (isinstance(value, int) or isinstance(value, float)) and not isinstance(value, bool)
        problem = None
        if key == "policy":
            if value not in POLICIES:
                problem = "must be one of %s, got %r" % (", ".join(POLICIES), value)
        elif rule is None:
            retired = key in RETIRED.split() or key.endswith("_min_ms") and key[:-7] in COLLECTORS
            problem = "retired with the earlier adaptive policy (docs/sampling.md)" if retired else "unknown key"
        elif isinstance(rule[1], float) and not number:
            problem = "must be a number"
        elif not isinstance(rule[1], float) and (not number or isinstance(value, float)):
            problem = "must be an integer"
        elif rule[1] == "ms":
            if value != 0 and (value < MS_LOW or value > MS_HIGH):
                problem = "must be 0 (inherit) or between %d and %d ms, got %d" % (MS_LOW, MS_HIGH, value)
        elif value != value or value < rule[1] or value > rule[2]:  # NaN is out of every range
            problem = "must be between %s and %s, got %s" % (rule[1], rule[2], value)
        if problem:
            errors.append("%s: %s" % (key, problem))
    if errors:
        return errors
    merged = dict(params)  # the defaults that the cross-key rules read, overlaid with params
    for key in ("load_low", "load_high", "interval_ms", "max_interval_ms"):
        if key not in merged:
            merged[key] = knob(key)[0]
    if merged["load_low"] >= merged["load_high"]:
        errors.append("load_low: must be below load_high (%s), got %s" % (merged["load_high"], merged["load_low"]))
    for c in COLLECTORS:
        base, high = collector_intervals(merged, c)
        if base > high:
            errors.append("%s_max_ms: the longest interval (%d) is below the base interval (%d)" % (c, high, base))
    return errors


def usable(params):
    """(the keys of `params` that pass validation, "key: problem" for each one dropped): persisted
    remote changes are applied at start with this, so a knob retired since (or a value out of
    today's bounds) is reported and left out rather than stopping the agent."""
    kept = {}
    dropped = []
    for key in sorted(params):
        problems = validate_sampling({key: params[key]})
        if problems:
            dropped.extend(problems)
        else:
            kept[key] = params[key]
    problems = validate_sampling(kept)
    if problems:  # the keys are fine alone, not together (a watermark pair): keep none of them
        return {}, dropped + problems
    return kept, dropped


def collector_intervals(params, c):
    """(base, max) ms of collector `c` after inheritance.

    `params` holds the global intervals; a missing per-collector one is 0 (inherit)."""
    return params.get(c + "_base_ms", 0) or params["interval_ms"], params.get(c + "_max_ms", 0) or params["max_interval_ms"]
