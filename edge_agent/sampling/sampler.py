"""Sampling policies: when to read each collector and which readings to send.

Reading and sending are separate decisions with separate knobs:

    reading  `due()` / `next_due_ms()`: each collector is read every `<c>_base_ms` (default
             `interval_ms`). The `load` policies stretch that read interval by `load_step` per
             step while the device (or the agent itself) is busy, up to `<c>_max_ms`. The load
             itself is watched at the base interval all the while (`load_due`), so reading returns
             to the base interval within `load_hold` base intervals of the load ending.
    sending  `fixed` and `load` send every reading. `adaptive` and `load+adaptive` decide at the
             batch's flush, having seen the whole batch (`thin`): the agent holds each batch before
             sending it anyway, so choosing after seeing it costs no latency.

The adaptive choice, per series and batch. The receiver shows a gauge's last sent value until the
next one, and a counter's average rate between two sent totals. Knowing what the receiver shows
from before the batch, a small dynamic programme over the batch's n readings (O(n^2), n <= 64)
chooses the readings that minimise

    sum of |reading - what the receiver shows| x how long it is shown  +  price x readings sent

(for a counter, the squared deviation of each rate from its stretch's average rate). The price is
the series' own, exp(mu): it starts at e^MU0 x the range the series has shown (x one base interval;
squared for a counter's rates; none while the series has not moved), and a slow controller moves mu
after each batch so that the series sends `adaptive_share` of its readings in the long run:
mu += (sent - budget) / (share x adaptive_settle), faster while the series is young, the budget
paying back what was sent beyond the share (or spending what was saved) over the series' age
(REPAY_MIN to REPAY reads). One price over a long stretch is also what the best offline choice for
a budget uses (its Lagrange multiplier): samples go where they remove the most error, not evenly in
time or equally per batch.

Around the choice three rules force readings, and the programme is solved again with them fixed:
- peak guard: a reading at a local high (not below its neighbours, at or above the series' running
  `adaptive_guard_q` quantile) that lies more than `adaptive_guard` running ranges above what the
  receiver would show is sent, and a local low (at or below the 1 - q quantile) likewise;
- heartbeat: no series stays silent for `<c>_max_ms` (the effective interval the batch reports);
- a series' first reading, and a counter's reset with the reading before it, are sent.
Counters stay exact: a sent counter reading is its cumulative total, so rates downstream are exact
averages over any stretch. Histograms are cumulative too: the batch's last reading is sent when it
changed since the last one sent.

The knobs' defaults and bounds, and `validate_sampling` (importable from here too), live in
edge_agent.sampling.rules, which checks a sampling section without loading the policies.

MicroPython-compatible core: plain classes, no typing, only `math`. Small on a device: a series'
state is one list of a dozen slots, the programme runs on integers (weights in 1/UNIT of the base
interval) in scratch lists kept between flushes, and the readings are read back from the batch
(wire.BatchBuilder.thin) rather than copied.
"""

import math

from edge_agent.sampling.rules import COLLECTORS, KNOBS, PER_COLLECTOR, collector_intervals, knob, validate_sampling
from edge_wire import COUNTER, HISTOGRAM

SAMPLING_DEFAULTS = {"policy": "fixed"}  # every knob with its default value
for _line in KNOBS.split("\n"):
    if _line:
        _key = _line.split()[0]
        SAMPLING_DEFAULTS[_key] = knob(_key)[0]
for _c in COLLECTORS:
    for _suffix in PER_COLLECTOR:
        SAMPLING_DEFAULTS[_c + _suffix] = 0

MAX_LEVEL = 16
UNIT = 16  # weight of a reading shown for one base interval (the programme runs on integers)
QSTEPS = 200  # running quantiles: a step per read is the running range / QSTEPS (1/reads while younger)
MU_ONE = 1024  # the log price is kept in fixed point
MU0 = -2.0  # the first price: e^MU0 x the series' range (then its running p1-p99) x a base interval
MU_LOW = 0  # the log price's bounds (the programme's integer units)
MU_HIGH = 90 * MU_ONE
RATE = 1000  # counter rates per second
SETTLE_MIN = 100  # reads: the controller's fastest pace, while a series is young
REPAY_MIN = 500  # reads over which a series pays back what it sent beyond its share (or spends what it
REPAY = 4000  # saved): its age, within these bounds (a young series settles its first batches' error fast)
WARM = 50  # reads before the guard's tails are trusted (every local high is watched until then)

# A series' state is one list (smaller than an object on MicroPython); its slots:
HELD = 0  # what the receiver shows: a gauge's last sent value (a histogram's), None before any
HELD_MS = 1  # when that reading was taken (ms, the batch's clock)
PREV = 2  # the last reading (a counter's total) and its time
PREV_MS = 3
MU = 4  # log of the price x MU_ONE (price: value x UNIT per reading; value^2 x UNIT for a counter)
HI = 5  # running q quantile of the value (a counter's rate) x 256: the guard's high tail; None before any
BOT = 6  # running p1 and p99 x 256: the guard's low tail, and the range that scales its tolerance
TOP = 7
READS = 8
BAL = 9  # thousandths of a reading the series may still send (+) or sent beyond its share (-), in all
TW = 10  # counters: the readings since the last sent one, as their weight, sum of w x rate and of w x rate^2
T1 = 11
T2 = 12
KIND = 13  # edge_wire.GAUGE, COUNTER or HISTOGRAM
SLOTS = 14
Q_TOP = 1014  # the running p99 (and p1), in 1024ths


def exp_fixed(mu):
    """exp(mu / MU_ONE) as an integer, without floats: 2^(integer part) x a quadratic for the rest
    exact at the powers of two, within 0.3 % between. A float is an object on the heap of a 64-bit
    MicroPython."""
    if mu <= 0:
        return 1
    bits = mu * 1477 >> 10  # in 1024ths of a bit: 1 / ln 2 = 1.4427 = 1477 / 1024
    f = bits & 1023
    return ((1024 + (f * 672 >> 10) + (f * f * 352 >> 20)) << (bits >> 10)) >> 10


class Sampler:
    def __init__(self, params=None):
        self.params = dict(SAMPLING_DEFAULTS)
        errors = self.update(params or {})
        if errors:
            raise ValueError("sampling: " + "; ".join(errors))
        self.level = 0  # load steps currently applied to the read intervals
        self.level_seen = 0  # the highest level since the last flush
        self.batch_level = 0  # the highest level while the batch being sent was read
        self.over = 0
        self.under = 0
        self.pressure = None
        self.self_cpu = None
        self.next_ms = {}
        self.last_read_ms = {}
        self.watch_ms = None  # the next load observation
        self.states = []  # series id -> its state (SLOTS), None until its first batch
        self.coll = bytearray()  # series id -> index of its collector, kept while intervals differ by collector
        self.sends = {"sent": 0, "skipped": 0, "guard": 0, "heartbeat": 0}
        self.scratch = None  # the flush's lists, made once (`_scratch`)
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
        self.share_1000 = int(p["adaptive_share"] * 1000 + 0.5)  # the knobs the flush uses, as integers
        self.guard_1024 = int(p["adaptive_guard"] * 1024 + 0.5)
        self.q_hi = int(p["adaptive_guard_q"] * 1024 + 0.5)
        self.split = False  # do intervals differ by collector? then each series' collector is kept
        for c in COLLECTORS:
            self.split = self.split or self.iv[c] != self.iv["cpu"]
        self._reschedule()

    def _reschedule(self):
        """Recompute every collector's next read from its last read: a change applies at once."""
        for c in COLLECTORS:
            last = self.last_read_ms.get(c)
            if last is not None:
                self.next_ms[c] = last + self.read_interval_ms(c)

    def read_interval_ms(self, collector, level=None):
        base, high = self.iv[collector]
        level = self.level if level is None else level
        if level == 0:
            return base
        ms = base * self.params["load_step"] ** level
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
        """When the next read (or, backed off, the next load observation) is due."""
        if not self.next_ms:
            return 0
        at = min(self.next_ms.values())
        if self.level and self.watch_ms is not None and self.watch_ms < at:
            return self.watch_ms
        return at

    def load_due(self, now_ms):
        """Whether the load policies want the device's load observed now: at every base interval,
        however far the reads are stretched, so the end of a busy spell is seen at once."""
        if not self.loaded:
            return False
        if self.watch_ms is not None and now_ms < self.watch_ms:
            return False
        self.watch_ms = now_ms + self.params["interval_ms"]
        return True

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
        if self.watch_ms is None or self.watch_ms <= now_ms:
            self.watch_ms = now_ms + p["interval_ms"]
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
                    if self.level > self.level_seen:
                        self.level_seen = self.level
                    self._reschedule()
        elif under:
            self.over = 0
            self.under += 1
            if self.under >= p["load_hold"]:
                self.under = 0
                if self.level:
                    self.level = 0
                    self._reschedule()  # the next read is due at once: one base interval after the last
        else:  # between the watermarks: hold the current level
            self.over = self.under = 0

    def _at_ceiling(self):
        if self.level >= MAX_LEVEL:
            return True
        for c in COLLECTORS:
            if self.read_interval_ms(c) < self.iv[c][1]:
                return False
        return True

    # ------------------------------------------------------------------ sending

    def select(self, now_ms, collector, samples):
        """The readings of one read of `collector` go into the batch whole (adaptive thins it at
        flush); while intervals differ by collector, each series' collector is noted."""
        if self.split and collector in self.iv:
            index = COLLECTORS.index(collector)
            coll = self.coll
            for pair in samples:
                sid = pair[0].id
                if sid >= 0:
                    if sid >= len(coll):
                        coll.extend(bytes(sid + 1 - len(coll)))
                    coll[sid] = index
        return samples

    def collector_of(self, sid):
        return COLLECTORS[self.coll[sid]] if self.split and 0 <= sid < len(self.coll) else "cpu"

    def effective_interval_ms(self, series):
        """The longest gap the series may have between two sent samples around this batch: its
        heartbeat `<c>_max_ms` (adaptive), else the longest read interval since the last flush."""
        collector = self.collector_of(series.id)
        if self.adaptive:
            return self.iv[collector][1]
        return self.read_interval_ms(collector, self.batch_level if self.batch_level > self.level else self.level)

    def thin(self, builder, series):
        """At flush, before encoding: narrow the batch in `builder` (wire.BatchBuilder) to what each
        series sends. `series` maps ids to Series (the agent's SeriesTable.series)."""
        if self.adaptive and len(builder):
            self.table = series
            self.ticks = builder.ticks
            self._scratch(len(builder.ticks))
            builder.thin(self._choose, self.scratch[0])
            self.table = self.ticks = None
        self.batch_level = self.level_seen
        self.level_seen = self.level

    def _scratch(self, n):
        """The flush's working lists, n + 1 slots each, made once and grown with the batch."""
        if self.scratch is None or len(self.scratch[0]) <= n:
            self.scratch = [[0] * (n + 1) for _ in range(8)]  # values, times, weights, E, back, P0, P1, P2

    def _choose(self, sid, mask, values, n):
        """The ticks of `mask` that series `sid` sends; `values` holds its n readings, in tick order."""
        states = self.states
        if sid >= len(states):
            states.extend([None] * (sid + 1 - len(states)))
        st = states[sid]
        if st is None:
            st = states[sid] = [None, 0, None, 0, None, None, None, None, 0, 0, 0, 0, 0, self.table[sid].kind]
        scratch = self.scratch
        ts = scratch[1]
        ticks = self.ticks
        j = t = 0
        m = mask
        while m:  # the readings' times
            if m & 1:
                ts[j] = ticks[t]
                j += 1
            m >>= 1
            t += 1
        base, high = self.iv[self.collector_of(sid)]
        if st[KIND] == HISTOGRAM:
            chosen = self._histogram(st, values, n, ts, high, base)
        else:
            chosen = self._series(st, st[KIND] == COUNTER, values, n, ts, base, high)
        if chosen == (1 << n) - 1:
            return mask
        out = 0  # the chosen readings back to tick bits
        j = t = 0
        m = mask
        while m:
            if m & 1:
                if chosen >> j & 1:
                    out |= 1 << t
                j += 1
            m >>= 1
            t += 1
        return out

    def _histogram(self, st, values, n, ts, high, base):
        """A cumulative histogram: its last reading when it changed, or when the heartbeat is due."""
        last = values[n - 1]
        chosen = 0
        if last != st[HELD] or ts[n - 1] - st[HELD_MS] + base // 4 >= high:
            chosen = 1 << (n - 1)
            st[HELD] = last
            st[HELD_MS] = ts[n - 1]
        self.sends["sent"] += chosen >> (n - 1)
        self.sends["skipped"] += n - (chosen >> (n - 1))
        return chosen

    def _series(self, st, counter, values, n, ts, base, high):
        """Gauges and counters: track, choose by the programme, force, steer the price. Integers only
        (on a 64-bit MicroPython a float is an object on the heap): fixed point where fractions are."""
        p = self.params
        ws = self.scratch[2]
        forced = 1 if st[HELD] is None else 0  # the first reading of a series anchors it
        prev, prev_ms = st[PREV], st[PREV_MS]
        last_total = values[n - 1]
        slack = base // 4  # scheduling jitter, as the reads' own
        for j in range(n):  # weights: how long each reading is shown, in 1/UNIT base intervals
            dt = (ts[j + 1] if j + 1 < n else ts[j] + base) - ts[j]
            ws[j] = UNIT if base - slack <= dt <= base + slack else (dt * UNIT + base // 2) // base or 1
        if counter:  # decide on the rates; a reset (and the reading before it) is sent
            for j in range(n):
                total = values[j]
                if prev is None or total < prev or ts[j] <= prev_ms:
                    forced |= 1 << j
                    if j and prev is not None and total < prev:
                        forced |= 1 << (j - 1)
                    rate = 0
                    ws[j] = 0
                else:
                    dt = ts[j] - prev_ms
                    rate = (total - prev) * RATE // dt
                    # a rate covers the time since the read before
                    ws[j] = UNIT if base - slack <= dt <= base + slack else (dt * UNIT + base // 2) // base or 1
                prev, prev_ms = total, ts[j]
                values[j] = rate
            prev = None  # the rate before the batch's first is not kept: no left neighbour
        # the batch is judged against the quantiles of the series' past (the first batch: its
        # extremes), then moves them
        first = st[HI] is None
        if first:
            self._track(st, values, n)
        hi = st[HI]
        bot = st[BOT]
        top = st[TOP]
        rng = top - bot
        if not first:
            self._track(st, values, n)
        held = st[HELD]
        if held is None:
            held = values[0]
        held_ms = st[HELD_MS]
        if st[MU] is None:  # the first price: from the range seen so far (the first batch's when young)
            r = rng >> 8 if rng > 0 else 0
            if not r:
                for j in range(n):
                    d = values[j] - values[0]
                    d = d if d > 0 else -d
                    r = d if d > r else r
            if r:
                st[MU] = int((math.log(r * UNIT * (r if counter else 1)) + MU0 * (2 if counter else 1)) * MU_ONE)
        tol = self.guard_1024 * rng >> 18
        # the guard's tails: above the running q quantile, or within the tolerance of the running p99
        # (a quantised top level that the quantile lies just above is in the tail too); below the
        # running p1 (a new low). While the quantiles are still young every local high is watched.
        q_hi = hi >> 8
        if q_hi > (top >> 8) - tol:
            q_hi = (top >> 8) - tol
        q_lo = bot >> 8
        if st[READS] <= WARM:
            q_hi = q_lo
        highs = lows = 0  # local extremes in the tails: the peak guard watches them
        flat = not counter and st[HELD] is not None  # every reading what the receiver shows already?
        if self.guard_1024 < 1024 or flat:
            left = None if counter else prev
            for j in range(n):
                x = values[j]
                if flat and x != held:
                    flat = False
                right = values[j + 1] if j + 1 < n else None
                if x >= q_hi and (left is None or x >= left) and (right is None or x >= right):
                    highs |= 1 << j
                elif x <= q_lo and (left is None or x <= left) and (right is None or x <= right):
                    lows |= 1 << j
                left = x
            if self.guard_1024 >= 1024:
                highs = lows = 0
        lam = exp_fixed(st[MU]) + 1 if st[MU] is not None else 1
        while True:
            if flat and ts[n - 1] - held_ms + slack < high:
                chosen = 0  # nothing to send: no error to remove, no heartbeat due
                break
            if counter:
                chosen = self._programme_counter(values, ws, n, st, lam, forced)
                bad = self._check_counter(values, ws, ts, n, st, chosen, highs, lows, tol, held_ms, slack, high)
            else:
                chosen = self._programme_gauge(values, ws, n, held, lam, forced)
                bad = self._check_gauge(values, ts, n, held, chosen, highs, lows, tol, held_ms, slack, high)
            if bad < 0:
                break
            if forced >> bad & 1:  # a counter's rate still under-shown: send the reading before it too
                if bad == 0 or forced >> (bad - 1) & 1:
                    break
                bad -= 1
            forced |= 1 << bad
            self.sends["guard" if (highs | lows) >> bad & 1 else "heartbeat"] += 1
        # what the receiver shows from now on, and the price for the next batch
        sent = nforced = 0
        last = -1
        for j in range(n):
            if chosen >> j & 1:
                sent += 1
                last = j
                nforced += forced >> j & 1
        self.sends["sent"] += sent
        self.sends["skipped"] += n - sent
        if last >= 0:
            st[HELD] = values[last] if not counter else last_total
            st[HELD_MS] = ts[last]
        if counter:
            tw = t1 = t2 = 0
            if last < 0:
                tw = st[TW]  # (one name at a time: a tuple of three is built on MicroPython)
                t1 = st[T1]
                t2 = st[T2]
            for j in range(last + 1, n):
                w = ws[j]
                r = values[j]
                tw += w
                t1 += w * r
                t2 += w * r * r
            st[TW] = tw
            st[T1] = t1
            st[T2] = t2
        st[PREV] = last_total
        st[PREV_MS] = ts[n - 1]
        # the budget, in thousandths of a reading: forced readings count against it, but the
        # programme keeps at least half of it (a series whose guard and heartbeat take more than
        # half sends more than its share); what was sent beyond the share (or saved) is paid back
        # (spent) over as many reads as the series has had (REPAY_MIN to REPAY)
        share = self.share_1000
        settle = p["adaptive_settle"]
        if st[READS] < settle:  # faster while the series is young: a first price far off costs less
            settle = st[READS] if st[READS] > SETTLE_MIN else SETTLE_MIN
        bal = st[BAL] + share * n - 1000 * sent
        st[BAL] = bal
        repay = st[READS] if st[READS] > REPAY_MIN else REPAY_MIN
        repay = repay if repay < REPAY else REPAY
        budget = share * n - 1000 * nforced + n * bal // repay
        if budget < share * n // 2:
            budget = share * n // 2
        if st[MU] is not None:  # (None: nothing moved yet, no price to steer)
            mu = st[MU] + (1000 * (sent - nforced) - budget) * MU_ONE // (share * settle)
            st[MU] = MU_LOW if mu < MU_LOW else MU_HIGH if mu > MU_HIGH else mu
        return chosen

    def _track(self, st, values, n):
        """Move the running quantiles (the guard's tails, and the p1-p99 range that scales its
        tolerance) by the batch's readings, in fixed point (x 256); returns the running range."""
        reads = st[READS] + n
        st[READS] = reads
        lo = hi = values[0]
        for j in range(n):
            x = values[j]
            if x < lo:
                lo = x
            elif x > hi:
                hi = x
        if st[HI] is None:  # the first batch: its extremes
            st[BOT] = lo << 8
            st[HI] = st[TOP] = hi << 8
            return (hi - lo) << 8
        rng = st[TOP] - st[BOT]
        if rng <= 0:  # a series that was flat and moves: steps from what it does now
            rng = (hi - lo) << 8
        step = rng // QSTEPS if reads > QSTEPS else rng // reads
        if step < 1:
            step = 1
        # a step up for each reading above a quantile, down for each one not: it settles there
        hi = st[HI]
        bot = st[BOT]
        top = st[TOP]
        up_hi = up_bot = up_top = 0
        for j in range(n):
            x = values[j] << 8
            if x > hi:
                up_hi += 1
            if x > bot:
                up_bot += 1
            if x > top:
                up_top += 1
        q = self.q_hi
        st[HI] = hi + (step * (q * up_hi - (1024 - q) * (n - up_hi)) >> 10)
        q = Q_TOP
        st[BOT] = bot + (step * ((1024 - q) * up_bot - q * (n - up_bot)) >> 10)
        st[TOP] = top + (step * (q * up_top - (1024 - q) * (n - up_top)) >> 10)
        if st[BOT] > st[TOP]:
            st[BOT] = st[TOP]
        return st[TOP] - st[BOT]

    def _programme_gauge(self, xs, ws, n, held, lam, forced):
        """The readings (bits) to send: least sum of |x - shown| x weight + lam per reading sent.

        E[k] is the least cost of readings 0..k-1 with reading k-1 sent (E[0]: none sent, `held`
        shown); a forced reading cannot be held past. What follows the batch is the next batch's
        to decide (counting the held value beyond the batch's end measured no better)."""
        scratch = self.scratch
        E, back = scratch[3], scratch[4]
        E[0] = 0
        for k in range(1, n + 1):
            E[k] = -1
        best = -1
        best_p = 0
        for p in range(n + 1):
            s = E[p]
            if s < 0 or 0 <= best <= s:  # (no completion from here beats the best one found)
                continue
            v = held if p == 0 else xs[p - 1]
            s += lam
            k = p
            while k < n:
                if 0 <= best <= s - lam:  # the errors only add up: nothing further beats the best
                    break
                e = E[k + 1]
                if e < 0 or s < e:
                    E[k + 1] = s
                    back[k + 1] = p
                if forced >> k & 1:
                    break
                d = xs[k] - v
                s += ws[k] * (d if d >= 0 else -d)
                k += 1
            else:  # held to the end of the batch
                s -= lam
                if best < 0 or s < best:
                    best = s
                    best_p = p
        chosen = 0
        p = best_p
        while p:
            chosen |= 1 << (p - 1)
            p = back[p]
        return chosen

    def _check_gauge(self, xs, ts, n, held, chosen, highs, lows, tol, held_ms, slack, high):
        """The reading the guard or the heartbeat forces, given `chosen`; -1 when none.

        The guard's: a tail reading (`highs`, `lows`) at a new high (low) since the last reading
        sent, more than `tol` beyond what the receiver shows; of those, the furthest beyond (the
        top of a peak rather than its flank). The heartbeat's: the first reading due."""
        v = held
        top = bottom = held  # the highest and lowest reading since the last one sent
        worst = tol
        bad = -1
        for j in range(n):
            x = xs[j]
            if chosen >> j & 1:
                v = top = bottom = x
                held_ms = ts[j]
                continue
            if x > top:
                if highs >> j & 1 and x - v > worst:
                    worst = x - v
                    bad = j
                top = x
            elif x < bottom:
                if lows >> j & 1 and v - x > worst:
                    worst = v - x
                    bad = j
                bottom = x
            if bad < 0 and ts[j] - held_ms + slack >= high:
                return j
        return bad

    def _programme_counter(self, rs, ws, n, st, lam, forced):
        """As _programme_gauge for a counter's rates: the receiver shows each stretch between two
        sent totals at its average rate, so a stretch costs sum(w r^2) - (sum w r)^2 / sum w.
        The stretch after the last total sent before the batch starts with the carried readings."""
        scratch = self.scratch
        E, back, P0, P1, P2 = scratch[3], scratch[4], scratch[5], scratch[6], scratch[7]
        P0[0] = P1[0] = P2[0] = 0
        for k in range(n):
            w = ws[k]
            r = rs[k]
            P0[k + 1] = P0[k] + w
            P1[k + 1] = P1[k] + w * r
            P2[k + 1] = P2[k] + w * r * r
        tw = st[TW]
        t1 = st[T1]
        t2 = st[T2]
        E[0] = 0
        for k in range(1, n + 1):
            E[k] = -1
        best = -1
        best_p = 0
        for p in range(n + 1):
            e = E[p]
            if e < 0 or 0 <= best <= e:  # (no completion from here beats the best one found)
                continue
            c0 = P0[p]
            c1 = P1[p]
            c2 = P2[p]
            if p == 0:
                c0 -= tw
                c1 -= t1
                c2 -= t2
            k = p
            while k < n:
                w = P0[k + 1] - c0
                s1 = P1[k + 1] - c1
                s = e + lam + (P2[k + 1] - c2) - (s1 * s1 // w if w > 0 else 0)
                if 0 <= best <= s - lam:  # a stretch's error only grows: nothing further beats the best
                    break
                if E[k + 1] < 0 or s < E[k + 1]:
                    E[k + 1] = s
                    back[k + 1] = p
                if forced >> k & 1:
                    break
                k += 1
            else:
                w = P0[n] - c0
                s1 = P1[n] - c1
                s = e + (P2[n] - c2) - (s1 * s1 // w if w > 0 else 0)
                if best < 0 or s < best:
                    best = s
                    best_p = p
        chosen = 0
        p = best_p
        while p:
            chosen |= 1 << (p - 1)
            p = back[p]
        return chosen

    def _check_counter(self, rs, ws, ts, n, st, chosen, highs, lows, tol, held_ms, slack, high):
        """As _check_gauge, the receiver showing each stretch's average rate."""
        P0, P1 = self.scratch[5], self.scratch[6]
        start = 0  # the stretch of readings start..end-1, closed by a sent reading end-1
        c0, c1 = P0[0] - st[TW], P1[0] - st[T1]
        worst = tol
        bad = -1
        for j in range(n):
            if bad < 0 and ts[j] - held_ms + slack >= high and not chosen >> j & 1:
                return j
            if chosen >> j & 1 or j == n - 1:
                w = P0[j + 1] - c0
                avg = (P1[j + 1] - c1) // w if w > 0 else 0
                for i in range(start, j + 1):
                    r = rs[i]
                    if highs >> i & 1 and r - avg > worst:
                        worst = r - avg
                        bad = i
                    elif lows >> i & 1 and avg - r > worst:
                        worst = avg - r
                        bad = i
                start = j + 1
                c0, c1 = P0[j + 1], P1[j + 1]
                if chosen >> j & 1:
                    held_ms = ts[j]
        return bad
