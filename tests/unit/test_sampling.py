"""Sampling policies: read scheduling, load stepping with hysteresis, the adaptive batch look-ahead
(through a real BatchBuilder), validation."""

import math
import random

import pytest

from edge_agent.model import Series, SeriesTable
from edge_agent.sampling import sampler as sampling
from edge_agent.sampling.sampler import SAMPLING_DEFAULTS, Sampler, validate_sampling
from edge_wire import COUNTER, GAUGE, HISTOGRAM
from edge_wire.batch import BatchBuilder
from edge_wire.decode import decode, parse_batch

S = 1000


def gauge(name="g"):
    return Series(name, GAUGE, "1")


def run(sampler, series, values, step_ms=10 * S, collector="cpu"):
    """Feed one value per read; returns the indices that were sent."""
    sent = []
    for i, v in enumerate(values):
        out = sampler.select(i * step_ms, collector, [(series, v)])
        if out:
            sent.append(i)
    return sent


# ---------------------------------------------------------------- validation

def test_defaults_are_valid_and_unknown_or_out_of_bounds_rejected():
    assert validate_sampling(dict(SAMPLING_DEFAULTS)) == []
    assert validate_sampling({}) == []
    errors = validate_sampling({"policy": "turbo", "load_high": 1.5, "cpu_base_ms": 5, "adaptive_share": "3",
                                "load_hold": True, "colour": 1})
    keys = sorted(e.split(":")[0] for e in errors)
    assert keys == ["adaptive_share", "colour", "cpu_base_ms", "load_high", "load_hold", "policy"]
    assert validate_sampling({"load_low": 0.9, "load_high": 0.8})[0].startswith("load_low:")
    assert validate_sampling({"network_base_ms": 600000, "network_max_ms": 60000})[0].startswith("network_max_ms:")
    assert validate_sampling({"adaptive_share": 0.0})[0].startswith("adaptive_share: must be between")


def test_knobs_of_the_earlier_adaptive_policy_are_refused_by_name():
    errors = validate_sampling({"adaptive_k": 3.0, "min_interval_ms": 1000, "cpu_min_ms": 2000})
    assert len(errors) == 3
    assert all("retired with the earlier adaptive policy" in e for e in errors), errors


def test_update_applies_only_valid_changes():
    s = Sampler({"policy": "fixed"})
    assert s.update({"interval_ms": 50}) != []
    assert s.snapshot()["interval_ms"] == 10000
    assert s.update({"interval_ms": 5000, "policy": "adaptive"}) == []
    snap = s.snapshot()
    assert snap["policy"] == "adaptive" and snap["effective"]["read_ms"]["cpu"] == 5000
    with pytest.raises(ValueError):
        Sampler({"policy": "nope"})


# ---------------------------------------------------------------- reading

def test_fixed_reads_each_collector_at_its_interval_and_sends_everything():
    s = Sampler({"policy": "fixed", "interval_ms": 10 * S, "network_base_ms": 30 * S})
    assert s.due(0) == ["cpu", "memory", "load", "network", "system"]
    assert s.next_due_ms() == 10 * S
    assert s.due(5 * S) == []
    assert "network" not in s.due(10 * S)
    assert "network" in s.due(30 * S)
    samples = [(gauge(), 1), (gauge("h"), 2)]
    assert s.select(30 * S, "cpu", samples) == samples
    assert s.effective_interval_ms(samples[0][0]) == 10 * S


def test_interval_change_takes_effect_within_one_tick():
    s = Sampler({"policy": "fixed", "interval_ms": 60 * S})
    s.due(0)
    assert s.next_due_ms() == 60 * S
    s.update({"interval_ms": 5 * S})
    assert s.next_due_ms() == 5 * S
    assert "cpu" in s.due(5 * S)


def test_late_loop_skips_instead_of_catching_up():
    s = Sampler({"policy": "fixed", "interval_ms": 10 * S})
    s.due(0)
    assert "cpu" in s.due(95 * S)
    assert s.next_due_ms() == 105 * S


# ---------------------------------------------------------------- load policy

def loaded(**kw):
    params = {"policy": "load", "interval_ms": 10 * S, "max_interval_ms": 80 * S, "load_hold": 2}
    params.update(kw)
    return Sampler(params)


def test_load_steps_up_after_hold_and_stops_at_max():
    s = loaded()
    busy = (0.95, 0.5, 0.5, 0.001)
    s.observe_load(0, *busy)
    assert s.read_interval_ms("cpu") == 10 * S  # one observation is not enough
    s.observe_load(1, *busy)
    assert s.read_interval_ms("cpu") == 20 * S
    for t in range(2, 20):
        s.observe_load(t, *busy)
    assert s.read_interval_ms("cpu") == 80 * S  # capped at the maximum
    assert s.snapshot()["effective"]["load_level"] == 3


def test_load_hysteresis_between_watermarks_and_return_to_base():
    s = loaded()
    for t in range(4):
        s.observe_load(t, 0.9, None, None, None)
    assert s.read_interval_ms("cpu") == 40 * S
    for t in range(4, 20):
        s.observe_load(t, 0.7, None, None, None)  # between low (0.6) and high (0.85): hold
    assert s.read_interval_ms("cpu") == 40 * S
    s.observe_load(20, 0.5, None, None, None)
    assert s.read_interval_ms("cpu") == 40 * S
    s.observe_load(21, 0.5, None, None, None)
    assert s.read_interval_ms("cpu") == 10 * S


def test_load_pressure_from_run_queue_memory_and_own_cpu_budget():
    s = loaded()
    s.observe_load(0, 0.1, 3.0, None, None)  # 3 runnable per CPU >= load_runq_full 2.0
    s.observe_load(1, 0.1, 3.0, None, None)
    assert s.read_interval_ms("cpu") == 20 * S
    s = loaded()
    s.observe_load(0, 0.1, 0.1, 0.05, None)  # 95% of memory in use
    s.observe_load(1, 0.1, 0.1, 0.05, None)
    assert s.read_interval_ms("cpu") == 20 * S
    s = loaded(cpu_budget=0.01)
    s.observe_load(0, 0.1, 0.1, 0.9, 0.03)  # the agent itself above its budget on a quiet device
    s.observe_load(1, 0.1, 0.1, 0.9, 0.03)
    assert s.read_interval_ms("cpu") == 20 * S
    s.observe_load(2, 0.1, 0.1, 0.9, 0.008)  # under budget but not under half of it: hold
    s.observe_load(3, 0.1, 0.1, 0.9, 0.008)
    assert s.read_interval_ms("cpu") == 20 * S
    s.observe_load(4, 0.1, 0.1, 0.9, 0.002)
    s.observe_load(5, 0.1, 0.1, 0.9, 0.002)
    assert s.read_interval_ms("cpu") == 10 * S


def test_load_stretches_the_reading_schedule():
    s = loaded()
    assert "cpu" in s.due(0)
    s.observe_load(0, 0.99, None, None, None)
    s.observe_load(0, 0.99, None, None, None)
    assert s.next_ms["cpu"] == 20 * S
    assert s.next_due_ms() == 10 * S  # backed off, the load is still watched at the base interval
    assert s.due(10 * S) == [] and s.load_due(10 * S)
    assert "cpu" in s.due(20 * S)


def test_fixed_ignores_load():
    s = Sampler({"policy": "fixed"})
    for t in range(10):
        s.observe_load(t, 1.0, 9.0, 0.0, 0.5)
    assert s.read_interval_ms("cpu") == SAMPLING_DEFAULTS["interval_ms"]


# ---------------------------------------------------------------- adaptive policy (batch look-ahead)


def adaptive(**kw):
    params = {"policy": "adaptive", "interval_ms": S, "max_interval_ms": 300 * S}
    params.update(kw)
    return Sampler(params)


def replay(sampler, columns, step_ms=S, batch=10, kinds=None):
    """Feed per-series readings (lists of equal length) tick by tick into a real BatchBuilder, thinned
    and encoded at each flush as the agent does; returns the sent (index, value) per series, decoded
    from the wire, and the batches."""
    table = SeriesTable()
    series = []
    for k in range(len(columns)):
        s = Series("s%d" % k, (kinds or [GAUGE] * len(columns))[k], "1")
        table.intern(s)
        series.append(s)
    builder = BatchBuilder()
    sent = [[] for _ in columns]
    at = []

    def flush():
        sampler.thin(builder, table.series)
        payload = builder.encode("d", 1, 1, 0)
        batch = parse_batch(decode(payload))
        for sid, indexes, values in batch.columns:
            for i, v in zip(indexes, values, strict=True):
                sent[sid].append((at[i], v))
        builder.clear()
        del at[:]

    for i in range(len(columns[0])):
        now = i * step_ms
        if "cpu" in sampler.due(now):
            pairs = sampler.select(now, "cpu", [(series[k], columns[k][i]) for k in range(len(columns))])
            builder.add_tick(now, pairs)
            at.append(i)
        if len(at) >= batch:
            flush()
    if at:
        flush()
    return sent


def shown(values, sent):
    """What a receiver shows at each reading: the last sent value carried forward."""
    out, held, k = [], None, 0
    for i in range(len(values)):
        while k < len(sent) and sent[k][0] <= i:
            held = sent[k][1]
            k += 1
        out.append(held)
    return out


def walk(n, seed, step=40, start=5000):
    rng = random.Random(seed)
    x, out = start, []
    for _ in range(n):
        x += rng.randint(-step, step)
        out.append(x)
    return out


def cost(xs, ws, held, lam, chosen):
    v, c = held, 0
    for j in range(len(xs)):
        if chosen >> j & 1:
            v = xs[j]
            c += lam
        else:
            c += ws[j] * abs(xs[j] - v)
    return c


def test_the_programme_finds_the_least_cost_choice():
    s = adaptive()
    s._scratch(12)
    rng = random.Random(1)
    for _ in range(1500):
        n = rng.randint(1, 8)
        xs = [rng.randint(0, 30) for _ in range(n)]
        ws = [rng.choice([8, 16, 16, 32]) for _ in range(n)]
        held, lam = rng.randint(0, 30), rng.randint(0, 300)
        forced = rng.randint(0, (1 << n) - 1) if rng.random() < 0.3 else 0
        chosen = s._programme_gauge(xs, ws, n, held, lam, forced)
        best = min(cost(xs, ws, held, lam, m) for m in range(1 << n) if m & forced == forced)
        assert chosen & forced == forced
        assert cost(xs, ws, held, lam, chosen) == best


def test_the_counter_programme_finds_the_least_squared_error_of_stretch_averages():
    s = adaptive()
    s._scratch(12)
    st = [None] * sampling.SLOTS
    rng = random.Random(2)
    for _ in range(500):
        n = rng.randint(1, 7)
        rs = [rng.randint(0, 50) for _ in range(n)]
        ws = [16] * n
        st[sampling.TW], st[sampling.T1], st[sampling.T2] = 16 * 2, 16 * 2 * 20, 16 * 2 * 400  # two carried readings at 20
        lam = rng.randint(0, 3000)

        def sse(chosen, rs=rs, n=n, lam=lam):  # stretches closed by each sent reading; carried readings open the first
            c, w0, s1, s2 = 0, 32, 640, 12800
            for j in range(n):
                w0, s1, s2 = w0 + 16, s1 + 16 * rs[j], s2 + 16 * rs[j] * rs[j]
                if chosen >> j & 1 or j == n - 1:
                    c += s2 - s1 * s1 // w0 + (lam if chosen >> j & 1 else 0)
                    w0 = s1 = s2 = 0
            return c

        chosen = s._programme_counter(rs, ws, n, st, lam, 0)
        assert sse(chosen) == min(sse(m) for m in range(1 << n))


def test_a_series_sends_its_share_of_readings_in_the_long_run():
    s = adaptive(adaptive_share=0.2)
    values = walk(6000, seed=3)
    sent = replay(s, [values])[0]
    share = len(sent) / len(values)
    assert 0.17 <= share <= 0.21, share
    s = adaptive(adaptive_share=0.05)
    sent = replay(s, [walk(6000, seed=3)])[0]
    assert 0.035 <= len(sent) / 6000 <= 0.06


def shapes(n, seed):
    """Four kinds of series: a random walk, noise with level shifts, a slow wave with noise, and
    near-zero background with rare large bursts (a network counter's rate)."""
    rng = random.Random(seed)
    noisy = [5000 + rng.randint(-300, 300) + (2000 if (i // 200) % 5 == 0 else 0) for i in range(n)]
    wave = [int(5000 + 2000 * math.sin(i / 50.0)) + rng.randint(-100, 100) for i in range(n)]
    bursty = [rng.randint(0, 30) + (rng.randint(50000, 90000) if rng.random() < 0.03 else 0) for _ in range(n)]
    return {"walk": walk(n, seed), "noisy": noisy, "wave": wave, "bursty": bursty}


@pytest.mark.parametrize("share", [0.1, 0.2])
def test_the_controller_reaches_the_share_on_short_and_long_series(share):
    # 1,500 readings (25 minutes at 1 s, the 1 s dev set's length) and 20,000: the kept share is the
    # configured one within 20 % (short; measured 0.90-1.17 x) and 5 % (long). Bursty series may keep
    # up to 1.5 x on short runs (measured 1.18-1.43 x): their guard forces more than the share while
    # they are young. The earlier controller (first price e^-3 x the range, overspending repaid over
    # 2,000 reads) kept up to 1.33 x (1.67 x bursty) at share 0.1.
    for n, tol in ((1500, 0.2), (20000, 0.05)):
        for name, values in shapes(n, 11).items():
            kept = len(replay(adaptive(adaptive_share=share), [values])[0]) / n
            if name == "bursty" and n == 1500:
                assert share <= kept <= share * 1.5, (name, n, kept)
            else:
                assert abs(kept / share - 1) <= tol, (name, n, kept)


def test_the_guard_keeps_every_peak_above_the_p95_of_a_stationary_series():
    # peaks scored as the evaluation does (edge_agent.sampling.replay.score): runs strictly above the
    # trace's p95 and at or above its p99, missed when the highest value shown during the run is more
    # than 0.1 of the range below the run's top
    from edge_agent.sampling import replay as replay_module

    for seed in (12, 13, 14):
        rng = random.Random(seed)
        values = []
        for _ in range(3000):
            x = 5000 + rng.randint(-400, 400)
            if rng.random() < 0.02:
                x += rng.randint(500, 2500)  # short spikes of every height, some within the noise's top
            values.append(x)
        sent = replay(adaptive(), [values])[0]
        kept = [i for i, _ in sent]
        recon = replay_module.reconstruct(len(values), kept, values)
        got = replay_module.score([float(i) for i in range(len(values))], values, recon, kept)
        assert got["peaks95"] > 50 and got["peaks"] > 10, got
        assert got["peaks95_missed"] == 0 and got["peaks_missed"] == 0, (seed, got)
        off = replay(adaptive(adaptive_guard=1.0), [values])[0]
        kept_off = [i for i, _ in off]
        missed_off = replay_module.score([float(i) for i in range(len(values))], values,
                                         replay_module.reconstruct(len(values), kept_off, values), kept_off)
        assert missed_off["peaks95_missed"] > 0  # the programme alone, at its price, does miss some


def test_sent_values_are_exact_readings_and_the_first_is_sent():
    s = adaptive()
    values = walk(500, seed=4)
    counter = [sum(abs(v) for v in values[: i + 1]) for i in range(500)]  # cumulative, non-decreasing
    sent = replay(s, [values, counter], kinds=[GAUGE, COUNTER])
    assert sent[0][0] == (0, values[0]) and sent[1][0] == (0, counter[0])
    for (i, v) in sent[0]:
        assert values[i] == v
    for (i, v) in sent[1]:
        assert counter[i] == v  # a counter's sent reading carries its exact running total
    assert len(sent[0]) < 250 and len(sent[1]) < 250


def test_the_look_ahead_sends_a_step_at_the_step_not_a_reading_late():
    s = adaptive()
    values = [1000 + (i % 3) for i in range(300)] + [5000 + (i % 3) for i in range(300)]
    sent = replay(s, [values])[0]
    assert 300 in [i for i, _ in sent]  # the first reading at the new level
    view = shown(values, sent)
    assert all(abs(view[i] - values[i]) <= 2 for i in range(300, 600))


def test_peak_guard_sends_a_short_spike_above_the_tail_and_its_top():
    s = adaptive()
    rng = random.Random(5)
    values = [5000 + rng.randint(-50, 50) for _ in range(2000)]
    for k in range(10):
        at = 300 + 170 * k
        values[at - 1], values[at], values[at + 1] = 5400, 6000 + 20 * k, 5500  # a 3-reading peak
    sent = replay(s, [values])[0]
    view = shown(values, sent)
    for k in range(10):
        at = 300 + 170 * k
        assert max(view[at - 1: at + 2]) >= values[at] - 0.08 * 1000, k  # its top, within the tolerance


def test_peak_guard_sends_a_lone_high_reading_that_the_programme_alone_would_smooth_over():
    rng = random.Random(6)
    values = [5500 if i % 500 == 250 else 5000 + rng.randint(-300, 300) for i in range(3000)]
    tops = [i for i in range(3000) if i % 500 == 250]
    on = shown(values, replay(adaptive(), [values])[0])
    off = shown(values, replay(adaptive(adaptive_guard=1.0), [values])[0])
    assert all(on[i] == values[i] for i in tops)
    assert sum(1 for i in tops if off[i] < values[i] - 200) >= 3  # without the guard most were smoothed over


def test_a_new_low_below_the_running_p1_is_sent():
    rng = random.Random(7)
    values = [5000 + rng.randint(-30, 30) for _ in range(1500)]
    values[1200] = 3000
    sent = replay(adaptive(), [values])[0]
    assert 1200 in [i for i, _ in sent]


def test_heartbeat_bounds_the_gap_and_a_flat_series_sends_little():
    s = adaptive(max_interval_ms=30 * S)
    values = [700] * 1000
    sent = [i for i, _ in replay(s, [values])[0]]
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert max(gaps) <= 30 and len(sent) <= 1000 / 25
    assert s.effective_interval_ms(Series("s0", GAUGE, "1")) == 30 * S


def test_counter_reset_sends_the_reset_and_the_total_before_it():
    s = adaptive()
    total, counter = 0, []
    for i in range(400):
        total = total + 100 if i != 255 else 7  # the counter restarted between reads 254 and 255
        counter.append(total)
    sent = [i for i, _ in replay(s, [counter], kinds=[COUNTER])[0]]
    assert 254 in sent and 255 in sent


def test_counter_rate_change_is_sent_at_its_boundary():
    s = adaptive()
    total, counter = 0, []
    for i in range(600):
        total += 100 if i < 333 else 900
        counter.append(total)
    sent = [i for i, _ in replay(s, [counter], kinds=[COUNTER])[0]]
    assert 332 in sent  # the last total at the old rate: the averages on both sides are exact


def test_histogram_sends_the_last_reading_of_a_batch_when_it_changed():
    s = adaptive(max_interval_ms=40 * S)
    h = Series("lat", HISTOGRAM, "s", bounds=[0.1, 1.0])
    table = SeriesTable()
    table.intern(h)
    builder = BatchBuilder()
    out = []
    for b, level in enumerate([5, 9, 9, 9, 9, 9, 3]):
        for t in range(10):
            i = b * 10 + t
            value = (level, level * 2, (level, 0, 0)) if t == 9 or b != 1 else (7, 14, (7, 0, 0))
            builder.add_tick(i * S, s.select(i * S, "cpu", [(h, value)]))
        s.thin(builder, table.series)
        out.append(builder.masks[0])
        builder.clear()
    last = 1 << 9
    # changed (5, then 9 at the end of a batch whose other readings were 7), unchanged three times,
    # the heartbeat (at 59 s, 40 s after the last one sent at 19 s), changed (3)
    assert out == [last, last, 0, 0, 0, last, last]


def test_thinning_is_the_identity_for_fixed_and_load():
    for policy in ("fixed", "load"):
        s = Sampler({"policy": policy, "interval_ms": S})
        values = walk(100, seed=8)
        sent = replay(s, [values])[0]
        assert [v for _, v in sent] == values


def test_remote_tuning_of_the_share_applies_at_the_next_batch():
    s = adaptive(adaptive_share=0.5)
    values = walk(3000, seed=9)
    first = replay(s, [values[:1500]])[0]
    assert s.update({"adaptive_share": 0.05}) == []
    later = replay(s, [values[1500:]])[0]
    assert len(later) < len(first) * 0.5


def test_load_is_watched_at_the_base_interval_while_reads_are_stretched():
    s = Sampler({"policy": "load+adaptive", "interval_ms": S, "max_interval_ms": 64 * S, "load_hold": 2})
    t = 0
    reads = []
    busy_until = 40 * S
    while t < 60 * S:
        due = s.due(t)
        if due or s.load_due(t):
            s.observe_load(t, 0.99 if t < busy_until else 0.05, None, None, None)
        if "cpu" in due:
            reads.append(t)
        t = s.next_due_ms()
    assert max(b - a for a, b in zip(reads, reads[1:], strict=False)) >= 8 * S  # backed off
    after = [r for r in reads if r >= busy_until]
    assert after and after[0] - busy_until <= 3 * S  # back at the base interval within the hold (2 x 1 s)


def test_effective_interval_is_the_heartbeat_for_adaptive_and_the_batch_longest_read_for_load():
    s = Sampler({"policy": "load", "interval_ms": S, "max_interval_ms": 16 * S, "load_hold": 1})
    g = Series("g", GAUGE, "1")
    s.observe_load(0, 0.99, None, None, None)
    s.observe_load(1, 0.99, None, None, None)
    assert s.read_interval_ms("cpu") == 4 * S
    s.observe_load(2, 0.05, None, None, None)
    assert s.read_interval_ms("cpu") == S
    s.thin(BatchBuilder(), [])
    assert s.effective_interval_ms(g) == 4 * S  # the batch being sent was read at up to 4 s apart
    s.thin(BatchBuilder(), [])
    assert s.effective_interval_ms(g) == S
    assert adaptive(max_interval_ms=120 * S).effective_interval_ms(g) == 120 * S


def test_persisted_changes_with_a_retired_knob_start_without_it():
    from edge_agent.compose import apply_overrides
    from edge_agent.config import build

    cfg = build({})
    overrides = {"sampling": {"policy": "adaptive", "adaptive_k": 3.1, "adaptive_share": 0.1}}
    logged = []
    apply_overrides(cfg, overrides, lambda event, **f: logged.append((event, f)))
    assert cfg["sampling"] == {"policy": "adaptive", "adaptive_share": 0.1}
    assert overrides["sampling"] == cfg["sampling"]  # the next accepted change rewrites the file without it
    assert logged == [("override_dropped", {"section": "sampling",
                                            "problem": "adaptive_k: retired with the earlier adaptive policy "
                                                       "(docs/sampling.md)"})]
    Sampler(cfg["sampling"])  # starts
