"""The /proc collectors: pure parsers on literals, collectors replaying fixture snapshots
(tests/fixtures/proc/<scenario>/<t0,t1,...>) and the real /proc (the same code under MicroPython:
tests/device/test_procfs_mpy.py)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.collectors.procfs import cpu as procfs_cpu
from edge_agent.collectors.procfs import net as procfs_net
from edge_agent.collectors.procfs.cpu import STATES, CpuCollector
from edge_agent.collectors.procfs.load import LoadCollector, hundredths, parse_loadavg
from edge_agent.collectors.procfs.memory import FIELDS, MemoryCollector, available, parse_meminfo
from edge_agent.collectors.procfs.net import NetworkCollector
from edge_agent.collectors.procfs.registry import parse_net_dev, parse_stat, procfs_collectors
from edge_agent.collectors.procfs.system import SystemCollector, parse_uptime, read_boot_id, read_boot_time
from edge_wire import COUNTER, GAUGE
from tests.support import ROOT

REPO = Path(ROOT)
FIXTURES = REPO / "tests" / "fixtures" / "proc"
NAMES = ("cpu", "memory", "load", "network", "system")

# docs/architecture.md, "Metric names": name -> (kind, unit, scale, attribute keys)
METRICS = {
    "system.cpu.time": (COUNTER, "s", 0.01, {"cpu", "state"}),
    "system.cpu.utilization": (GAUGE, "1", 0.0001, {"cpu", "state"}),
    "system.memory.usage": (GAUGE, "By", 1024, {"state"}),
    "system.memory.limit": (GAUGE, "By", 1024, set()),
    "system.linux.memory.available": (GAUGE, "By", 1024, set()),
    "system.cpu.load_average.1m": (GAUGE, "{thread}", 0.01, set()),
    "system.cpu.load_average.5m": (GAUGE, "{thread}", 0.01, set()),
    "system.cpu.load_average.15m": (GAUGE, "{thread}", 0.01, set()),
    "system.network.io": (COUNTER, "By", 1, {"device", "direction"}),
    "system.network.packets": (COUNTER, "{packets}", 1, {"device", "direction"}),
    "system.network.errors": (COUNTER, "{errors}", 1, {"device", "direction"}),
    "system.network.dropped": (COUNTER, "{packets}", 1, {"device", "direction"}),
    "system.uptime": (GAUGE, "s", 0.01, set()),
}


def snap(scenario, t):
    return str(FIXTURES / scenario / t)


def replay(collector, scenario, snapshots):
    """One {series key: value} per snapshot, read in order by the same collector."""
    reads = []
    for t in snapshots:
        collector.root = snap(scenario, t)
        out = collector.collect()
        values = {series.key: value for series, value in out}
        assert len(values) == len(out), "a series appears twice in one read"
        reads.append(values)
    return reads


def cpu(name, state):
    return "system.cpu.time{cpu=%s,state=%s}" % (name, state)


def util(name, state):
    return "system.cpu.utilization{cpu=%s,state=%s}" % (name, state)


def total(state, metric="time"):
    return "system.cpu.%s{state=%s}" % (metric, state)


def net(metric, device, direction):
    return "system.network.%s{device=%s,direction=%s}" % (metric, device, direction)


def check_against_table(out):
    for series, value in out:
        kind, unit, scale, attrs = METRICS[series.name]
        if series.name.startswith("system.cpu.") and "cpu" not in series.attrs:
            attrs = attrs - {"cpu"}  # per_cpu off: the machine total
        assert (series.kind, series.unit, series.scale, set(series.attrs)) == (kind, unit, scale, attrs), series
        assert series.source == "procfs"
        assert isinstance(value, int) and value >= 0, (series, value)


# ---- pure parsers -------------------------------------------------------------------------------


def test_parse_stat_modern_kernel():
    stat = parse_stat((FIXTURES / "modern/t0/stat").read_text())
    assert stat["cpu"] == {
        "total": [10000, 50, 4000, 80000, 900, 0, 150, 20],
        "cpu0": [5000, 25, 2000, 40000, 450, 0, 75, 10],
        "cpu1": [5000, 25, 2000, 40000, 450, 0, 75, 10],
    }
    assert (stat["btime"], stat["procs_running"], stat["procs_blocked"], stat["ctxt"]) == (1700000000, 2, 1, 297614)


def test_parse_stat_drops_guest_columns_already_counted_in_user():
    assert parse_stat("cpu  1 2 3 4 5 6 7 8 9 10\n")["cpu"]["total"] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_parse_stat_old_kernels_pad_missing_fields_with_zero():
    linux24 = parse_stat((FIXTURES / "kernel24/t0/stat").read_text())
    assert linux24["cpu"] == {"total": [1279, 0, 1055, 240117, 0, 0, 0, 0], "cpu0": [1279, 0, 1055, 240117, 0, 0, 0, 0]}
    assert (linux24["btime"], linux24["ctxt"], linux24["procs_running"]) == (1069842938, 30236, 0)
    linux2610 = parse_stat((FIXTURES / "kernel2610/t0/stat").read_text())
    assert linux2610["cpu"]["total"] == [1000, 10, 300, 9000, 50, 5, 7, 0]
    assert linux2610["cpu"]["cpu1"] == [400, 5, 100, 4600, 20, 0, 0, 0]


def test_parse_meminfo():
    # only the fields the collector and loadwatch use: a dict of all ~55 each tick starved a 64 KB heap
    assert parse_meminfo("MemTotal:  100 kB\nMemFree:    40 kB\nHugePages_Total:       3\nSwapCached: 7 kB\n"
                         "Cached: 9 kB\nActive(file):  5 kB") == {
        "MemTotal": 100,
        "MemFree": 40,
        "Cached": 9,
        "Active(file)": 5,
    }
    modern = parse_meminfo((FIXTURES / "modern/t0/meminfo").read_text())
    assert sorted(modern) == sorted(FIELDS)
    linux24 = parse_meminfo((FIXTURES / "kernel24/t0/meminfo").read_text())
    assert (linux24["MemTotal"], linux24["MemFree"], linux24["Cached"]) == (255624, 6472, 146100)
    assert "total" not in linux24 and "MemAvailable" not in linux24


def test_available_falls_back_without_memavailable():
    # 3.10: MemFree + Active(file) + Inactive(file) + SReclaimable
    linux310 = parse_meminfo((FIXTURES / "kernel310/t0/meminfo").read_text())
    assert available(linux310) == 500000 + 2000000 + 1800000 + 300000
    # 2.6.10, no file LRU lines: MemFree + Buffers + Cached
    assert available(parse_meminfo((FIXTURES / "kernel2610/t0/meminfo").read_text())) == 20932 + 41644 + 301856
    # never above MemTotal
    assert available({"MemTotal": 100, "MemFree": 60, "Buffers": 30, "Cached": 30}) == 100
    assert available({"MemTotal": 100, "MemAvailable": 42, "MemFree": 1}) == 42


def test_parse_loadavg_and_uptime_without_floats():
    assert parse_loadavg("0.21 0.16 0.06 2/90 5246\n") == (21, 16, 6, 2, 90)
    assert parse_loadavg("1.50 10.05 100.00 3/91 5250") == (150, 1005, 10000, 3, 91)
    assert parse_uptime("12345.67 24000.00\n") == 1234567
    assert parse_uptime("0.05 0.00") == 5
    assert [hundredths(t) for t in ("3", "0.5", ".07", "2.999")] == [300, 50, 7, 299]
    with pytest.raises(ValueError):
        parse_loadavg("")


def test_boot_id_and_boot_time_from_the_root():
    assert read_boot_id(snap("modern", "t0")) == "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert read_boot_time(snap("kernel24", "t0")) == 1069842938
    with pytest.raises(OSError):
        read_boot_id(snap("cpu_hotplug", "t0"))


def test_parse_net_dev_names_long_dotted_and_run_into_numbers():
    dev = parse_net_dev((FIXTURES / "modern/t0/net/dev").read_text())
    assert list(dev) == ["lo", "eth0", "eth1", "verylongifname0", "eth0.100", "br-1a2b3c4d5e6f", "veth1a2b@if3"]
    assert dev["verylongifname0"] == {
        "rx_bytes": 12345,
        "rx_packets": 67,
        "rx_errs": 0,
        "rx_drop": 0,
        "tx_bytes": 890,
        "tx_packets": 12,
        "tx_errs": 0,
        "tx_drop": 0,
    }
    assert dev["eth1"]["rx_bytes"] == 1234567890 and dev["eth1"]["tx_bytes"] == 987654321
    assert [dev["eth0"][field] for field in ("rx_errs", "rx_drop", "tx_errs", "tx_drop")] == [1, 2, 3, 4]
    assert dev["br-1a2b3c4d5e6f"]["rx_drop"] == 1
    assert parse_net_dev("x:1 2 3\n") == {}  # too few columns: skipped, not misread


# ---- collectors on fixture snapshots ------------------------------------------------------------


def test_cpu_collector_times_and_utilization():
    collector = CpuCollector()
    first_out = None
    reads = []
    for t in ("t0", "t1"):
        collector.root = snap("modern", t)
        out = collector.collect()
        check_against_table(out)
        first_out = first_out or out
        reads.append({s.key: v for s, v in out})
    t0, t1 = reads
    assert not any(key.startswith("system.cpu.utilization") for key in t0), "no utilization on the first read"
    assert len(t0) == 2 * 8, "one series per CPU and state; no cpu=total beside them"
    assert t0[cpu("cpu0", "user")] == 5000 and t0[cpu("cpu1", "steal")] == 10 and t0[cpu("cpu0", "wait")] == 450
    assert t1[cpu("cpu0", "user")] == 5030 and t1[cpu("cpu1", "idle")] == 40005
    # each state's share of the interval's ticks: cpu0 +30 user +10 system +55 idle +5 wait of +100
    assert [t1[util("cpu0", s)] for s in STATES] == [3000, 0, 1000, 5500, 500, 0, 0, 0]
    assert [t1[util("cpu1", s)] for s in STATES] == [8000, 0, 1500, 500, 0, 0, 0, 0]
    # a steady tick hands out the same Series objects
    again = collector.collect()
    assert all(a is b for (a, _), (b, _) in zip(first_out, again, strict=False))


def test_cpu_collector_per_cpu_off_emits_only_the_aggregate():
    out = CpuCollector(snap("modern", "t0"), per_cpu=False).collect()
    assert [s.attrs for s, _ in out] == [{"state": state} for state in STATES]
    assert [v for _, v in out] == [10000, 50, 4000, 80000, 900, 0, 150, 20]
    assert STATES == ["user", "nice", "system", "idle", "wait", "interrupt", "softirq", "steal"]  # hostmetrics'


def test_cpu_utilization_of_the_total_without_per_cpu():
    t0, t1 = replay(CpuCollector(per_cpu=False), "modern", ("t0", "t1"))
    assert t1[total("user", "utilization")] == 5500 and t1[total("idle", "utilization")] == 3000
    assert not any("cpu=" in key for key in t1)


def test_cpu_collector_old_kernel_emits_all_eight_states():
    t0, t1 = replay(CpuCollector(), "kernel24", ("t0", "t1"))
    assert t0[cpu("cpu0", "steal")] == 0 and t0[cpu("cpu0", "wait")] == 0
    assert len([k for k in t0 if k.startswith("system.cpu.time")]) == 8
    assert (t1[util("cpu0", "user")], t1[util("cpu0", "system")], t1[util("cpu0", "idle")]) == (2000, 1000, 7000)


def test_cpu_going_offline_and_back_never_goes_backwards():
    reads = replay(CpuCollector(), "cpu_hotplug", ("t0", "t1", "t2"))
    t0, t1, t2 = reads
    assert cpu("cpu2", "user") in t0
    assert not any("cpu=cpu2" in key for key in t1), "an offline CPU is not emitted"
    # cpu2 comes back counting on from its last reading, with no utilization over an interval it missed
    assert [t2[cpu("cpu2", s)] for s in ("user", "system", "idle", "wait")] == [150, 110, 1040, 12]
    assert util("cpu2", "user") not in t2 and util("cpu0", "user") in t2
    # iowait stepping back (10 -> 7) is held, not taken as a reset, and counts on from the high mark
    assert (t0[cpu("cpu1", "wait")], t1[cpu("cpu1", "wait")], t2[cpu("cpu1", "wait")]) == (10, 10, 12)
    totals = replay(CpuCollector(per_cpu=False), "cpu_hotplug", ("t0", "t1", "t2"))
    assert [t[total("wait")] for t in totals] == [40, 40, 44]
    # cpu1 over t0..t1: user +20, idle +83 of all +103 ticks (wait held)
    assert t1[util("cpu1", "user")] == (20 * 10000 + 51) // 103 and t1[util("cpu1", "idle")] == (83 * 10000 + 51) // 103
    for before, after in zip(reads, reads[1:], strict=False):
        for key, value in after.items():
            if key in before and key.startswith("system.cpu.time"):
                assert value >= before[key], key


def test_memory_collector_states_partition_the_total():
    out = MemoryCollector(snap("modern", "t0")).collect()
    check_against_table(out)
    values = {s.key: v for s, v in out}
    assert values == {
        "system.memory.usage{state=used}": 4000000 - 1000000 - 100000 - 1500000,
        "system.memory.usage{state=free}": 1000000,
        "system.memory.usage{state=buffered}": 100000,
        "system.memory.usage{state=cached}": 1200000 + 300000,  # Cached + SReclaimable
        "system.memory.usage{state=slab_reclaimable}": 300000,
        "system.memory.usage{state=slab_unreclaimable}": 100000,
        "system.memory.limit": 4000000,
        "system.linux.memory.available": 2500000,
    }


def test_memory_collector_without_memavailable():
    values = replay(MemoryCollector(), "kernel24", ("t0",))[0]
    assert values["system.linux.memory.available"] == 6472 + 13928 + 146100
    assert values["system.memory.usage{state=used}"] == 255624 - 6472 - 13928 - 146100
    values = replay(MemoryCollector(), "kernel310", ("t0",))[0]
    assert values["system.linux.memory.available"] == 4600000


def test_load_and_system_collectors():
    t0, t1 = replay(LoadCollector(), "modern", ("t0", "t1"))
    assert t1 == {
        "system.cpu.load_average.1m": 150,
        "system.cpu.load_average.5m": 1005,
        "system.cpu.load_average.15m": 10000,
    }
    system = SystemCollector(snap("modern", "t1"))
    out = system.collect()
    check_against_table(out + LoadCollector(snap("modern", "t0")).collect())
    assert [(s.key, v) for s, v in out] == [("system.uptime", 1234667)]
    assert system.boot_id() == "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0" and system.boot_time() == 1700000000


def test_network_collector_series_and_filters():
    collector = NetworkCollector(snap("modern", "t0"))
    out = collector.collect()
    check_against_table(out)
    values = {s.key: v for s, v in out}
    assert len(values) == 7 * 8
    assert values[net("io", "eth1", "receive")] == 1234567890
    assert values[net("packets", "verylongifname0", "transmit")] == 12
    assert values[net("dropped", "eth0", "transmit")] == 4 and values[net("errors", "eth0", "transmit")] == 3
    t1 = replay(collector, "modern", ("t1",))[0]
    assert t1[net("io", "lo", "receive")] == 4193

    def devices(**options):
        return {s.attrs["device"] for s, _ in NetworkCollector(snap("modern", "t0"), **options).collect()}

    assert devices(exclude=["lo", "veth*"]) == {"eth0", "eth1", "verylongifname0", "eth0.100", "br-1a2b3c4d5e6f"}
    assert devices(include=["eth*"], exclude=["eth0.100"]) == {"eth0", "eth1"}
    assert devices(include=["veth1a2b@if3"]) == {"veth1a2b@if3"}
    with pytest.raises(ValueError):
        NetworkCollector(counter_bits=16)


def test_network_counters_wrap_at_2_32():
    t0, t1 = replay(NetworkCollector(counter_bits=32), "net_wrap32", ("t0", "t1"))
    assert t1[net("io", "eth0", "receive")] == 4294967000 + (2**32 - 4294967000) + 704
    assert t1[net("packets", "eth0", "receive")] == 4294967295 + 10
    # 1000 -> 500 is no wrap: the interface was reset, and 500 is growth since then
    assert t1[net("io", "eth0", "transmit")] == 1500
    # eth1 passed 2**32 so it is 64-bit: its drop is a reset, not a 32-bit wrap
    assert t1[net("io", "eth1", "receive")] == 5000000000 + 1000


def test_network_counter_width_is_what_makes_a_drop_a_wrap():
    t1 = replay(NetworkCollector(counter_bits=64), "net_wrap32", ("t0", "t1"))[1]
    assert t1[net("io", "eth0", "receive")] == 4294967000 + 704  # a reset on a 64-bit counter
    assert procfs_net.DEFAULT_BITS == (64 if sys.maxsize > 2**32 else 32)


def test_network_width_guess_of_32_bits(monkeypatch):
    monkeypatch.setattr(procfs_net, "DEFAULT_BITS", 32)
    t1 = replay(NetworkCollector(), "net_wrap32", ("t0", "t1"))[1]
    assert t1[net("io", "eth0", "receive")] == 2**32 + 704
    assert t1[net("io", "eth1", "receive")] == 5000001000


def test_network_counters_wrap_at_2_64():
    t0, t1 = replay(NetworkCollector(), "net_wrap64", ("t0", "t1"))
    assert t0[net("io", "eth0", "receive")] == 18446744073709551000
    assert t1[net("io", "eth0", "receive")] == 18446744073709551000 + 616 + 1616
    assert t1[net("packets", "eth0", "transmit")] == 2**64  # 2**64 - 1 -> 0 is one packet
    assert t1[net("io", "eth0", "transmit")] == 6000


def test_network_interface_disappearing_and_reappearing_keeps_counting_up():
    collector = NetworkCollector()
    reads = replay(collector, "net_churn", ("t0", "t1", "t2"))
    t0, t1, t2 = reads
    assert not any("device=usb0" in key for key in t1)
    # usb0 came back with counters from zero: its totals carry on from t0
    assert t2[net("io", "usb0", "receive")] == 5000 + 9000
    assert t2[net("packets", "usb0", "transmit")] == 70 + 4
    assert t2[net("errors", "usb0", "receive")] == 1 and t2[net("dropped", "usb0", "transmit")] == 4
    assert t2[net("io", "verylongifname0", "receive")] == 32345
    for before, after in zip(reads, reads[1:], strict=False):
        for key, value in after.items():
            assert value >= before.get(key, 0), key
    # a second reappearance must not count the same raw values twice
    assert replay(collector, "net_churn", ("t2",))[0][net("io", "usb0", "receive")] == 14000


def test_missing_file_raises_oserror():
    for name, collector in procfs_collectors(snap("cpu_hotplug", "t0")).items():
        if name != "cpu":
            with pytest.raises(OSError):
                collector.collect()


def test_registry():
    collectors = procfs_collectors(snap("modern", "t0"), {"cpu": {"per_cpu": False}, "network": {"exclude": ["lo"]}})
    assert sorted(collectors) == sorted(NAMES)
    for name, collector in collectors.items():
        assert (collector.name, collector.source, collector.root) == (name, "procfs", snap("modern", "t0"))
    assert all("cpu" not in s.attrs for s, _ in collectors["cpu"].collect())
    assert "lo" not in {s.attrs["device"] for s, _ in collectors["network"].collect()}
    assert procfs_collectors()["cpu"].root == "/proc"
    with pytest.raises(ValueError, match="per_cpus"):
        procfs_collectors(options={"cpu": {"per_cpus": True}})
    with pytest.raises(ValueError, match="disk"):
        procfs_collectors(options={"disk": {}})


def test_registry_builds_and_imports_only_what_is_enabled():
    code = (
        "import sys\n"
        "from edge_agent.collectors.procfs.registry import enabled_procfs\n"
        "chosen, effective = enabled_procfs({'cpu': {'per_cpu': False}, 'load': {'enabled': False},"
        " 'network': {'backend': 'procfs', 'top_processes': 3}}, %r)\n"
        "assert [c.name for c in chosen] == ['cpu', 'network'], chosen\n"
        "assert effective == {'cpu': 'procfs', 'network': 'procfs'}, effective\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('edge_agent.collectors.procfs.') and m != 'edge_agent.collectors.procfs.registry')\n"
        "assert loaded == ['edge_agent.collectors.procfs.cpu', 'edge_agent.collectors.procfs.net'], loaded\n"
    ) % snap("modern", "t0")
    subprocess.run([sys.executable, "-c", code], cwd=str(REPO), check=True)
    assert sorted(procfs_collectors(options={"network": {}}, names=["memory"])) == ["memory"]
    with pytest.raises(ValueError, match="per_cpus"):  # options are checked for every collector
        procfs_collectors(options={"cpu": {"per_cpus": True}}, names=["memory"])


def test_running_collectors_need_neither_the_registry_nor_counters():
    """A device releases the registry once collectors are built, and never loads counters."""
    code = (
        "import sys\n"
        "from edge_agent.collectors.procfs import cpu as procfs_cpu, memory as procfs_memory, net as procfs_net\n"
        "for c in (procfs_cpu.CpuCollector(%r), procfs_memory.MemoryCollector(%r), procfs_net.NetworkCollector(%r)):\n"
        "    c.collect(); c.collect(); c.close()\n"
        "assert 'edge_agent.collectors.procfs.registry' not in sys.modules\n"
        "assert 'edge_agent.collectors.counters' not in sys.modules\n"
    ) % ((snap("modern", "t0"),) * 3)
    subprocess.run([sys.executable, "-c", code], cwd=str(REPO), check=True)
    # the collectors do not import the registry (no cycle): its whole-file parsers are there only
    assert not hasattr(procfs_cpu, "parse_stat") and not hasattr(procfs_net, "parse_net_dev")


# ---- the real /proc -----------------------------------------------------------------------------


def test_collectors_on_the_real_proc():
    collectors = procfs_collectors("/proc")
    first = {name: collectors[name].collect() for name in NAMES}
    time.sleep(0.3)
    second = {name: collectors[name].collect() for name in NAMES}
    for name in NAMES:
        check_against_table(first[name] + second[name])
        assert {s.name for s, _ in second[name]} <= set(METRICS)

    cpus = {s.attrs["cpu"] for s, _ in second["cpu"]}
    assert len(cpus) == os.sysconf("SC_NPROCESSORS_ONLN") and "total" not in cpus
    t1 = {s.key: v for s, v in second["cpu"]}
    t0 = {s.key: v for s, v in first["cpu"]}
    assert all(t1[key] >= t0[key] for key in t0)
    utilization = [v for s, v in second["cpu"] if s.name == "system.cpu.utilization"]
    assert utilization and all(0 <= v <= 10000 for v in utilization)

    memory = {s.key: v for s, v in second["memory"]}
    limit = memory["system.memory.limit"]
    assert abs(limit * 1024 - os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) <= limit * 1024 // 100
    partition = ("used", "free", "buffered", "cached")  # the slab states break cached and used down further
    assert sum(memory["system.memory.usage{state=%s}" % state] for state in partition) == limit
    assert 0 < memory["system.linux.memory.available"] <= limit

    load = {s.key: v for s, v in second["load"]}
    assert abs(load["system.cpu.load_average.1m"] - os.getloadavg()[0] * 100) <= 100

    devices = {s.attrs["device"] for s, _ in second["network"]}
    assert devices == {name for _, name in socket.if_nameindex()}

    uptime = second["system"][0][1]
    assert abs(uptime / 100 - time.clock_gettime(time.CLOCK_BOOTTIME)) < 2
    assert len(collectors["system"].boot_id()) == 36
    assert abs(collectors["system"].boot_time() + uptime / 100 - time.time()) < 3


def test_meminfo_keys_are_the_fields():
    from edge_agent.collectors.procfs import memory as procfs_memory

    assert procfs_memory.KEYS == [name + ":" for name in FIELDS]
    assert procfs_memory.LINES == [key.encode() for key in procfs_memory.KEYS]


LINE = st.text(alphabet="abcpu :0123456789", max_size=40).map(str.encode)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, max_size=30), st.booleans(), st.sampled_from([None, [b"a"], [b"cpu", b"b"]]),
       st.sampled_from([8, 16, 33]))
def test_lines_reads_through_its_buffer_as_split_would(tmp_path_factory, items, newline_at_end, prefixes, size):
    """edge_agent.collectors.lines (the /proc reader of the device): the lines a split gives, the ones
    starting with a prefix only, those longer than the buffer skipped, whatever the buffer boundaries."""
    from edge_agent import collectors

    text = b"\n".join(items) + (b"\n" if newline_at_end and items else b"")
    path = tmp_path_factory.mktemp("lines") / "file"
    path.write_bytes(text)
    saved = collectors.SIZE, list(collectors.BUFFER)
    collectors.SIZE = size
    collectors.BUFFER[:] = []
    try:
        got = collectors.lines(str(path), prefixes)
    finally:
        collectors.SIZE = saved[0]
        collectors.BUFFER[:] = saved[1]
    pieces = text.split(b"\n")
    if not text or text.endswith(b"\n"):
        pieces = pieces[:-1]
    want = [line.decode() for line in pieces
            if len(line) < size and (prefixes is None or any(line.startswith(p) for p in prefixes))]
    assert got == want


class FailingExtend(list):
    """A list whose next `extend` fails, as on a full MicroPython heap."""

    armed = True

    def extend(self, items):
        if self.armed:
            self.armed = False
            raise MemoryError
        list.extend(self, items)


@pytest.mark.parametrize("make, flat", [
    (lambda root: CpuCollector(root), "ticks"),
    (lambda root: NetworkCollector(root), "raw"),
    (lambda root: NetworkCollector(root), "total"),
])
def test_a_memory_error_while_adding_a_cpu_or_interface_leaves_the_collector_usable(make, flat):
    # seen in a 64 KB soak: the name was registered, its slots not, and the next read raised IndexError
    root = str(FIXTURES / "modern" / "t0")
    expected = [(s.key, v) for s, v in make(root).collect()]
    collector = make(root)
    setattr(collector, flat, FailingExtend())
    with pytest.raises(MemoryError):
        collector.collect()
    assert [(s.key, v) for s, v in collector.collect()] == expected
