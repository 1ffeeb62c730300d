"""Sampling policies: when to read each collector and which samples to send.

Reading and sending are separate decisions with separate knobs:

    reading  `due()` / `next_due_ms()`: each collector is read every `<c>_base_ms` (default
             `interval_ms`). The `load` policy stretches that read interval by `load_step` per
             step while the device (or the agent itself) is busy, up to `<c>_max_ms`.
    sending  `select()`: `fixed` and `load` send every sample they read. `adaptive` reads at the
             read interval but sends a series' sample only when it carries information (it left
             the series' confidence band) or when the series' heartbeat is due; the heartbeat
             interval doubles (`adaptive_growth`) while the series stays predictable, from
             `<c>_min_ms` up to `<c>_max_ms`, and falls back to `<c>_min_ms` at the first surprise.

So `<c>_max_ms` bounds the gap between two sent samples of any series under every policy: a silent
series is a dead one, never a quiet one. Policies: "fixed", "load", "adaptive", "load+adaptive".

The adaptive forecast. The central stack carries the last sent value forward, so that is the
forecast the device must keep honest. Per series the sampler tracks a probabilistic EWMA (PEWMA,
Carter and Streilein 2012: outliers get less weight, so one spike does not blow the band up) of
the step-to-step change |x[t] - x[t-1]| (the noise scale `d`) and of the value itself (its spread
`s`). A reading is a surprise, and is sent at once, when
    |x - last_sent| > band            band = max(adaptive_k * d, adaptive_floor * s)
or when the signed sum of (x - last_sent) since the last send exceeds `adaptive_drift * band`
(a slow drift inside the band that the last sent value no longer represents). A drift send does
not overshoot: it goes out on the first reading that is not a new step in the drift's direction
(a turn), so the held value is not the noise extreme that pushed the sum over the line. A floor of
`adaptive_range` x the series' running p5-p95 range stops the band collapsing on flat signals.
Warm-up: while the range trackers still learn (their first 1/QGAIN reads) the band is capped at
the running range, so a series that starts in a transient does not get a band inflated by its
first steps.
Peak guard: a reading above the series' running `adaptive_peak_q` quantile that has risen more
than `adaptive_peak_rise` running ranges over the last sent value is sent too, so a rising peak is
followed to its top; such a tail capture does not reset the heartbeat. The quantiles are O(1)
stochastic-approximation trackers (class Quantile): strictly causal, a few numbers per series.

Counters (model.COUNTER) are cumulative, so skipping one loses nothing: the decision is made on
their rate (delta per second between reads) and a sent counter sample always carries the current
cumulative value; a counter that goes backwards (reset) is sent at once. Histograms are sent when
they changed or when their heartbeat is due.

The knobs' defaults and bounds, and `validate_sampling` (importable from here too), live in
edge_agent.sampling_rules, which checks a sampling section without loading the policies.

MicroPython-compatible core: plain classes, no typing, only `math`.
"""

import math

from edge_agent.model import COUNTER, HISTOGRAM
from edge_agent.sampling_rules import COLLECTORS, KNOBS, PER_COLLECTOR, collector_intervals, knob, validate_sampling

SAMPLING_DEFAULTS = {"policy": "fixed"}  # every knob with its default value
for _line in KNOBS.split("\n"):
    if _line:
        _key = _line.split()[0]
        SAMPLING_DEFAULTS[_key] = knob(_key)[0]
for _c in COLLECTORS:
    for _suffix in PER_COLLECTOR:
        SAMPLING_DEFAULTS[_c + _suffix] = 0

MAX_LEVEL = 16
PEAK_RISE = 0.25  # adaptive_peak_z: a rise in the tail must exceed this share of the band to count
RANGE_Q = 0.95  # the running range is the p5-p95 spread of the series
QGAIN = 0.005  # quantile trackers: step per read, as a share of the running range


class Pewma:
    """Probabilistic EWMA of one signal: mean `s1` and second moment `s2`.

    The weight on history is alpha * (1 - beta * P), P the standard normal density at the new
    point's z-score: typical points move the estimate, outliers barely do. The first points use
    a plain running mean so the estimate starts from data, not from zero.
    """

    def __init__(self):
        self.n = 0
        self.s1 = 0.0
        self.s2 = 0.0

    def sd(self):
        v = self.s2 - self.s1 * self.s1
        return math.sqrt(v) if v > 0 else 0.0

    def update(self, x, alpha, beta):
        self.n += 1
        if self.n == 1:
            self.s1 = x
            self.s2 = x * x
            return
        a = alpha
        sd = self.sd()
        if sd > 0:
            z = (x - self.s1) / sd
            if z < 8 and z > -8:
                a = alpha * (1 - beta * 0.3989422804014327 * math.exp(-0.5 * z * z))
        warm = 1.0 - 1.0 / self.n
        if warm < a:
            a = warm
        self.s1 = a * self.s1 + (1 - a) * x
        self.s2 = a * self.s2 + (1 - a) * x * x


class _SeriesState:
    """What the adaptive policy keeps per series (about 20 numbers)."""

    def __init__(self, collector):
        self.collector = collector
        self.sent_x = None  # the signal (value, or rate for counters) at the last send
        self.sent_raw = None  # the raw value last sent (histograms compare it)
        self.sent_ms = 0
        self.interval_ms = 0  # current heartbeat interval
        self.prev_x = None
        self.prev_raw = None
        self.prev_ms = 0
        self.drift = 0.0  # signed sum of (x - sent_x) over the reads since the last send
        self.noise = Pewma()  # of |x[t] - x[t-1]|
        self.level = Pewma()  # of x
        self.lo = Quantile(1 - RANGE_Q)  # running p5 and p95: the series' own scale
        self.hi = Quantile(RANGE_Q)
        self.top = Quantile(0.98)  # running high quantile for the peak guard (q from the knob)


class Quantile:
    """A running quantile `q` of one signal, O(1) per point (stochastic approximation).

    Each point moves the estimate up by q * step when it lies above, down by (1 - q) * step
    otherwise, so it settles where a share q of the points lies below. The step is QGAIN of the
    series' running range (or of the distance to the point when that is larger, so a new regime is
    reached quickly); the first points use a 1/n gain so the estimate starts from data.
    """

    def __init__(self, q):
        self.q = q
        self.v = None

    def update(self, x, scale, n):
        if self.v is None:
            self.v = x
            return
        g = QGAIN if QGAIN > 1.0 / n else 1.0 / n
        d = x - self.v
        if d > 0:
            self.v += self.q * g * (d if d > scale else scale)
        elif d < 0:
            self.v -= (1 - self.q) * g * (-d if -d > scale else scale)
        else:
            self.v -= (1 - self.q) * g * scale


class Sampler:
    def __init__(self, params=None):
        self.params = dict(SAMPLING_DEFAULTS)
        errors = self.update(params or {})
        if errors:
            raise ValueError("sampling: " + "; ".join(errors))
        self.level = 0  # load steps currently applied to the read intervals
        self.over = 0
        self.under = 0
        self.pressure = None
        self.self_cpu = None
        self.next_ms = {}
        self.last_read_ms = {}
        self.series = {}  # series key -> _SeriesState
        self.sends = {"surprise": 0, "heartbeat": 0, "skipped": 0}
        self._apply()

    # ------------------------------------------------------------------ configuration

    def update(self, params):
        """Apply a (partial) parameter dict if valid; return the list of problems (empty: applied)."""
        errors = validate_sampling(params)
        if errors:
            return errors
        self.params.update(params)
        if hasattr(self, "level"):
            self._apply()
        return []

    def _apply(self):
        p = self.params
        self.adaptive = p["policy"] in ("adaptive", "load+adaptive")
        self.loaded = p["policy"] in ("load", "load+adaptive")
        if not self.loaded:
            self.level = 0
            self.over = self.under = 0
        self.iv = {}
        for c in COLLECTORS:
            self.iv[c] = collector_intervals(p, c)
        self._reschedule()

    def _reschedule(self):
        """Recompute every collector's next read from its last read: a change applies at once."""
        for c in COLLECTORS:
            last = self.last_read_ms.get(c)
            if last is not None:
                self.next_ms[c] = last + self.read_interval_ms(c)

    def read_interval_ms(self, collector):
        base, _, high = self.iv[collector]
        if self.level == 0:
            return base
        ms = base * self.params["load_step"] ** self.level
        return int(ms) if ms < high else high

    def snapshot(self):
        """The effective configuration: every knob, plus the current read intervals and load state."""
        out = dict(self.params)
        reads = {}
        for c in COLLECTORS:
            reads[c] = self.read_interval_ms(c)
        out["effective"] = {"load_level": self.level, "pressure": self.pressure, "self_cpu": self.self_cpu,
                            "read_ms": reads}
        return out

    # ------------------------------------------------------------------ reading

    def due(self, now_ms):
        """Collector names to read now; each is rescheduled one read interval later (no catch-up)."""
        names = []
        for c in COLLECTORS:
            at = self.next_ms.get(c)
            if at is None or at <= now_ms:
                names.append(c)
                iv = self.read_interval_ms(c)
                at = now_ms + iv if at is None else at + iv
                if at <= now_ms:  # fell behind (suspend, overload): skip, do not catch up
                    at = now_ms + iv
                self.next_ms[c] = at
                self.last_read_ms[c] = now_ms
        return names

    def next_due_ms(self):
        if not self.next_ms:
            return 0
        return min(self.next_ms.values())

    def observe_load(self, now_ms, cpu_util, runq, mem_avail_ratio, self_cpu):
        """Feed the device's load signals (None when unknown); steps the `load` policy."""
        p = self.params
        pressure = None
        if cpu_util is not None:
            pressure = cpu_util
        if runq is not None:
            q = runq / p["load_runq_full"]
            pressure = q if pressure is None or q > pressure else pressure
        if mem_avail_ratio is not None:
            m = 1.0 - mem_avail_ratio
            pressure = m if pressure is None or m > pressure else pressure
        self.pressure = pressure
        self.self_cpu = self_cpu
        if not self.loaded:
            return
        budget = p["cpu_budget"]
        over = (pressure is not None and pressure >= p["load_high"]) or (self_cpu is not None and self_cpu > budget)
        under = (pressure is None or pressure <= p["load_low"]) and (self_cpu is None or self_cpu <= budget * 0.5)
        if over:
            self.under = 0
            self.over += 1
            if self.over >= p["load_hold"]:
                self.over = 0
                if not self._at_ceiling():
                    self.level += 1
                    self._reschedule()
        elif under:
            self.over = 0
            self.under += 1
            if self.under >= p["load_hold"]:
                self.under = 0
                if self.level:
                    self.level = 0
                    self._reschedule()
        else:  # between the watermarks: hold the current level
            self.over = self.under = 0

    def _at_ceiling(self):
        if self.level >= MAX_LEVEL:
            return True
        for c in COLLECTORS:
            if self.read_interval_ms(c) < self.iv[c][2]:
                return False
        return True

    # ------------------------------------------------------------------ sending

    def effective_interval_ms(self, series):
        """The series' current send interval: its heartbeat (adaptive) or its read interval."""
        st = self.series.get(series.key)
        if st is None:
            return self.read_interval_ms("cpu")
        if self.adaptive and st.interval_ms:
            return st.interval_ms
        return self.read_interval_ms(st.collector)

    def select(self, now_ms, collector, samples):
        """The samples worth sending out of one read of `collector`."""
        if collector not in self.iv:
            return samples
        if not self.adaptive:
            for pair in samples:
                if pair[0].key not in self.series:
                    self.series[pair[0].key] = _SeriesState(collector)
            return samples
        kept = []
        for pair in samples:
            if self._keep(now_ms, collector, pair[0], pair[1]):
                kept.append(pair)
        return kept

    def _keep(self, now, collector, series, value):
        st = self.series.get(series.key)
        if st is None:
            st = _SeriesState(collector)
            self.series[series.key] = st
        st.collector = collector
        base, low, high = self.iv[collector]
        p = self.params
        if series.kind == HISTOGRAM:
            x = None
        elif series.kind == COUNTER:
            if st.prev_raw is None or value < st.prev_raw or now <= st.prev_ms:
                x = None  # first sight or reset: no rate yet, send to re-anchor
            else:
                x = (value - st.prev_raw) * 1000.0 / (now - st.prev_ms)
        else:
            x = float(value)
        first = st.sent_raw is None
        prev_x = st.prev_x
        st.prev_raw = value
        st.prev_ms = now
        st.prev_x = x
        if first or (x is None and series.kind != HISTOGRAM):
            return self._send(st, now, x, value, low)
        if series.kind == HISTOGRAM:
            if value != st.sent_raw:
                return self._send(st, now, x, value, low)
            return self._heartbeat(st, now, x, value, base, high)
        if st.sent_x is None:  # a counter's first rate after a send without one
            st.sent_x = x
        rng = st.hi.v - st.lo.v if st.hi.v is not None else 0.0
        if rng < 0:
            rng = 0.0
        band = p["adaptive_k"] * st.noise.s1
        floor = p["adaptive_floor"] * st.level.sd()
        if floor > band:
            band = floor
        if 0 < rng < band and st.level.n * QGAIN < 1:
            band = rng  # warm-up: a band from the first few steps may not exceed the range seen so far
        floor = p["adaptive_range"] * rng
        if floor > band:
            band = floor
        dev = x - st.sent_x
        st.drift += dev
        peak = False
        peak_q = p["adaptive_peak_q"]
        rise = p["adaptive_peak_rise"] * rng
        if peak_q > 0 and st.top.v is not None and x > st.top.v and dev > rise:
            peak = True  # above the running high quantile, and risen since the last send
        peak_z = p["adaptive_peak_z"]
        if peak_z > 0 and st.level.n > 1 and dev > band * PEAK_RISE and x > st.level.s1 + peak_z * st.level.sd():
            peak = True
        if prev_x is not None:
            step = x - prev_x
            st.noise.update(step if step >= 0 else -step, p["adaptive_alpha"], p["adaptive_beta"])
        st.level.update(x, p["adaptive_alpha"], p["adaptive_beta"])
        n = st.level.n
        st.lo.update(x, rng, n)
        st.hi.update(x, rng, n)
        st.top.q = peak_q
        st.top.update(x, rng, n)
        if dev > band or -dev > band:
            return self._send(st, now, x, value, low)
        if peak:  # a tail capture, not a sign of unpredictability: the heartbeat keeps its pace
            return self._send(st, now, x, value, st.interval_ms or low)
        drift = p["adaptive_drift"]
        if drift > 0 and (st.drift > drift * band or -st.drift > drift * band) and self._settled(st, x, prev_x, p, rng):
            return self._send(st, now, x, value, low)
        return self._heartbeat(st, now, x, value, base, high)

    def _settled(self, st, x, prev_x, p, rng):
        """Whether a due drift send goes out on this reading, or waits for the next turn.

        The reading that pushes the drift sum over the trigger tends to be a noise extreme on the
        drift's side; holding it would move the reconstruction past the new level (on a noisy
        plateau, below the tops the operator should still see). So the send goes out on the first
        reading that is not a new step in the drift's direction (not below the previous reading for
        a downward drift, not above it for an upward one, give or take the `adaptive_range` floor).
        A trend inside the band waits until it leaves the band, which sends at once; the heartbeat
        bounds the wait.
        """
        if prev_x is None:
            return True
        tol = p["adaptive_range"] * rng
        if st.drift < 0:
            return x >= prev_x - tol
        return x <= prev_x + tol

    def _send(self, st, now, x, value, low):
        st.sent_x = x
        st.sent_raw = value
        st.sent_ms = now
        st.interval_ms = low
        st.drift = 0.0
        self.sends["surprise"] += 1
        return True

    def _heartbeat(self, st, now, x, value, base, high):
        # a quarter of the read interval absorbs scheduling jitter
        if now - st.sent_ms + self.read_interval_ms(st.collector) // 4 < st.interval_ms:
            self.sends["skipped"] += 1
            return False
        st.sent_x = x
        st.sent_raw = value
        st.sent_ms = now
        st.drift = 0.0
        grown = int(st.interval_ms * self.params["adaptive_growth"])
        st.interval_ms = grown if grown < high else high
        self.sends["heartbeat"] += 1
        return True
