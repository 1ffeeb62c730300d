"""OTLP conversion, checked field by field on real opentelemetry-proto messages.

Every conversion here also goes through the gateway's direct protobuf writer (gateway/convert/otlpwire.py),
which must produce the very same bytes as the message objects of `to_request`."""

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from edge_agent.collectors.seriescache import SeriesCache
from edge_agent.model import Series, SeriesTable
from edge_wire import COUNTER, GAUGE
from gateway.convert.conventions import CATALOG
from gateway.convert.otlp import to_request
from gateway.convert.otlpwire import encode
from gateway.decode.resolve import Dictionaries
from tests.support import ROOT
from tests.support.gateway import BOOT_ID, BOOT_TIME_MS, batch, birth, make_table, steady

T0 = BOOT_TIME_MS + 60_000


def convert(*payloads, table=None, device="dev-1"):
    dicts = Dictionaries()
    dicts.add_birth(device, birth(table or make_table()[0], device))
    resolved = [dicts.resolve(device, p) for p in payloads]
    request = to_request(resolved)
    # what goes over the wire parses back identically, and the direct writer writes the same bytes
    again = ExportMetricsServiceRequest()
    again.ParseFromString(request.SerializeToString())
    assert again == request
    assert encode(resolved).SerializeToString() == request.SerializeToString()
    return again


def attrs(kvs):
    out = {}
    for kv in kvs:
        field = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, field)
    return out


def metric(request, name):
    found = [m for m in request.resource_metrics[0].scope_metrics[0].metrics if m.name == name]
    assert len(found) == 1, name
    return found[0]


def test_resource_and_scope():
    table, series = make_table()
    request = convert(batch(steady(series)))
    assert len(request.resource_metrics) == 1
    rm = request.resource_metrics[0]
    assert attrs(rm.resource.attributes) == {
        "host.name": "dev-1", "service.instance.id": "dev-1", "service.name": "edge-agent", "device.id": "dev-1",
        "service.version": "edge-agent 0.1.0", "os.type": "linux", "process.runtime.description": "linux-x86_64",
        "host.boot.id": BOOT_ID,
    }
    assert len(rm.scope_metrics) == 1
    assert rm.scope_metrics[0].scope.name == "edge-telemetry"
    assert [m.name for m in rm.scope_metrics[0].metrics] == [
        "system.network.io", "system.cpu.time", "system.cpu.utilization", "system.memory.usage", "test.latency",
        "edge.agent.lost.batches", "edge.agent.lost.samples"]


def test_counter_is_cumulative_monotonic_sum_from_boot():
    table, series = make_table()
    m = metric(convert(batch(steady(series))), "system.network.io")
    assert m.unit == "By"
    assert m.WhichOneof("data") == "sum"
    assert m.sum.is_monotonic is True
    assert m.sum.aggregation_temporality == pb.AGGREGATION_TEMPORALITY_CUMULATIVE
    points = m.sum.data_points
    assert [p.start_time_unix_nano for p in points] == [BOOT_TIME_MS * 1_000_000] * 3
    assert [p.time_unix_nano for p in points] == [(T0 + 1000 * i) * 1_000_000 for i in range(3)]
    assert [p.WhichOneof("value") for p in points] == ["as_int"] * 3
    assert [p.as_int for p in points] == [1000, 1500, 2000]
    assert attrs(points[0].attributes) == {"device": "eth0", "direction": "receive"}


def test_fractional_scale_gives_exact_doubles():
    table, series = make_table()
    request = convert(batch(steady(series)))
    cpu = metric(request, "system.cpu.time")
    assert cpu.unit == "s" and cpu.sum.is_monotonic
    assert [p.as_double for p in cpu.sum.data_points] == [123.45, 124.45, 125.45]
    util = metric(request, "system.cpu.utilization")
    assert util.WhichOneof("data") == "gauge" and util.unit == "1"
    assert [p.as_double for p in util.gauge.data_points] == [0.25, 0.2501, 0.2502]
    assert util.gauge.data_points[0].start_time_unix_nano == 0


def test_integer_scale_gives_ints():
    table, series = make_table()
    mem = metric(convert(batch(steady(series))), "system.memory.usage")
    # memory in use is a non-monotonic cumulative Sum, as hostmetrics has it
    assert mem.WhichOneof("data") == "sum" and not mem.sum.is_monotonic
    assert mem.sum.aggregation_temporality == pb.AGGREGATION_TEMPORALITY_CUMULATIVE
    assert mem.description == "Bytes of memory in use."
    assert [p.WhichOneof("value") for p in mem.sum.data_points] == ["as_int"] * 3
    assert [p.as_int for p in mem.sum.data_points] == [4096 * 1024, 4097 * 1024, 4098 * 1024]
    assert [p.start_time_unix_nano for p in mem.sum.data_points] == [BOOT_TIME_MS * 1_000_000] * 3
    assert attrs(mem.sum.data_points[0].attributes) == {"state": "used"}


def test_histogram_buckets_bounds_count_sum():
    table, series = make_table()
    h = metric(convert(batch(steady(series))), "test.latency")
    assert h.WhichOneof("data") == "histogram" and h.unit == "s"
    assert h.histogram.aggregation_temporality == pb.AGGREGATION_TEMPORALITY_CUMULATIVE
    p = h.histogram.data_points[2]
    assert list(p.explicit_bounds) == [0.01, 0.1, 1]
    assert list(p.bucket_counts) == [1, 3, 1, 0]
    assert p.count == 5 and sum(p.bucket_counts) == p.count
    assert p.sum == pytest.approx(0.252)
    assert p.start_time_unix_nano == BOOT_TIME_MS * 1_000_000
    assert p.time_unix_nano == (T0 + 2000) * 1_000_000


def test_counter_above_int64_becomes_double():
    table, series = make_table()
    big = (1 << 64) - 10
    m = metric(convert(batch([(T0, [(series["rx"], (1 << 63) - 1)]), (T0 + 1000, [(series["rx"], big)])])),
               "system.network.io")
    first, second = m.sum.data_points
    assert first.WhichOneof("value") == "as_int" and first.as_int == (1 << 63) - 1
    assert second.WhichOneof("value") == "as_double" and second.as_double == float(big)


def test_scaled_value_above_int64_becomes_double():
    table, series = make_table()
    m = metric(convert(batch([(T0, [(series["mem"], 1 << 60)])])), "system.memory.usage")
    assert m.sum.data_points[0].as_double == float((1 << 60) * 1024)


def test_masks_produce_points_only_at_their_ticks():
    table, series = make_table()
    m = metric(convert(batch([(T0, [(series["rx"], 1)]), (T0 + 1000, [(series["util"], 5)]),
                              (T0 + 2000, [(series["rx"], 2)])])), "system.network.io")
    assert [p.time_unix_nano // 1_000_000 for p in m.sum.data_points] == [T0, T0 + 2000]


def test_series_with_the_same_name_share_one_metric_and_int_attributes_stay_ints():
    table = SeriesTable()
    a = Series("system.network.packets", COUNTER, "{packet}", {"device": "eth0", "queue": 0})
    b = Series("system.network.packets", COUNTER, "{packet}", {"device": "eth1", "queue": 1})
    g = Series("system.uptime", GAUGE, "s", None, 0.01)
    for s in (a, b, g):
        table.intern(s)
    request = convert(batch([(T0, [(a, 1), (b, 2), (g, 100)])]), table=table)
    m = metric(request, "system.network.packets")
    assert m.unit == "{packets}"  # hostmetrics' spelling of the same annotation
    assert [attrs(p.attributes) for p in m.sum.data_points] == [{"device": "eth0", "queue": 0},
                                                                 {"device": "eth1", "queue": 1}]
    assert metric(request, "system.uptime").gauge.data_points[0].as_double == 1.0


def test_one_resource_per_device_across_batches():
    table, series = make_table()
    dicts = Dictionaries()
    for device in ("dev-1", "dev-2"):
        dicts.add_birth(device, birth(table, device))
    resolved = [dicts.resolve(d, batch(steady(series), device=d, seq=s))
                for d, s in (("dev-1", 1), ("dev-2", 1), ("dev-1", 2))]
    request = to_request(resolved)
    assert [attrs(rm.resource.attributes)["host.name"] for rm in request.resource_metrics] == ["dev-1", "dev-2"]
    rx = [m for m in request.resource_metrics[0].scope_metrics[0].metrics if m.name == "system.network.io"]
    assert len(rx) == 1 and len(rx[0].sum.data_points) == 6


def test_every_metric_has_the_conventions_description_and_unit():
    table, series = make_table()
    request = convert(batch(steady(series)))
    for m in request.resource_metrics[0].scope_metrics[0].metrics:
        if m.name != "test.latency":
            assert m.description == CATALOG[m.name].description and m.unit == CATALOG[m.name].unit, m.name
    assert metric(request, "system.cpu.time").description == "Total seconds each logical CPU spent on each mode."


def test_legacy_values_and_cpu_total_follow_the_convention():
    """An agent from before the convention: iowait/irq/buffers renamed; cpu=total never beside cpu0..N."""
    table = SeriesTable()
    old = [Series("system.cpu.time", COUNTER, "s", {"cpu": c, "state": st}, 0.01)
           for c in ("total", "cpu0") for st in ("iowait", "irq", "user")]
    mem = Series("system.memory.usage", GAUGE, "By", {"state": "buffers"}, 1024)
    for s in old + [mem]:
        table.intern(s)
    request = convert(batch([(T0, [(s, 100) for s in old] + [(mem, 1)])]), table=table)
    cpu = [attrs(p.attributes) for p in metric(request, "system.cpu.time").sum.data_points]
    assert cpu == [{"cpu": "cpu0", "state": "wait"}, {"cpu": "cpu0", "state": "interrupt"}, {"cpu": "cpu0", "state": "user"}]
    assert attrs(metric(request, "system.memory.usage").sum.data_points[0].attributes) == {"state": "buffered"}
    # a total alone (per_cpu off) is the machine's series, without a cpu attribute
    alone = SeriesTable()
    total = Series("system.cpu.time", COUNTER, "s", {"cpu": "total", "state": "idle"}, 0.01)
    alone.intern(total)
    points = metric(convert(batch([(T0, [(total, 5)])]), table=alone), "system.cpu.time").sum.data_points
    assert [attrs(p.attributes) for p in points] == [{"state": "idle"}]


def test_counters_that_start_with_their_collector_carry_that_start():
    """A birth's `st` sets a series' start: eBPF counters start when their program was loaded."""
    table = SeriesTable()
    boot = Series("system.network.io", COUNTER, "By", {"device": "lo", "direction": "receive"})
    retrans = SeriesCache("ebpf", start_ms=T0 - 5000).get("system.network.tcp.retransmits", COUNTER, "{segment}")
    for s in (boot, retrans):
        table.intern(s)
    request = convert(batch([(T0, [(boot, 10), (retrans, 3)])], ext={"lost": [2, 40]}), table=table)
    assert metric(request, "system.network.io").sum.data_points[0].start_time_unix_nano == BOOT_TIME_MS * 1_000_000
    assert metric(request, "system.network.tcp.retransmits").sum.data_points[0].start_time_unix_nano == (T0 - 5000) * 1_000_000
    lost = metric(request, "edge.agent.lost.samples")
    assert lost.sum.is_monotonic and [p.as_int for p in lost.sum.data_points] == [40]
    assert metric(request, "edge.agent.lost.batches").sum.data_points[0].as_int == 2


def test_every_metric_name_a_collector_can_make_is_in_the_catalog():
    """procfs, netlink and eBPF collectors: each metric name in their source has a type, unit and description."""
    import pathlib
    import re

    sources = pathlib.Path(ROOT) / "edge_agent" / "collectors"
    names = set()
    for path in sources.rglob("*.py"):  # the collectors and their sub-packages
        names |= set(re.findall(r'"((?:system|process)\.[a-z_.0-9]*[a-z0-9])"', path.read_text()))
    names = {n for n in names if n != "process.command"}  # an attribute key, not a metric
    names |= {"system.cpu.load_average." + w for w in ("1m", "5m", "15m")}  # built from a prefix
    assert len(names) > 25
    missing = sorted(n for n in names if n not in CATALOG)
    assert not missing, "add these to gateway/convert/conventions.py CATALOG: %s" % missing
    assert all(CATALOG[n].description for n in names)
