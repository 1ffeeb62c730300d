"""Sampling policies: read scheduling, load stepping with hysteresis, adaptive sending, validation."""

import pytest

from edge_agent.model import COUNTER, GAUGE, HISTOGRAM, Series
from edge_agent.sampling import SAMPLING_DEFAULTS, Sampler, validate_sampling

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
    errors = validate_sampling({"policy": "turbo", "load_high": 1.5, "cpu_base_ms": 5, "adaptive_k": "3",
                                "load_hold": True, "colour": 1})
    keys = sorted(e.split(":")[0] for e in errors)
    assert keys == ["adaptive_k", "colour", "cpu_base_ms", "load_high", "load_hold", "policy"]
    assert validate_sampling({"load_low": 0.9, "load_high": 0.8})[0].startswith("load_low:")
    assert validate_sampling({"network_base_ms": 600000, "network_max_ms": 60000})[0].startswith("network_max_ms:")
    assert validate_sampling({"cpu_min_ms": 400000})[0].startswith("cpu_min_ms:")


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
    assert s.next_due_ms() == 20 * S
    assert s.due(10 * S) == []
    assert "cpu" in s.due(20 * S)


def test_fixed_ignores_load():
    s = Sampler({"policy": "fixed"})
    for t in range(10):
        s.observe_load(t, 1.0, 9.0, 0.0, 0.5)
    assert s.read_interval_ms("cpu") == SAMPLING_DEFAULTS["interval_ms"]


# ---------------------------------------------------------------- adaptive policy

def adaptive(**kw):
    params = {"policy": "adaptive", "interval_ms": 10 * S, "max_interval_ms": 160 * S, "min_interval_ms": 20 * S}
    params.update(kw)
    return Sampler(params)


def test_adaptive_heartbeat_grows_while_quiet_and_bounds_gaps():
    s = adaptive()
    g = gauge()
    sent = run(s, g, [50.0] * 100)
    assert sent[:5] == [0, 2, 6, 14, 30]  # 20 s, 40 s, 80 s, 160 s
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert max(gaps) == 16  # never more than max_interval_ms
    assert s.effective_interval_ms(g) == 160 * S


def test_adaptive_catches_a_step_at_once_and_shortens_the_interval():
    s = adaptive()
    g = gauge()
    noise = [50.0 + (0.3 if i % 3 == 0 else -0.2 if i % 3 == 1 else 0.0) for i in range(260)]
    values = noise + [80.0 + v - 50.0 for v in noise]
    sent = run(s, g, values)
    assert 260 in sent  # the step is sent on the very read that sees it
    assert s.effective_interval_ms(g) >= 20 * S
    # past the warm-up (the first 200 reads, band capped at the range still being learnt), most
    # noise inside the band is not sent
    quiet = [i for i in sent if 210 < i < 260]
    assert len(quiet) <= 12


def test_adaptive_warm_up_follows_a_series_that_starts_in_a_transient():
    # the first steps are large (a burst decaying at start-up): a band from them alone would hold
    # the burst's top for several reads; capped at the running range during the warm-up it follows
    values = [10.0, 50.0, 61.0, 56.0, 41.0, 28.0, 22.0, 17.0, 15.0, 17.0, 15.0, 14.0, 11.0, 12.0, 9.0, 8.0]
    values += [8.0 + (0.5 if i % 2 else -0.5) for i in range(40)]
    s = adaptive(min_interval_ms=150 * S, max_interval_ms=300 * S)
    sent = run(s, gauge(), values)
    held, worst = values[0], 0.0
    for i, v in enumerate(values):
        held = v if i in sent else held
        worst = max(worst, abs(v - held))
    assert worst <= 20.0  # without the cap: 39 (61 held while the burst decays to 22)


def test_adaptive_drift_send_waits_for_a_turn_instead_of_the_noise_extreme():
    # a plateau toggling 19/21, then 9/11: the level drop stays inside a wide band, so the drift
    # trigger reports it; the value sent is the first reading after a turn (11), not the low
    # extreme (9) that pushed the drift sum over the line
    s = adaptive(adaptive_k=20.0, adaptive_peak_q=0, max_interval_ms=8000 * S)
    g = gauge()
    values = [20.0 + (1.0 if i % 2 else -1.0) for i in range(300)]
    values += [10.0 + (1.0 if i % 2 else -1.0) for i in range(60)]
    sent = [i for i in run(s, g, values) if i >= 300]
    assert sent and sent[0] < 330
    assert values[sent[0]] == 11.0


def test_adaptive_short_spike_is_sent():
    s = adaptive()
    g = gauge()
    values = [10.0 + (i % 2) * 0.5 for i in range(80)]
    values[50] = 60.0
    sent = run(s, g, values)
    assert 50 in sent and 51 in sent  # the peak and the return


def test_counter_values_stay_exact_and_the_decision_uses_the_rate():
    s = adaptive()
    c = Series("bytes", COUNTER, "By")
    total, values = 0, []
    for i in range(120):
        total += 1000 if i < 80 else 5000  # steady rate, then a rate step
        values.append(total)
    out = []
    for i, v in enumerate(values):
        out.extend(s.select(i * 10 * S, "network", [(c, v)]))
    sent_values = [v for _, v in out]
    assert all(v in values for v in sent_values)
    assert sent_values == sorted(sent_values)
    assert values[80] in sent_values  # the rate change is sent at once
    assert len(out) < 30
    # a reset (counter going backwards) is sent immediately
    assert s.select(121 * 10 * S, "network", [(c, 10)]) == [(c, 10)]


def test_histogram_sent_on_change_or_heartbeat():
    s = adaptive()
    h = Series("lat", HISTOGRAM, "s", bounds=[0.1, 1.0])
    same = (3, 10, (1, 2, 3))
    assert s.select(0, "cpu", [(h, same)])
    assert not s.select(10 * S, "cpu", [(h, same)])
    assert s.select(20 * S, "cpu", [(h, same)])  # heartbeat
    assert s.select(30 * S, "cpu", [(h, (4, 12, (1, 3, 4)))])  # changed


def test_load_plus_adaptive_stretches_reads_and_keeps_the_heartbeat_bound():
    s = Sampler({"policy": "load+adaptive", "interval_ms": 10 * S, "max_interval_ms": 80 * S, "load_hold": 1})
    g = gauge()
    s.observe_load(0, 0.99, None, None, None)
    assert s.read_interval_ms("cpu") == 20 * S
    t, sent_at = 0, []
    for _ in range(40):
        t = s.next_due_ms() if s.next_ms else 0
        if "cpu" in s.due(t) and s.select(t, "cpu", [(g, 1.0)]):
            sent_at.append(t)
    assert max(b - a for a, b in zip(sent_at, sent_at[1:], strict=False)) <= 80 * S


def test_adaptive_peak_guard_follows_a_slow_peak_to_its_top():
    # a wide band (noisy series) would skip a slow 3-unit rise; the running-p97 guard sends it
    s = adaptive(adaptive_k=20.0, adaptive_drift=0)
    g = gauge()
    values = [50.0 + (1.0 if i % 2 else -1.0) for i in range(300)]
    for j in range(12):
        values[200 + j] = 51.0 + 0.25 * (j + 1)  # up to 54: above every earlier value
    sent = run(s, g, values)
    top = max(values[i] for i in sent if 200 <= i < 212)
    assert top == 54.0  # each rise of more than peak_rise x range above the running p97 is sent
    s = adaptive(adaptive_k=20.0, adaptive_drift=0, adaptive_peak_q=0, min_interval_ms=160 * S)
    off = run(s, gauge("h"), values)
    assert max([values[i] for i in off if 200 <= i < 212] or [0]) < 54.0  # only a heartbeat: top missed
