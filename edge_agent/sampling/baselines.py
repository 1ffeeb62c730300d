"""Reference samplers for `edge-agent replay`, each a function of the full-rate values -> kept indices.

    uniform_keep(n, m)            m evenly spaced indices out of n (decimation with a fractional step)
    deadband_keep(values, th)     send-on-delta: send when |x - last sent| > th
    adam_keep(values, ...)        AdaM (Trihinas, Pallis, Dikaiakos, IEEE BigData 2015)
    match_kept(fn, lo, hi, m)     bisect one parameter so that fn(parameter) keeps about m samples

AdaM reads only at its sampling times. At each sample it takes the distance to the previous sample
d = |v - v_prev|, updates a PEWMA of d (mean and standard deviation), and computes its confidence
c = 1 - |sd_new - sd_old| / sd_old. If c >= 1 - gamma the period grows by
ceil(lambda * (1 + (c - gamma) / c)) steps (capped at t_max), otherwise it resets to t_min.
Larger gamma or lambda: fewer samples. The first sample is always kept.

CPython side (replay only); plain stdlib.
"""

import math


def uniform_keep(n, m):
    """Indices of m samples evenly spaced over n points, starting with the first."""
    if m >= n:
        return list(range(n))
    if m <= 0:
        return []
    return sorted(set(int(j * n / m) for j in range(m)))


def deadband_keep(values, threshold):
    """Send-on-delta: the first point, then every point further than `threshold` from the last one sent."""
    if not values:
        return []
    kept = [0]
    last = values[0]
    for i in range(1, len(values)):
        v = values[i]
        if v - last > threshold or last - v > threshold:
            kept.append(i)
            last = v
    return kept


def adam_keep(values, gamma=0.9, lam=1.0, alpha=0.4, beta=1.0, t_min=1, t_max=32):
    """AdaM's sampling times (indices, each step one base period) over `values`."""
    n = len(values)
    if not n:
        return []
    kept = [0]
    prev = values[0]
    i = 0
    period = t_min
    s1 = s2 = None
    count = 0
    while True:
        i += period
        if i >= n:
            break
        v = values[i]
        kept.append(i)
        d = abs(v - prev)
        prev = v
        count += 1
        if s1 is None:
            s1, s2 = d, d * d
            sd_old = 0.0
            period = t_min
            continue
        sd_old = math.sqrt(max(s2 - s1 * s1, 0.0))
        if sd_old > 0:
            z = (d - s1) / sd_old
            prob = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        else:
            prob = 0.0 if d != s1 else 1.0 / math.sqrt(2 * math.pi)
        a = alpha * (1 - beta * prob)
        s1 = a * s1 + (1 - a) * d
        s2 = a * s2 + (1 - a) * d * d
        sd_new = math.sqrt(max(s2 - s1 * s1, 0.0))
        diff = abs(sd_new - sd_old)
        conf = 1.0 - diff / (sd_old if diff else 1.0) if sd_old > 0 else (1.0 if diff == 0 else 0.0)
        if conf >= 1 - gamma and conf > 0:
            period = min(max(period + int(math.ceil(lam * (1 + (conf - gamma) / conf))), t_min), t_max)
        else:
            period = t_min
    return kept


def match_kept(keep_fn, lo, hi, m, rounds=50, decreasing=True):
    """(parameter, kept indices) whose kept count is closest to m, bisecting over [lo, hi].

    `keep_fn(parameter)` returns kept indices; their count must not increase with the parameter
    (`decreasing`) or not decrease (otherwise). Ties prefer the count at or below m.
    """
    best = None

    def consider(param, kept):
        nonlocal best
        score = (abs(len(kept) - m), len(kept) > m)
        if best is None or score < best[0]:
            best = (score, param, kept)

    for param in (lo, hi):
        consider(param, keep_fn(param))
    for _ in range(rounds):
        mid = (lo + hi) / 2.0
        kept = keep_fn(mid)
        consider(mid, kept)
        if len(kept) == m:
            break
        if (len(kept) > m) == decreasing:
            lo = mid
        else:
            hi = mid
    return best[1], best[2]


def adam_match(values, m, t_max=32, alpha=0.4, beta=1.0):
    """AdaM tuned to keep about m samples: lambda over a small grid, gamma by bisection."""
    best = None
    for lam in (0.5, 1.0, 2.0, 4.0, 8.0):
        gamma, kept = match_kept(lambda g, lam=lam: adam_keep(values, g, lam, alpha, beta, 1, t_max),
                                 0.0, 0.999, m, rounds=20)
        score = abs(len(kept) - m)
        if best is None or score < best[0]:
            best = (score, {"gamma": round(gamma, 4), "lambda": lam, "t_max": t_max}, kept)
        if score == 0:
            break
    return best[1], best[2]


def optimum_match(values, m, cache=None, rounds=30):
    """The best offline choice of about m kept readings for LOCF: (kept count, kept indices).

    For a price lam per kept reading, a dynamic programme over the whole trace finds the kept set
    that minimises sum |x - last kept x| + lam x count (the first point is known, as in replay's
    reconstruction): the Lagrangian relaxation of "the least error with m readings", exact at the
    counts it reaches. lam is bisected to the fewest kept readings at or above m, so the error is at
    most that of the best choice of exactly m: a floor that errs on the low side. O(n^2) per price,
    vectorised: needs numpy. `cache` (a dict) keeps the programmes run for other m on this trace.
    """
    import numpy as np

    cache = {} if cache is None else cache
    x = np.asarray(values, dtype=float)
    spread = float(x.max() - x.min()) or 1.0

    def at(lam):
        if lam not in cache:
            cache[lam] = _optimum_at(x, len(x), lam, np)
        return cache[lam]

    lo, hi = 1e-9 * spread, 1e3 * spread * len(x)  # lo keeps everything that differs, hi nothing
    best = None
    for _ in range(rounds):
        mid = (lo * hi) ** 0.5
        count, kept = at(mid)
        if count >= m:
            if best is None or count < best[0]:
                best = (count, kept)
            lo = mid
        else:
            hi = mid
        if best is not None and best[0] <= m + max(1, m // 200):
            break
    if best is None:
        best = at(lo)
    return best


def _optimum_at(x, n, lam, np):
    best = np.full(n + 1, np.inf)  # best[j]: least cost with the last kept reading at j (n: the end)
    back = np.zeros(n + 1, dtype=np.int64)
    best[0] = 0.0
    for i in range(n):
        base = best[i]
        held = np.abs(x[i + 1:] - x[i])  # the error of showing x[i] at i+1 .. n-1
        cand = base + np.concatenate(([0.0], np.cumsum(held)))  # keep j = i+1+k after holding k points; last: the end
        cand[:-1] += lam
        seg = slice(i + 1, n + 1)
        better = cand < best[seg]
        best[seg] = np.where(better, cand, best[seg])
        back[seg] = np.where(better, i, back[seg])
    kept = []
    j = int(back[n])
    while j > 0:
        kept.append(j)
        j = int(back[j])
    kept.reverse()
    return len(kept), kept
