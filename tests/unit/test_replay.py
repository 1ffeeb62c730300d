"""edge-agent replay: trace parsing, counts, error figures and baselines matched to the kept count."""

import gzip
import itertools
import json

import pytest

from edge_agent.cli.replay import main as replay_main
from edge_agent.sampling import baselines
from edge_agent.sampling.replay import evaluate, integer_scale, parse_time, read_trace, reconstruct, score


def write_csv(path, rows):
    path.write_text("timestamp,value\n" + "".join("%s,%s\n" % r for r in rows))
    return str(path)


def test_parse_time_formats():
    assert parse_time("1970-01-01 00:00:00") == 0
    assert parse_time("2014-02-14 14:27:00") == 1392388020
    assert parse_time("2014-02-14T14:27:00.5") == 1392388020.5
    assert parse_time("1392388020") == 1392388020.0


def test_read_trace_sorts_drops_duplicates_and_counts_gaps(tmp_path):
    path = write_csv(tmp_path / "t.csv", [("2014-01-01 00:10:00", 3), ("2014-01-01 00:00:00", 1),
                                          ("2014-01-01 00:05:00", 2), ("2014-01-01 00:05:00", 9),
                                          ("2014-01-01 00:30:00", 4), ("2014-01-01 00:35:00", "nan")])
    times, values, info = read_trace(path)
    assert values == [1.0, 2.0, 3.0, 4.0]
    assert info["duplicates"] == 1 and info["gaps"] == 1 and info["step_s"] == 300 and info["bad_rows"] == 1


def test_fixed_policy_keeps_everything_with_zero_error(tmp_path):
    path = write_csv(tmp_path / "t.csv", [(i * 10, i % 7) for i in range(100)])
    r = evaluate(path, "fixed", baseline_names=())
    assert r["samples_in"] == 100 and r["samples_kept"] == 100 and r["kept_share"] == 1.0
    assert r["err_mean"] == 0 and r["peaks_missed"] == 0 and r["stale_max_s"] == 0


def test_adaptive_on_a_step_trace_sends_the_step_and_the_heartbeats(tmp_path):
    # 200 flat points then 200 at a new level, 10 s step: heartbeat 300 s (30 reads)
    rows = [(i * 10, 10 if i < 200 else 50) for i in range(400)]
    path = write_csv(tmp_path / "t.csv", rows)
    r = evaluate(path, "adaptive", baseline_names=())
    assert r["err_mean"] == 0 and r["stale_max_s"] == 0  # the step is sent when it happens
    assert 10 <= r["samples_kept"] <= 17  # the first, the step, a heartbeat every 30 reads
    assert r["batch"] == 10


def test_gzip_traces_and_integer_scaling(tmp_path):
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("timestamp,value\n" + "".join("%d,%s\n" % (i, 1.25 + (i % 4) * 0.5) for i in range(50)))
    times, values, info = read_trace(str(path))
    assert len(values) == 50 and info["step_s"] == 1
    assert integer_scale(values) == 100 and integer_scale([1.0, 2.0]) == 1
    assert integer_scale([51.846000000000004, 1.0]) == 1000  # float noise past 4 digits is not a decimal


def test_replay_main_prints_one_json_object_with_matched_baselines(tmp_path, capsys):
    rows = []
    x = 50.0
    seed = 7
    for i in range(600):
        seed = (seed * 1103515245 + 12345) % 2147483648
        x += ((seed % 1000) - 500) / 200.0
        rows.append(("2014-01-01 %02d:%02d:00" % (i // 60 % 24, i % 60), round(x, 3)))
    rows = [("2014-01-%02d %s" % (1 + i // 1440, r[0][11:]), r[1]) for i, r in enumerate(rows)]
    path = write_csv(tmp_path / "walk.csv", rows)
    assert replay_main(["--policy", "adaptive", "--param", "adaptive_share=0.3", "--json", path]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["samples_in"] == 600 and out["params"]["adaptive_share"] == 0.3
    m = out["samples_kept"]
    assert 0 < m < 600
    base = out["baselines"]
    assert base["uniform"]["samples_kept"] == m
    assert abs(base["deadband"]["samples_kept"] - m) <= max(2, m // 50)
    assert abs(base["adam"]["samples_kept"] - m) <= max(3, m // 10)
    for name in ("err_mean", "err_p99", "peaks", "peaks_missed", "peaks95", "peaks95_missed", "peak_missed_max",
                 "stale_max_s"):
        assert name in out


def test_replay_main_rejects_bad_input(tmp_path, capsys):
    path = write_csv(tmp_path / "t.csv", [(i, i) for i in range(10)])
    assert replay_main(["--policy", "adaptive", "--param", "adaptive_share=-1", path]) == 2
    assert "adaptive_share" in capsys.readouterr().err
    assert replay_main(["--policy", "adaptive", "--param", "adaptive_k=3", path]) == 2
    assert "retired" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse: --policy is required
        replay_main([path])
    assert usage.value.code == 2 and "--policy" in capsys.readouterr().err
    assert replay_main(["--policy", "fixed", str(tmp_path / "missing.csv")]) == 2


def test_score_peaks_and_stale():
    values = [0.0] * 50 + [10.0, 12.0, 10.0] + [0.0] * 47
    times = [i * 60.0 for i in range(100)]
    kept = [0]  # nothing sent: the peak is missed, the change stays unreported 3 minutes
    r = score(times, values, reconstruct(100, kept, values), kept, change=0.1)
    assert r["peaks"] == 1 and r["peaks_missed"] == 1 and r["peaks_unsampled"] == 1
    assert r["stale_max_s"] == 180
    kept = [0, 51, 53]
    r = score(times, values, reconstruct(100, kept, values), kept, change=0.1)
    assert r["peaks_missed"] == 0 and r["stale_max_s"] == 60


def test_peaks_at_or_above_p99_count_a_saturated_top_and_p95_runs_count_apart():
    # a CPU trace pegged at 100 for 3 % of the time: "strictly above p99" would find no peak at all
    values = [20.0 + (i % 7) for i in range(970)] + [100.0] * 30
    times = [float(i) for i in range(1000)]
    kept = [0]
    r = score(times, values, reconstruct(1000, kept, values), kept)
    assert r["peaks"] == 1 and r["peaks_missed"] == 1
    kept = [0, 970, 999]
    r = score(times, values, reconstruct(1000, kept, values), kept)
    assert r["peaks"] == 1 and r["peaks_missed"] == 0
    # runs above p95 are events of their own: two bumps, the second one not shown
    values = [0.0] * 100
    values[20:23] = [5.0, 9.0, 5.0]
    values[60:63] = [5.0, 8.0, 5.0]
    kept = [21, 23]
    r = score(times[:100], values, reconstruct(100, kept, values), kept)
    assert r["peaks95"] == 2 and r["peaks95_missed"] == 1


def test_the_offline_optimum_is_the_least_error_for_its_count():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0]
    n = len(values)

    def err(kept):
        return sum(abs(a - b) for a, b in zip(values, reconstruct(n, kept, values), strict=True))

    for m in range(1, 8):
        count, kept = baselines.optimum_match(values, m)
        best = min(err(list(c)) for c in itertools.combinations(range(1, n), count))
        assert count >= m and abs(err(kept) - best) < 1e-9


def test_baselines_match_the_kept_count():
    values, x, seed = [], 0.0, 3
    for _ in range(1000):  # a random walk
        seed = (seed * 1103515245 + 12345) % 2147483648
        x += ((seed % 1000) - 500) / 100.0
        values.append(x)
    assert len(baselines.uniform_keep(1000, 137)) == 137
    th, kept = baselines.match_kept(lambda t: baselines.deadband_keep(values, t), 0.0, 50.0, 137)
    assert abs(len(kept) - 137) <= 3
    tuned, kept = baselines.adam_match(values, 137, t_max=30)
    assert abs(len(kept) - 137) <= 14 and tuned["t_max"] == 30
    # AdaM on a constant signal grows its period up to t_max
    flat = baselines.adam_keep([1.0] * 500, gamma=0.9, lam=1.0, t_max=30)
    assert max(b - a for a, b in zip(flat, flat[1:], strict=False)) == 30
