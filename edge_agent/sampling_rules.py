"""The sampling parameters: their defaults, their bounds, and `validate_sampling`.

Apart from edge_agent.sampling so that checking a `sampling` section (config at start-up, a
set_sampling command for the `fixed` policy's agent.EveryInterval) does not load the policies
themselves: on a small MicroPython heap this module is loaded only for a while. The meaning of each
knob is described in edge_agent.sampling, which imports everything here.

MicroPython-compatible: no imports at all.
"""

COLLECTORS = ("cpu", "memory", "load", "network", "system")
POLICIES = ("fixed", "load", "adaptive", "load+adaptive")

MS_LOW = 100
MS_HIGH = 86400000
DEFAULT_MIN_FACTOR = 15
# "0 (inherit) or an integer ms in [MS_LOW, MS_HIGH]": min_interval_ms and every <c>_base/min/max_ms
INHERIT_MS = (0,)

# key -> (default, low, high): a number between low and high (an integer when the bounds are
# integers), or INHERIT_MS; "policy" is one of POLICIES
RULES = {
    # intervals in ms; a per-collector 0 inherits the global value
    "interval_ms": (10000, MS_LOW, MS_HIGH),  # base read interval of every collector
    "min_interval_ms": INHERIT_MS,  # adaptive: heartbeat right after a surprise (0: 15 x the base interval)
    "max_interval_ms": (300000, MS_LOW, MS_HIGH),  # longest gap between two sent samples of a series; load ceiling
    # load policy
    "load_high": (0.85, 0.05, 1.0),  # pressure at or above which the read interval steps up
    "load_low": (0.60, 0.0, 0.95),  # pressure at or below which it returns to the base interval
    "load_step": (2.0, 1.1, 10.0),  # read interval multiplier per step
    "load_hold": (2, 1, 100),  # consecutive observations beyond a watermark before acting (hysteresis)
    "load_runq_full": (2.0, 0.5, 64.0),  # runnable threads per CPU that count as pressure 1.0
    "cpu_budget": (0.01, 0.0001, 1.0),  # the agent's own CPU, as a fraction of one core
    # adaptive policy
    "adaptive_k": (3.1, 0.1, 100.0),  # band width in units of the typical step-to-step change (chosen on NAB, see docs)
    "adaptive_floor": (0.1, 0.0, 10.0),  # band floor as a fraction of the series' spread (quantised signals)
    "adaptive_range": (0.01, 0.0, 10.0),  # band floor as a fraction of the series' running p5-p95 range
    "adaptive_drift": (3.0, 0.0, 1000.0),  # drift trigger: sum of deviations over band (0: off)
    "adaptive_peak_q": (0.97, 0.0, 0.9999),  # peak guard: above this running quantile, a rise is sent (0: off)
    "adaptive_peak_rise": (0.04, 0.0, 10.0),  # peak guard: the rise over the last sent value, in running ranges
    "adaptive_peak_z": (0.0, 0.0, 10.0),  # older peak guard: above mean + z * spread (0: off)
    "adaptive_growth": (2.0, 1.0, 16.0),  # heartbeat multiplier after each quiet heartbeat
    "adaptive_alpha": (0.99, 0.5, 0.9999),  # PEWMA history weight (closer to 1: slower)
    "adaptive_beta": (0.5, 0.0, 1.0),  # PEWMA outlier damping (0: plain EWMA)
}
for _c in COLLECTORS:
    for _k in ("_base_ms", "_min_ms", "_max_ms"):
        RULES[_c + _k] = INHERIT_MS

SAMPLING_DEFAULTS = {"policy": "fixed"}
for _k in RULES:
    SAMPLING_DEFAULTS[_k] = RULES[_k][0]


def validate_sampling(params):
    """Problems with `params` (a full or partial sampling dict) as "key: problem" strings.

    Each given key is checked against its bounds; cross-key rules (low < high watermark, base <=
    min <= max per collector) are checked on the defaults overlaid with `params`.
    """
    if not isinstance(params, dict):
        return ["sampling: must be an object"]
    errors = []
    for key in sorted(params):
        value = params[key]
        rule = RULES.get(key)
        number = (isinstance(value, int) or isinstance(value, float)) and not isinstance(value, bool)
        problem = None
        if key == "policy":
            if value not in POLICIES:
                problem = "must be one of %s, got %r" % (", ".join(POLICIES), value)
        elif rule is None:
            problem = "unknown key"
        elif rule is not INHERIT_MS and isinstance(rule[1], float):
            if not number:
                problem = "must be a number"
            elif value != value or value < rule[1] or value > rule[2]:
                problem = "must be between %s and %s, got %s" % (rule[1], rule[2], value)
        elif not number or isinstance(value, float):
            problem = "must be an integer"
        elif rule is INHERIT_MS:
            if value != 0 and (value < MS_LOW or value > MS_HIGH):
                problem = "must be 0 (inherit) or between %d and %d ms, got %d" % (MS_LOW, MS_HIGH, value)
        elif value < rule[1] or value > rule[2]:
            problem = "must be between %d and %d, got %d" % (rule[1], rule[2], value)
        if problem:
            errors.append("%s: %s" % (key, problem))
    if errors:
        return errors
    merged = dict(SAMPLING_DEFAULTS)
    merged.update(params)
    if merged["load_low"] >= merged["load_high"]:
        errors.append("load_low: must be below load_high (%s), got %s" % (merged["load_high"], merged["load_low"]))
    for c in COLLECTORS:
        base, low, high = collector_intervals(merged, c)
        if base > high:
            errors.append("%s_max_ms: the longest interval (%d) is below the base interval (%d)" % (c, high, base))
        elif low > high:
            errors.append("%s_min_ms: the heartbeat after a surprise (%d) exceeds the longest interval (%d)"
                          % (c, low, high))
    return errors


def collector_intervals(params, c):
    """(base, min, max) ms of collector `c` after inheritance; min is never below base."""
    base = params[c + "_base_ms"] or params["interval_ms"]
    low = params[c + "_min_ms"] or params["min_interval_ms"] or base * DEFAULT_MIN_FACTOR
    high = params[c + "_max_ms"] or params["max_interval_ms"]
    if params[c + "_min_ms"] == 0 and params["min_interval_ms"] == 0 and low > high:
        low = high  # the derived default never breaks the ceiling
    if low < base:
        low = base
    return base, low, high
