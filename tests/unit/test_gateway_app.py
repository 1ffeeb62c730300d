"""The gateway core without MQTT: acks settle exactly once, duplicates and gaps, delivery receipts,
batches waiting for their dictionary."""

import time

import pytest

from edge_wire.birth import boot_tag
from edge_wire.decode import decode
from edge_wire.pack import packb
from edge_wire.receipt import EXPORTED, REFUSED, WANTED, encode_receipt
from gateway.app import Gateway
from gateway.decode.dedupe import SeqTracker
from gateway.decode.resolve import Dictionaries
from gateway.export.exporter import HttpExporter, OtlpConfig
from gateway.export.pipeline import ExportPipeline
from gateway.ops.metrics import GatewayMetrics
from tests.support.gateway import FAST, Acks, Receipts, batch, birth, make_table, steady


def core(receiver, dedupe=None, birth_wait_s=0, with_birth=True):
    metrics = GatewayMetrics()
    pipeline = ExportPipeline(HttpExporter(OtlpConfig(endpoint=receiver.url + "/v1/metrics")), metrics,
                              retry=FAST, linger_s=0).start()
    gateway = Gateway(Dictionaries(), pipeline, metrics, dedupe, birth_wait_s=birth_wait_s)
    gateway.publish_receipt = gateway.receipts_seen = Receipts()
    table, series = make_table()
    if with_birth:
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


def test_bad_input_is_acked_and_unknown_dictionary_released_without_wait(receiver):
    gateway, metrics, pipeline, series = core(receiver)
    acks = Acks()
    gateway.on_data("dev-1", b"junk", acks)
    gateway.on_data("dev-1", batch(steady(series), epoch=3, seq=7), acks)
    pipeline.stop()
    assert acks.count == 2
    assert metrics.rejected.value(reason="not_msgpack") == 1
    # not rejected: released without a receipt (the device sends it again), and its births asked for
    assert metrics.rejected.value(reason="unknown_dict") == 0 and metrics.released.value(reason="unknown_dict") == 1
    assert gateway.publish_receipt.runs() == [(7, 1, WANTED)]
    gateway.on_birth("dev-1", b"\x00")
    assert metrics.births_rejected.value(reason="bad_birth") == 1


@pytest.mark.slow
def test_receipts_list_what_was_exported_duplicates_again_and_refused(receiver):
    gateway, metrics, pipeline, series = core(receiver, SeqTracker())
    receipts = gateway.publish_receipt
    acks = Acks()
    for seq in (10, 11, 12):
        gateway.on_data("dev-1", batch(steady(series), seq=seq), acks)
    assert acks.wait(3)
    assert sorted(receipts.wait(3, EXPORTED)) in ([(10, 1, 0), (11, 1, 0), (12, 1, 0)], [(10, 3, 0)],
                                                       [(10, 1, 0), (11, 2, 0)], [(10, 2, 0), (12, 1, 0)])
    assert {b for _, b, _ in receipts} == {boot_tag(gateway_support_boot())}
    del receipts[:]
    gateway.on_data("dev-1", batch(steady(series), seq=11), acks)  # sent again: the device missed the receipt
    assert acks.wait(4) and receipts.runs() == [(11, 1, EXPORTED)]
    # a counter going backwards is bad data: refused (the device counts it lost), never exported
    bad = steady(series)
    bad[1] = (bad[1][0], [(series["rx"], 1)] + bad[1][1][1:])
    gateway.on_data("dev-1", batch(bad, seq=13), acks)
    assert acks.wait(5)
    pipeline.stop()
    assert receipts.runs(REFUSED) == [(13, 1, REFUSED)]
    assert metrics.rejected.value(reason="counter_backwards") == 1
    assert metrics.exported_batches.value() == 3 and metrics.duplicates.value() == 1


def test_a_batch_parked_for_the_next_birth_waits_on_when_an_earlier_birth_comes(receiver):
    """Issue 12, fault 1: the first birth re-ran every parked batch and rejected those needing the next one."""
    gateway, metrics, pipeline, series = core(receiver, SeqTracker(), birth_wait_s=5, with_birth=False)
    table, series = make_table(epoch=100)
    table.base = 100
    first = birth(table)
    grown = series_grown(table)
    acks = Acks()
    gateway.on_data("dev-1", batch(steady(series), seq=100, epoch=100), acks)
    gateway.on_data("dev-1", batch(steady(series), seq=101, epoch=101), acks)
    assert gateway.parked() == 2 and acks.count == 0
    gateway.on_birth("dev-1", first)  # resolves seq 100 only
    assert acks.wait(1) and gateway.parked() == 1
    gateway.on_birth("dev-1", grown)
    assert acks.wait(2) and gateway.parked() == 0
    pipeline.stop()
    assert metrics.rejected.value(reason="unknown_dict") == 0 and metrics.released.value(reason="unknown_dict") == 0
    assert sorted(gateway.publish_receipt.runs(EXPORTED)) in ([(100, 1, 0), (101, 1, 0)], [(100, 2, 0)])


def test_a_replica_does_not_export_what_another_one_receipted(receiver):
    gateway, metrics, pipeline, series = core(receiver, SeqTracker(gaps=False))
    other = encode_receipt(boot_tag(gateway_support_boot()), [(20, 2, EXPORTED)])
    gateway.on_receipt("dev-1", other)
    acks = Acks()
    gateway.on_data("dev-1", batch(steady(series), seq=21), acks)  # sent again, to this replica
    gateway.on_data("dev-1", batch(steady(series), seq=22), acks)
    assert acks.wait(2)
    pipeline.stop()
    assert metrics.duplicates.value() == 1 and metrics.receipts_seen.value() == 1
    assert len(receiver.requests) == 1


def test_a_resend_is_known_by_its_header_its_body_is_not_decoded(receiver):
    """Under overload devices re-send; a batch exported before costs its header only. The proof: a
    resend whose body is garbage is settled as the duplicate it is (receipted as exported, acked)."""
    gateway, metrics, pipeline, series = core(receiver, SeqTracker())
    receipts = gateway.publish_receipt
    acks = Acks()
    good = batch(steady(series), seq=7)
    gateway.on_data("dev-1", good, acks)
    assert acks.wait(1) and receipts.wait(1, EXPORTED) == [(7, 1, EXPORTED)]
    del receipts[:]
    body_spoilt = decode(good)
    body_spoilt[7] = ["not", "columns"]
    gateway.on_data("dev-1", packb(body_spoilt), acks)
    assert acks.wait(2) and receipts.runs() == [(7, 1, EXPORTED)]
    pipeline.stop()
    assert metrics.duplicates.value() == 1 and metrics.decoded.value() == 1
    assert sum(metrics.rejected.value(reason=r) for r in ("bad_body", "bad_column")) == 0
    assert len(receiver.requests) == 1


def test_a_batch_another_replica_refused_is_judged_here_not_receipted_as_exported(receiver):
    gateway, metrics, pipeline, series = core(receiver, SeqTracker(gaps=False))
    other = encode_receipt(boot_tag(gateway_support_boot()), [(30, 1, REFUSED)])
    gateway.on_receipt("dev-1", other)
    acks = Acks()
    gateway.on_data("dev-1", batch(steady(series), seq=30), acks)  # valid here: exported, not a duplicate
    assert acks.wait(1)
    pipeline.stop()
    assert metrics.duplicates.value() == 0 and len(receiver.requests) == 1
    assert gateway.publish_receipt.runs(EXPORTED) == [(30, 1, EXPORTED)]


def test_seq_tracker():
    t = SeqTracker(window=10)
    assert t.mark("d", 1, 1) == 0 and t.mark("d", 1, 2) == 0
    assert t.seen("d", 1, 2) and not t.seen("d", 1, 3) and not t.seen("d", 2, 2)
    assert t.mark("d", 1, 6) == 3
    assert t.mark("d", 1, 4) == 0 and t.seen("d", 1, 4)  # a late batch fills the gap
    assert t.mark("d", 1, 100) == 93
    assert t.mark("d", 1, 3) == 0 and not t.seen("d", 1, 100)  # far behind: the stream restarted


def gateway_support_boot():
    from tests.support.gateway import BOOT_ID

    return BOOT_ID


def series_grown(table):
    """The birth of `table`'s run after its dictionary grew by one series at epoch 101."""
    from edge_agent.model import Series
    from edge_wire import GAUGE

    table.intern(Series("system.uptime", GAUGE, "s", {}, 0.01, None, "procfs"))
    table.epoch = 101
    return birth(table)
