"""Pure conversion of eBPF map readings to samples: no root, no kernel."""

from edge_agent.collectors.ebpf import cpu as ebpf_cpu
from edge_agent.collectors.ebpf import net as ebpf_net
from edge_agent.collectors.ebpf.core import parse_symbolic
from edge_agent.collectors.seriescache import SeriesCache
from edge_wire import COUNTER, HISTOGRAM


def _by_key(samples):
    return dict((s.key, v) for s, v in samples)


CPU_READING = {
    "cpus": [(0, 2_000_000_000, 8_000_000_000, 150), (1, 1_005_000_000, 9_000_000_000, 50)],
    "runq": ([0, 3, 5] + [0] * 22 + [1], 12345),
    "softirq": [("timer", 2_500_000), ("net_rx", 999)],
    "top": [],
}


def test_scheduler_busy_time_has_its_own_name_and_procfs_units():
    samples = ebpf_cpu.to_samples(CPU_READING, SeriesCache("ebpf"))
    got = _by_key(samples)
    assert got["system.cpu.scheduler.busy_time{cpu=cpu0}"] == 200  # ticks of 10 ms, scale 0.01
    assert got["system.cpu.scheduler.busy_time{cpu=cpu1}"] == 100
    assert not any("cpu=total" in k for k in got)  # per CPU: the total is left to queries, never mixed in
    assert not any(s.name == "system.cpu.time" for s, _ in samples)  # /proc/stat's states only, from procfs
    assert got["system.cpu.context_switches{cpu=cpu0}"] == 150
    series = [s for s, _ in samples if s.name == "system.cpu.scheduler.busy_time"][0]
    assert (series.kind, series.unit, series.scale, series.source) == (COUNTER, "s", 0.01, "ebpf")
    assert got["system.cpu.softirq.time{vector=timer}"] == 2500  # microseconds, scale 1e-6


def test_runqueue_histogram_shape():
    samples = ebpf_cpu.to_samples(CPU_READING, SeriesCache("ebpf"))
    series, value = [(s, v) for s, v in samples if s.name == "system.cpu.runqueue.latency"][0]
    assert series.kind == HISTOGRAM and series.unit == "s" and series.scale == 1e-6
    count, total, buckets = value
    assert (count, total) == (9, 12345)
    assert len(buckets) == len(series.bounds) + 1 == ebpf_cpu.RUNQ_SLOTS
    assert series.bounds[0] == 1e-6 and series.bounds[10] == 1024e-6
    assert buckets[-1] == 1  # the open-ended last slot is the +Inf bucket


def test_cpu_per_cpu_off_and_seed():
    base = {"cpu0": 1000}
    got = _by_key(ebpf_cpu.to_samples(CPU_READING, SeriesCache("ebpf"), per_cpu=False, base=base))
    assert "system.cpu.scheduler.busy_time{cpu=cpu0}" not in got
    assert got["system.cpu.scheduler.busy_time"] == 1200 + 100  # the machine total alone, no `cpu`
    assert got["system.cpu.context_switches"] == 200


def test_start_times_say_what_counts_since_boot():
    """Map counters start with the program (the cache's start); busy time seeded from /proc/stat and
    network counters seeded from the kernel's count since boot."""
    from edge_agent.model import BOOT

    cache = SeriesCache("ebpf", start_ms=1_700_000_000_000)
    seeded = ebpf_cpu.to_samples(CPU_READING, cache, base={"cpu0": 5})
    starts = dict((s.key, s.start) for s, _ in seeded)
    assert starts["system.cpu.scheduler.busy_time{cpu=cpu0}"] == BOOT
    assert starts["system.cpu.context_switches{cpu=cpu0}"] == 1_700_000_000_000
    assert starts["system.cpu.softirq.time{vector=timer}"] == 1_700_000_000_000
    unseeded = ebpf_cpu.to_samples(CPU_READING, SeriesCache("ebpf", start_ms=1_700_000_000_000))
    assert dict((s.key, s.start) for s, _ in unseeded)["system.cpu.scheduler.busy_time{cpu=cpu0}"] == 1_700_000_000_000
    reading = {"devices": [("eth0", 1000, 10, 5000, 20)], "tcp": None, "tcp_states": [], "drops": [("NO_SOCKET", 3)]}
    for since_boot, want in ((True, BOOT), (False, 1_700_000_000_000)):
        net = ebpf_net.to_samples(reading, SeriesCache("ebpf", start_ms=1_700_000_000_000), since_boot=since_boot)
        starts = dict((s.key, s.start) for s, _ in net)
        assert starts["system.network.io{device=eth0,direction=receive}"] == want
        assert starts["system.network.kernel.dropped{reason=NO_SOCKET}"] == 1_700_000_000_000


def test_seed_from_stat_continues_proc_busy_ticks():
    stat = {"cpu": {"cpu0": [100, 0, 50, 1000, 10, 0, 5, 0], "cpu1": [0] * 8}}
    base = ebpf_cpu.seed_from_stat(stat, {"cpus": [(0, 20_000_000, 30_000_000, 0)]})
    assert base == {"cpu0": 155 - 2}  # user+system+softirq, less what eBPF counted already


class _Program:
    def __init__(self, readings):
        self.readings = readings

    def read(self):
        return self.readings.pop(0)

    def close(self):
        pass


class _Companion:
    """The procfs cpu collector's place: its samples pass through unchanged."""

    name, source = "cpu", "procfs"

    def __init__(self):
        from edge_agent.collectors.procfs.cpu import TIME
        from edge_agent.model import Series

        self.series = Series.of(TIME, {"cpu": "total", "state": "user"})
        self.closed = False

    def collect(self):
        return [(self.series, 7)]

    def close(self):
        self.closed = True


def test_cpu_collector_keeps_procfs_states_and_a_monotonic_floor():
    r0 = {"cpus": [(0, 0, 0, 0)]}
    r1 = {"cpus": [(0, 1_000_000_000, 1_000_000_000, 5)]}
    r2 = {"cpus": [(0, 990_000_000, 3_000_000_000, 6)]}  # a torn read: busy went back
    companion = _Companion()
    coll = ebpf_cpu.EbpfCpuCollector(_Program([r0, r1, r2]), companion, proc_root="/nonexistent")
    got = _by_key(coll.collect())
    assert got["system.cpu.time{cpu=total,state=user}"] == 7  # the companion's, with its source
    assert [s.source for s, _ in coll.collect() if s.name == "system.cpu.time"] == ["procfs"]
    got = _by_key(coll.collect())
    assert got["system.cpu.scheduler.busy_time{cpu=cpu0}"] == 100  # held, not 99
    assert not any("state=busy" in k or "state=idle" in k for k in got)
    coll.close()
    assert companion.closed


NET_READING = {
    "devices": [("eth0", 1000, 10, 5000, 20), ("vethX", 1, 1, 1, 1)],
    "tcp": {"retransmits": 3, "opened_active": 4, "opened_passive": 5, "closed": 6, "retransmit_failures": 1},
    "tcp_states": [("established", 9), ("close", 6)],
    "drops": [("no_socket", 7), ("qdisc_drop", 2)],
}


def test_net_device_counters_match_procfs_names():
    samples = ebpf_net.to_samples(NET_READING, SeriesCache("ebpf"), {"eth0": (14, 0)}, {"eth0", "lo"})
    got = _by_key(samples)
    assert got["system.network.io{device=eth0,direction=receive}"] == 1000 + 14 * 10
    assert got["system.network.io{device=eth0,direction=transmit}"] == 5000
    assert got["system.network.packets{device=eth0,direction=transmit}"] == 20
    assert got["system.network.packets{device=lo,direction=receive}"] == 0  # present, no traffic yet
    assert not any("vethX" in k for k in got)  # not in this namespace
    assert got["system.network.tcp.retransmits"] == 3
    assert got["system.network.tcp.retransmits.failed"] == 1
    assert got["system.network.tcp.connections.opened{type=passive}"] == 5
    assert got["system.network.tcp.connections.closed"] == 6
    assert got["system.network.tcp.transitions{state=established}"] == 9
    assert got["system.network.kernel.dropped{reason=no_socket}"] == 7


def test_net_seed_is_added():
    base = {("system.network.io", "eth0", "transmit"): 10**12}
    got = _by_key(ebpf_net.to_samples(NET_READING, SeriesCache("ebpf"), None, None, base))
    assert got["system.network.io{device=eth0,direction=transmit}"] == 10**12 + 5000
    assert got["system.network.io{device=vethX,direction=receive}"] == 1


def test_loopback_counts_no_link_header_either_way():
    """lo's own counters take the length after eth_type_trans (no 14-byte header), while
    net_dev_xmit's length has it: the adjustment takes it off transmit and adds nothing on receive."""
    assert ebpf_net.LINK_ADJUST[772] == (0, -14) and ebpf_net.LINK_ADJUST[1] == (14, 0)
    reading = {"devices": [("lo", 22800, 100, 24200, 100)]}
    got = _by_key(ebpf_net.to_samples(reading, SeriesCache("ebpf"), {"lo": ebpf_net.LINK_ADJUST[772]}, {"lo"}))
    assert got["system.network.io{device=lo,direction=receive}"] == 22800
    assert got["system.network.io{device=lo,direction=transmit}"] == 22800


def test_link_adjust_reads_the_link_type(tmp_path):
    for name, arphrd in (("eth0", 1), ("lo", 772), ("wg0", 65534)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "type").write_text("%d\n" % arphrd)
    assert ebpf_net.link_adjust("eth0", str(tmp_path)) == (14, 0)
    assert ebpf_net.link_adjust("lo", str(tmp_path)) == (0, -14)
    assert ebpf_net.link_adjust("wg0", str(tmp_path)) == (0, 0)  # no link-layer header
    assert ebpf_net.link_adjust("gone", str(tmp_path)) == (0, 0)


def test_parse_symbolic_from_a_format_file():
    fmt = ('print fmt: "vec=%u [action=%s]", REC->vec, __print_symbolic(REC->vec, { 0, "HI" }, '
           '{ 1, "TIMER" }, { 3, "NET_RX" })')
    assert parse_symbolic(fmt, "vec") == {0: "HI", 1: "TIMER", 3: "NET_RX"}
    assert parse_symbolic(fmt, "reason") == {}
