"""A sampling policy evaluated on a recorded trace: what it keeps and what is lost (`evaluate`).

Its command line is `edge-agent replay` or `python -m edge_agent.cli.replay` (edge_agent/cli/replay.py):

    edge-agent replay --policy P [--param k=v ...] [--baseline uniform,deadband,adam,optimum|all|none]
                      [--change 0.1] [--load-from-trace] [--kind gauge|counter] [--batch 10] TRACE.csv[.gz]

TRACE.csv has a header and `timestamp,value` rows (gzip-compressed when the name ends in .gz);
timestamps are `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC) or numeric seconds, any step. Rows are sorted by
time; a repeated timestamp keeps its first row (counted in `duplicates`). The trace's median step is
the base read interval: `interval_ms` is set to it unless given, and `max_interval_ms` keeps its
default ratio to the base (30x) unless given. A gap longer than the step simply has no reading in it.
The trace is read, batched and thinned as the agent does it (run_policy: a real Sampler and
wire.BatchBuilder, a batch every --batch base intervals, values made integers as a collector's).

The series is a gauge (`--kind gauge`, default); with `--kind counter` the values are taken as a
rate per second, integrated into a cumulative counter fed to the sampler, and the reconstruction is
the average rate between two sent counter values (what a downstream `rate()` sees).

Reconstruction: the central stack carries the last sent value forward (LOCF). Against the
full-rate trace, with R = p99 - p1 of the trace (max - min if that is 0):

    err_mean, err_p99    mean and 99th percentile of |x - reconstructed| / R (err_mean is the NMAE)
    peaks                events: maximal runs of consecutive points at or above the trace's p99
    peaks95              events: maximal runs of consecutive points strictly above the trace's p95
    shortfall            of one event: (event max - reconstructed max within the event) / R
    peaks_missed, peaks95_missed     events whose shortfall exceeds `--change` (0.1)
    peaks_unsampled, peaks95_unsampled   events in which no sample at all was sent
    peak_missed_max      the largest shortfall of a missed event, either definition (0: none missed)
    peak_shortfall_max   the largest shortfall of any event
    stale_max_s          the longest time the reconstruction stayed more than `--change` x R off the
                         trace (a change bigger than the threshold that went unreported)
    stale_after_load_s   (--load-from-trace) the same, counted from when a busy spell ended

Baselines (uniform decimation, send-on-delta, AdaM, and the offline optimum: the least error any
choice of that many readings reaches, edge_agent.sampling.baselines.optimum_match, numpy) are tuned to keep
the same number of samples as the policy and scored the same way. Prints one JSON object.
"""


from edge_agent.model import Series, SeriesTable
from edge_agent.sampling import baselines
from edge_agent.sampling.sampler import SAMPLING_DEFAULTS, Sampler, validate_sampling
from edge_wire import COUNTER, GAUGE, MAX_TICKS
from edge_wire.batch import BatchBuilder

BASELINES = ("uniform", "deadband", "adam")
ALL_BASELINES = BASELINES + ("optimum",)  # the offline optimum needs numpy and O(n^2) per price


# ---------------------------------------------------------------------- reading a trace

def _days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_time(text):
    """'2014-02-14 14:27:00' (UTC, optional fraction or 'T') or '1392388020.5' -> seconds (float)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    date, _, clock = text.replace("T", " ").partition(" ")
    y, mo, d = [int(part) for part in date.split("-")]
    h = mi = 0
    s = 0.0
    if clock:
        parts = clock.rstrip("Z").split(":")
        h = int(parts[0])
        mi = int(parts[1]) if len(parts) > 1 else 0
        s = float(parts[2]) if len(parts) > 2 else 0.0
    return _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s


def read_trace(path):
    """(times s, values, stats) from a timestamp,value CSV; sorted, first row of a repeated time kept."""
    rows = []
    bad = 0
    if path.endswith(".gz"):
        import gzip

        with gzip.open(path, "rt") as f:
            lines = f.read().splitlines()
    else:
        with open(path) as f:
            lines = f.read().splitlines()
    for n, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue
        parts = line.split(",")
        try:
            t = parse_time(parts[0])
            v = float(parts[1])
        except (ValueError, IndexError):
            if n == 0:
                continue  # the header
            bad += 1
            continue
        if v == v:  # NaN rows are gaps
            rows.append((t, len(rows), v))
        else:
            bad += 1
    rows.sort()
    times, values = [], []
    dups = 0
    for t, _, v in rows:
        if times and t == times[-1]:
            dups += 1
            continue
        times.append(t)
        values.append(v)
    if len(times) < 2:
        raise ValueError("%s: need at least two samples, got %d" % (path, len(times)))
    steps = sorted(times[i] - times[i - 1] for i in range(1, len(times)))
    step = steps[len(steps) // 2]
    gaps = sum(1 for d in steps if d > 1.5 * step)
    return times, values, {"duplicates": dups, "bad_rows": bad, "gaps": gaps, "step_s": step}


# ---------------------------------------------------------------------- scoring

def quantile(sorted_values, q):
    """Linear-interpolated quantile of an ascending list."""
    if not sorted_values:
        return 0.0
    pos = q * (len(sorted_values) - 1)
    i = int(pos)
    if i + 1 >= len(sorted_values):
        return sorted_values[-1]
    return sorted_values[i] + (sorted_values[i + 1] - sorted_values[i]) * (pos - i)


def value_range(values):
    s = sorted(values)
    r = quantile(s, 0.99) - quantile(s, 0.01)
    if r <= 0:
        r = s[-1] - s[0]
    return r if r > 0 else 1.0


def reconstruct(n, kept, values):
    """Last value carried forward from the kept indices (the first point is always known)."""
    out = [0.0] * n
    ks = set(kept)
    last = values[0]
    for i in range(n):
        if i in ks:
            last = values[i]
        out[i] = last
    return out


def reconstruct_counter(times, kept, rates):
    """The average rate between consecutive kept points of the integrated counter, per point."""
    n = len(times)
    out = [0.0] * n
    ks = sorted(set(kept) | {0})
    total = [0.0] * n
    for i in range(1, n):
        total[i] = total[i - 1] + rates[i] * (times[i] - times[i - 1])
    for j in range(len(ks)):
        a = ks[j]
        b = ks[j + 1] if j + 1 < len(ks) else None
        if b is None:
            r = out[a - 1] if a else rates[0]  # past the last sent point the rate is unknown: hold
            for i in range(a, n):
                out[i] = r
        else:
            r = (total[b] - total[a]) / (times[b] - times[a])
            for i in range(a + 1, b + 1):
                out[i] = r
    out[0] = rates[0]
    return out


def peak_events(values, recon, kept, threshold, strict, rng, change):
    """The peaks over `threshold` (runs of consecutive points at or above it, or strictly above it
    when `strict`): [events, missed, unsampled, largest missed shortfall, largest shortfall]."""
    n = len(values)
    sent = set(kept)
    events = missed = unsampled = 0
    missed_max = shortfall_max = 0.0
    i = 0
    while i < n:
        if values[i] < threshold or (strict and values[i] == threshold):
            i += 1
            continue
        j = i
        top = rtop = None
        caught = False
        while j < n and (values[j] > threshold or (not strict and values[j] == threshold)):
            top = values[j] if top is None or values[j] > top else top
            rtop = recon[j] if rtop is None or recon[j] > rtop else rtop
            caught = caught or j in sent
            j += 1
        events += 1
        short = max(0.0, (top - rtop) / rng)
        shortfall_max = max(shortfall_max, short)
        if not caught:
            unsampled += 1
        if short > change:
            missed += 1
            missed_max = max(missed_max, short)
        i = j
    return [events, missed, unsampled, missed_max, shortfall_max]


def score(times, values, recon, kept, change=0.1, rng=None):
    """The error figures of one reconstruction against the full-rate trace (see the module doc)."""
    n = len(values)
    rng = rng or value_range(values)
    errs = sorted(abs(values[i] - recon[i]) / rng for i in range(n))
    ordered = sorted(values)
    p99 = peak_events(values, recon, kept, quantile(ordered, 0.99), False, rng, change)
    p95 = peak_events(values, recon, kept, quantile(ordered, 0.95), True, rng, change)
    step = times[1] - times[0] if n > 1 else 0
    stale = 0.0
    start = None
    for i in range(n + 1):
        off = i < n and abs(values[i] - recon[i]) > change * rng
        if off and start is None:
            start = i
        elif not off and start is not None:
            end = times[i] if i < n else times[-1] + step
            stale = max(stale, end - times[start])
            start = None
    return {
        "samples_kept": len(kept),
        "kept_share": round(len(kept) / n, 4),
        "err_mean": round(sum(errs) / n, 5),
        "err_p99": round(quantile(errs, 0.99), 5),
        "peaks": p99[0],
        "peaks_missed": p99[1],
        "peaks_unsampled": p99[2],
        "peaks95": p95[0],
        "peaks95_missed": p95[1],
        "peaks95_unsampled": p95[2],
        "peak_missed_max": round(max(p99[3], p95[3]), 4),
        "peak_shortfall_max": round(max(p99[4], p95[4]), 4),
        "stale_max_s": stale,
    }


def stale_after_load(times, values, recon, resumed, low, change, rng):
    """The longest time the reconstruction stayed more than `change` x R off the trace after a busy
    spell ended: from the moment the load (the trace, a CPU percentage) last fell to `low` before
    reading resumed at the base interval (`resumed`: trace indices), to the reconstruction's return."""
    worst = 0.0
    n = len(values)
    for r in resumed:
        e = r
        while e > 0 and values[e - 1] / 100.0 <= low:
            e -= 1
        j = e
        while j < n and abs(values[j] - recon[j]) <= change * rng and j <= r:
            j += 1  # on track since the load ended: look for a stale stretch starting before reading resumed
        if j > r or j >= n:
            continue
        k = j
        while k < n and abs(values[k] - recon[k]) > change * rng:
            k += 1
        end = times[k] if k < n else times[-1]
        worst = max(worst, end - times[max(j, e)])
    return worst


# ---------------------------------------------------------------------- running the sampler

def replay_params(params, step_s):
    """The sampler parameters for a trace: the trace step is the base interval unless given."""
    out = dict(params)
    base = int(round(step_s * 1000))
    if "interval_ms" not in out:
        out["interval_ms"] = max(base, 100)
    scale = out["interval_ms"] / SAMPLING_DEFAULTS["interval_ms"]
    if "max_interval_ms" not in out:
        out["max_interval_ms"] = int(SAMPLING_DEFAULTS["max_interval_ms"] * scale)
    return out


def integer_scale(values):
    """10^d that turns the trace's values into the integers a collector would report (d <= 4)."""
    for d in range(5):
        f = 10 ** d
        if all(abs(v * f - round(v * f)) < 1e-6 * f for v in values[:2000]):
            return f
    return 10 ** 4


def run_policy(times, values, params, collector="cpu", kind=GAUGE, load_from_trace=False, batch_s=10.0):
    """(kept indices, sampler, indices where reading resumed at the base interval after a back-off):
    the trace read, batched and thinned as the agent does, by a real Sampler and BatchBuilder.

    A batch is flushed every `batch_s` x the base interval, as the agent flushes every `batch_s`
    seconds at its default 1 s interval; values become integers (`integer_scale`), as a collector's."""
    params = dict(params)
    params[collector + "_base_ms"] = 0  # the trace's step governs this collector
    sampler = Sampler(params)
    table = SeriesTable()
    series = Series("replay", kind, "1")
    table.intern(series)
    builder = BatchBuilder()
    scale = integer_scale(values)
    batch_ms = int(batch_s * params["interval_ms"])
    kept, at, resumed = [], [], []
    total = 0.0
    t0 = times[0]
    flush_at = None

    def flush():
        sampler.thin(builder, table.series)
        mask = builder.masks[0] if builder.masks else 0
        for t in range(len(at)):
            if mask >> t & 1:
                kept.append(at[t])
        builder.clear()
        del at[:]

    for i in range(len(times)):
        now = int(round((times[i] - t0) * 1000))
        if kind == COUNTER and i:
            total += values[i] * (times[i] - times[i - 1])
        if flush_at is None:
            flush_at = now + batch_ms
        due = sampler.due(now)
        if load_from_trace and (due or sampler.load_due(now)):  # a CPU trace in percent doubles as the load
            level = sampler.level
            sampler.observe_load(now, values[i] / 100.0, None, None, None)
            if level and not sampler.level:
                resumed.append(i)
        if collector in due:
            if len(builder) >= MAX_TICKS:
                flush()
            value = total if kind == COUNTER else values[i]
            builder.add_tick(now, [(series, int(round(value * scale)))])
            at.append(i)
        if now >= flush_at:
            flush()
            flush_at += batch_ms
            if flush_at <= now:
                flush_at = now + batch_ms
    if len(builder):
        flush()
    return kept, sampler, resumed


def evaluate(path, policy, params=None, baseline_names=BASELINES, change=0.1, kind="gauge", collector="cpu",
             load_from_trace=False, batch=10.0, cache=None):
    """The replay result dict for one trace (what replay_main prints). `cache` (a dict) keeps the
    offline optimum's programmes for further calls on the same trace."""
    times, values, info = read_trace(path)
    params = dict(params or {})
    params["policy"] = policy
    params = replay_params(params, info["step_s"])
    errors = validate_sampling(params)
    if errors:
        raise ValueError("; ".join(errors))
    k = COUNTER if kind == "counter" else GAUGE
    kept, sampler, resumed = run_policy(times, values, params, collector, k, load_from_trace, batch)
    rng = value_range(values)
    n = len(values)

    def rebuild(idx):
        if k == COUNTER:
            return reconstruct_counter(times, idx, values)
        return reconstruct(n, idx, values)

    result = {"trace": path, "policy": policy, "kind": kind, "samples_in": n}
    result.update(score(times, values, rebuild(kept), kept, change, rng))
    result.update({"range": rng, "change_threshold": change, "batch": batch})
    if load_from_trace:
        result["load_resumed"] = len(resumed)
        result["stale_after_load_s"] = stale_after_load(times, values, rebuild(kept), resumed,
                                                        params.get("load_low", SAMPLING_DEFAULTS["load_low"]), change, rng)
    result.update(info)
    effective = sampler.snapshot()
    result["params"] = dict((key, effective[key]) for key in sorted(params))
    result["sends"] = dict(sampler.sends)
    m = len(kept)
    out = {}
    t_max = max(1, int(round(params["max_interval_ms"] / params["interval_ms"])))
    for name in baseline_names:
        if name == "uniform":
            idx = baselines.uniform_keep(n, m)
            tuned = {"step": round(n / m, 3) if m else None}
        elif name == "optimum":
            if k == COUNTER:
                continue  # its programme is for gauges (the last kept value carried forward)
            count, idx = baselines.optimum_match(values, m, cache)
            tuned = {"kept": count}
        elif name == "deadband":
            th, idx = baselines.match_kept(lambda t: baselines.deadband_keep(values, t), 0.0, 2.0 * rng + 1e-12, m)
            tuned = {"threshold": th, "threshold_norm": round(th / rng, 5)}
        else:
            tuned, idx = baselines.adam_match(values, m, t_max=t_max)
        entry = score(times, values, rebuild(idx), idx, change, rng)
        entry["tuned"] = tuned
        out[name] = entry
    if out:
        result["baselines"] = out
    return result
