"""LoadWatch reads CPU, run queue, memory and the agent's own CPU from a fixture /proc tree."""

from edge_agent.sampling.loadwatch import LoadWatch, parse_self_stat

STAT = """cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0
cpu0 1 0 1 1 0 0 0 0 0 0
cpu1 1 0 1 1 0 0 0 0 0 0
intr 12345 1 2 3
ctxt 999
btime 1700000000
processes 500
procs_running {running}
procs_blocked 0
"""
MEMINFO = "MemTotal:        1000000 kB\nMemFree:          100000 kB\nMemAvailable:     250000 kB\n"
SELF = "4242 (edge agent (py)) S 1 4242 4242 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 1 0 100 1000 100\n"


def write(root, user, system, idle, iowait, running, utime, stime):
    (root / "stat").write_text(STAT.format(user=user, system=system, idle=idle, iowait=iowait, running=running))
    (root / "meminfo").write_text(MEMINFO)
    (root / "self").mkdir(exist_ok=True)
    (root / "self" / "stat").write_text(SELF.format(utime=utime, stime=stime))


def test_parse_self_stat_handles_spaces_in_the_name():
    assert parse_self_stat(SELF.format(utime=7, stime=5)) == 12


def test_loadwatch_signals_from_deltas(tmp_path):
    write(tmp_path, 100, 100, 800, 0, 1, 10, 10)
    watch = LoadWatch(str(tmp_path))
    cpu, runq, mem, own = watch.read(now_ms=0)
    assert cpu is None and own is None  # no delta yet
    assert runq == 0.0  # the reader itself is not counted
    assert mem == 0.25
    write(tmp_path, 400, 200, 1000, 100, 5, 13, 11)  # +300 user +100 system +200 idle +100 iowait
    cpu, runq, mem, own = watch.read(now_ms=10000)
    assert abs(cpu - 400 / 700) < 1e-9
    assert runq == 2.0  # (5 - 1) running over 2 CPUs
    assert abs(own - 0.004) < 1e-9  # 4 ticks = 40 ms of CPU in 10 s
