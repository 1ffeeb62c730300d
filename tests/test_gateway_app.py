"""The gateway core without MQTT: acks settle exactly once, duplicates and gaps."""

import threading
import time

import pytest
from gateway_support import batch, birth, make_table, steady
from test_gateway_export import FAST, Receiver

from gateway.app import Gateway
from gateway.decode import Dictionaries
from gateway.dedupe import SeqTracker
from gateway.export import HttpExporter, OtlpConfig
from gateway.metrics import GatewayMetrics
from gateway.pipeline import ExportPipeline


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


class Acks:
    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.count += 1

    def wait(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.count == n


def core(receiver, dedupe=None):
    metrics = GatewayMetrics()
    pipeline = ExportPipeline(HttpExporter(OtlpConfig(endpoint=receiver.url + "/v1/metrics")), metrics,
                              retry=FAST, linger_s=0).start()
    gateway = Gateway(Dictionaries(), pipeline, metrics, dedupe, birth_wait_s=0)
    table, series = make_table()
    gateway.on_birth("dev-1", birth(table))
    return gateway, metrics, pipeline, series


def test_a_redelivery_during_export_is_settled_with_the_original(receiver):
    receiver.delay = 0.3
    gateway, metrics, pipeline, series = core(receiver)
    acks = Acks()
    payload = batch(steady(series), seq=5)
    gateway.on_data("dev-1", payload, acks)
    time.sleep(0.1)
    gateway.on_data("dev-1", payload, acks)  # e.g. redelivered after a reconnect
    assert acks.count == 0  # nothing is acked before the export succeeded
    assert acks.wait(2)
    pipeline.stop()
    assert len(receiver.requests) == 1 and metrics.duplicates.value() == 1


def test_dedupe_drops_exported_batches_and_counts_gaps(receiver):
    gateway, metrics, pipeline, series = core(receiver, SeqTracker())
    acks = Acks()
    for seq in (1, 2, 2, 5, 1):
        gateway.on_data("dev-1", batch(steady(series), seq=seq), acks)
        time.sleep(0.05)
    assert acks.wait(5)
    pipeline.stop()
    assert len(receiver.requests) == 3
    assert metrics.duplicates.value() == 2
    assert metrics.gaps.value(device="dev-1") == 2


def test_bad_input_is_acked_and_unknown_dictionary_rejected_without_wait(receiver):
    gateway, metrics, pipeline, series = core(receiver)
    acks = Acks()
    gateway.on_data("dev-1", b"junk", acks)
    gateway.on_data("dev-1", batch(steady(series), epoch=3), acks)
    pipeline.stop()
    assert acks.count == 2
    assert metrics.rejected.value(reason="not_msgpack") == 1 and metrics.rejected.value(reason="unknown_dict") == 1
    gateway.on_birth("dev-1", b"\x00")
    assert metrics.births_rejected.value(reason="bad_birth") == 1


def test_seq_tracker():
    t = SeqTracker(window=10)
    assert t.mark("d", 1, 1) == 0 and t.mark("d", 1, 2) == 0
    assert t.seen("d", 1, 2) and not t.seen("d", 1, 3) and not t.seen("d", 2, 2)
    assert t.mark("d", 1, 6) == 3
    assert t.mark("d", 1, 4) == 0 and t.seen("d", 1, 4)  # a late batch fills the gap
    assert t.mark("d", 1, 100) == 93
    assert t.mark("d", 1, 3) == 0 and not t.seen("d", 1, 100)  # far behind: the stream restarted
