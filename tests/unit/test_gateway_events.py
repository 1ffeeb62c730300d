"""Device events as OTLP logs: what the gateway sees (state, births, acks, link changes in the data,
losses) becomes one log record each, with the device's resource, exported beside the metrics."""

from __future__ import annotations

import json
import threading

from opentelemetry.proto.logs.v1 import logs_pb2

from edge_agent.model import Series, SeriesTable
from edge_wire import GAUGE
from gateway.app import Gateway
from gateway.convert.events import DeviceEvents
from gateway.decode.resolve import Dictionaries
from gateway.export.exporter import HttpExporter, OtlpConfig, RetryPolicy
from gateway.export.pipeline import ExportPipeline
from gateway.ops.metrics import GatewayMetrics
from testbed.otlp_receiver import OtlpReceiver
from tests.support.gateway import BOOT_TIME_MS, batch, birth, make_table

T0 = BOOT_TIME_MS + 60_000


def records(receiver):
    return [(rl, r) for req in receiver.logs for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]


def attrs(kvs):
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in kvs}


def test_state_births_acks_links_and_losses_become_log_records():
    receiver = OtlpReceiver()
    metrics = GatewayMetrics()
    dicts = Dictionaries()
    pipeline = ExportPipeline(HttpExporter(OtlpConfig(endpoint=receiver.url + "/v1/metrics", timeout_s=5)), metrics,
                              linger_s=0.01, retry=RetryPolicy(initial_s=0.01))
    gateway = Gateway(dicts, pipeline, metrics)
    events = gateway.events = DeviceEvents(HttpExporter(OtlpConfig(endpoint=receiver.url + "/v1/logs", timeout_s=5)),
                                           dicts.latest, metrics, linger_s=0.05)
    pipeline.start()
    events.start()
    try:
        table, series = make_table()
        eth0 = Series("system.linux.network.operstate", GAUGE, "1", {"device": "eth0"})
        table.intern(eth0)
        gateway.on_state("dev-1", b"online")
        gateway.on_birth("dev-1", birth(table))
        acked = threading.Event()
        data = batch([(T0, [(eth0, 6)]), (T0 + 1000, [(eth0, 2)]), (T0 + 2000, [(eth0, 6)])], ext={"lost": [2, 30]})
        gateway.on_data("dev-1", data, acked.set)
        assert acked.wait(5)
        gateway.on_ack("dev-1", json.dumps({"id": "c-1", "status": "ok", "ts": 1_700_000_100}).encode())
        gateway.on_ack("dev-1", json.dumps({"id": "c-2", "status": "error", "reason": "stale"}).encode())
        gateway.on_ack("dev-1", b"not json")
        gateway.on_state("dev-1", b"offline")
        events.stop(5)
    finally:
        pipeline.stop()
        receiver.stop()
    got = records(receiver)
    names = [r.event_name for _, r in got]
    assert names == ["device.online", "device.birth", "device.link.down", "device.link.up", "device.data.lost",
                     "device.command.applied", "device.command.rejected", "device.offline"], names
    by_name = {r.event_name: (rl, r) for rl, r in got}
    rl, down = by_name["device.link.down"]
    assert down.time_unix_nano == (T0 + 1000) * 1_000_000 and down.severity_number == logs_pb2.SEVERITY_NUMBER_WARN
    assert attrs(down.attributes)["network.interface.name"] == "eth0" and attrs(down.attributes)["event.name"] == "device.link.down"
    assert attrs(rl.resource.attributes)["service.instance.id"] == "dev-1"
    assert attrs(rl.resource.attributes)["host.boot.id"]  # the birth's resource, as the metrics have it
    rejected = by_name["device.command.rejected"][1]
    assert attrs(rejected.attributes)["edge.command.reason"] == "stale" and "stale" in rejected.body.string_value
    assert by_name["device.command.applied"][1].time_unix_nano == 1_700_000_100 * 10**9
    assert attrs(by_name["device.data.lost"][1].attributes)["edge.lost.samples"] == 30
    assert metrics.events.value(event="device.birth") == 1 and metrics.events_exported.value() == 8
    assert metrics.online.value(device="dev-1") == 0


def test_a_full_queue_drops_the_oldest_and_counts_them():
    metrics = GatewayMetrics()
    events = DeviceEvents(HttpExporter(OtlpConfig(endpoint="http://127.0.0.1:9/v1/logs")), lambda d: None, metrics,
                          capacity=3)
    for i in range(5):
        events.state("dev-%d" % i, "online")
    assert events.pending() == 3 and metrics.events_dropped.value() == 2
    request = events.request(list(events._queue))
    assert [attrs(rl.resource.attributes)["service.instance.id"] for rl in request.resource_logs] == ["dev-2", "dev-3", "dev-4"]


def test_link_events_need_a_change():
    events = DeviceEvents(None, lambda d: None)
    table = SeriesTable()
    s = Series("system.linux.network.operstate", GAUGE, "1", {"device": "wlan0"})
    table.intern(s)
    dicts = Dictionaries()
    dicts.add_birth("dev-1", birth(table))
    events.batch(dicts.resolve("dev-1", batch([(T0, [(s, 6)]), (T0 + 1000, [(s, 6)])])))
    events.batch(dicts.resolve("dev-1", batch([(T0 + 2000, [(s, 2)])], seq=2)))
    assert [r[1] for r in events._queue] == ["device.link.down"]
