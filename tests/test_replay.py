"""edge-agent replay: trace parsing, counts, error figures and baselines matched to the kept count."""

import json

from edge_agent import baselines
from edge_agent.replay import evaluate, parse_time, read_trace, reconstruct, replay_main, score


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


def test_adaptive_on_a_step_trace_counts(tmp_path):
    # 200 flat points then 200 at a new level, 10 s step: interval 10 s, min 150 s, max 300 s
    rows = [(i * 10, 10 if i < 200 else 50) for i in range(400)]
    path = write_csv(tmp_path / "t.csv", rows)
    r = evaluate(path, "adaptive", baseline_names=())
    # first read, heartbeats at +15 then every 30 reads, the step at once, then 15 and 30 again
    assert r["samples_kept"] == 1 + 1 + 6 + 1 + 1 + 6
    assert r["err_mean"] == 0 and r["stale_max_s"] == 0


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
    assert replay_main(["--policy", "adaptive", "--param", "adaptive_k=3", path]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["samples_in"] == 600 and out["params"]["adaptive_k"] == 3
    m = out["samples_kept"]
    assert 0 < m < 600
    base = out["baselines"]
    assert base["uniform"]["samples_kept"] == m
    assert abs(base["deadband"]["samples_kept"] - m) <= max(2, m // 50)
    assert abs(base["adam"]["samples_kept"] - m) <= max(3, m // 10)
    for name in ("err_mean", "err_p99", "peaks", "peaks_missed", "peak_missed_max", "stale_max_s"):
        assert name in out


def test_replay_main_rejects_bad_input(tmp_path, capsys):
    path = write_csv(tmp_path / "t.csv", [(i, i) for i in range(10)])
    assert replay_main(["--policy", "adaptive", "--param", "adaptive_k=-1", path]) == 2
    assert "adaptive_k" in capsys.readouterr().err
    assert replay_main([path]) == 2
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
