"""What the gateway keeps per device stays bounded: silent devices are forgotten (--forget-after),
new devices beyond --max-devices are refused with one line and a metric (issue 18)."""

import logging
import time

from edge_wire.receipt import EXPORTED, WANTED
from gateway.app import Gateway
from gateway.decode.dedupe import SeqTracker
from gateway.decode.resolve import Dictionaries
from gateway.export.exporter import HttpExporter, OtlpConfig
from gateway.export.pipeline import ExportPipeline
from gateway.ops.metrics import GatewayMetrics
from tests.support.gateway import FAST, Acks, Receipts, batch, birth, make_table, steady


def gateway_for(receiver, **kwargs):
    metrics = GatewayMetrics()
    pipeline = ExportPipeline(HttpExporter(OtlpConfig(endpoint=receiver.url + "/v1/metrics")), metrics,
                              retry=FAST, linger_s=0).start()
    max_devices = kwargs.pop("max_devices", 100000)
    gateway = Gateway(Dictionaries(max_devices=max_devices), pipeline, metrics, SeqTracker(), **kwargs)
    gateway.publish_receipt = Receipts()
    return gateway, metrics, pipeline


def test_silent_devices_are_forgotten_and_one_that_returns_is_asked_for_its_birth(receiver):
    gateway, metrics, pipeline = gateway_for(receiver, forget_after_s=0.5)
    table, series = make_table()
    acks = Acks()
    try:
        for device in ("dev-1", "dev-2"):
            gateway.on_birth(device, birth(table, device=device))
            gateway.on_data(device, batch(steady(series), device=device, seq=1), acks)
        assert acks.wait(2)
        assert 'device="dev-1"' in metrics.render()
        assert gateway.sweep() == []  # not silent long enough
        time.sleep(0.6)
        gateway.on_state("dev-2", b"online")  # dev-2 speaks again
        assert gateway.sweep() == ["dev-1"]
        assert gateway.dictionaries.devices() == ["dev-2"]
        assert gateway.status("dev-1") is None and gateway.dedupe.forget(["dev-1"]) == 0  # nothing left to forget
        text = metrics.render()
        assert 'device="dev-1"' not in text and 'device="dev-2"' in text
        assert "edge_gateway_devices_forgotten_total 1.0" in text
        # dev-1 comes back without a birth: its batch waits and the device is asked for its births
        gateway.publish_receipt.clear()
        gateway.on_data("dev-1", batch(steady(series), device="dev-1", seq=2), acks)
        assert gateway.publish_receipt.wait(1, kind=WANTED)
        gateway.on_birth("dev-1", birth(table, device="dev-1"))
        assert acks.wait(3)
        assert gateway.publish_receipt.wait(1, kind=EXPORTED)
    finally:
        pipeline.stop(5)


def test_a_device_beyond_the_limit_is_refused_with_one_line_and_counted(receiver, caplog):
    gateway, metrics, pipeline = gateway_for(receiver, max_devices=2)
    table, series = make_table()
    try:
        with caplog.at_level(logging.INFO):
            for device in ("dev-1", "dev-2", "dev-3", "dev-4"):
                gateway.on_birth(device, birth(table, device=device))
            gateway.on_birth("dev-1", birth(table, device="dev-1"))  # a known device's new birth is welcome
        assert gateway.dictionaries.devices() == ["dev-1", "dev-2"]
        limit_lines = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "limit_reached"]
        assert len(limit_lines) == 1 and "--max-devices" in limit_lines[0].getMessage()
        assert 'edge_gateway_limit_reached_total{limit="devices"} 2.0' in metrics.render()
    finally:
        pipeline.stop(5)


def test_dedupe_state_stays_three_integers_through_a_jump_to_the_last_sequence_number():
    tracker = SeqTracker(window=4096)
    tracker.mark("dev-1", 7, 5)
    assert tracker.mark("dev-1", 7, (1 << 64) - 1) == (1 << 64) - 1 - 5 - 1  # a gap, counted; no 2**64-bit integer
    highest, low, holes = tracker._streams[("dev-1", 7)]
    assert highest == (1 << 64) - 1 and holes.bit_length() <= 4096
    assert tracker.seen("dev-1", 7, (1 << 64) - 1) and not tracker.seen("dev-1", 7, (1 << 64) - 2)
    assert tracker.mark("dev-1", 7, (1 << 64) - 2) == 0 and tracker.seen("dev-1", 7, (1 << 64) - 2)
