"""--state-dir: dedupe state and births survive a gateway restart; device status and agent drops."""

import pytest

from edge_wire.batch import BatchBuilder
from edge_wire.birth import boot_tag
from gateway.app import Gateway
from gateway.decode.dedupe import SeqTracker
from gateway.decode.resolve import Dictionaries
from gateway.decode.state import GatewayState, StateError
from gateway.export.exporter import HttpExporter, OtlpConfig
from gateway.export.pipeline import ExportPipeline
from gateway.ops.metrics import GatewayMetrics
from tests.support.gateway import BOOT_ID, FAST, Acks, batch, birth, make_table, steady


def start(receiver, state_dir, published=None):
    metrics = GatewayMetrics()
    pipeline = ExportPipeline(HttpExporter(OtlpConfig(endpoint=receiver.url + "/v1/metrics")), metrics,
                              retry=FAST, linger_s=0).start()
    state = GatewayState(str(state_dir))
    sink = (lambda device, doc: published.append((device, doc)) or True) if published is not None else None
    gateway = Gateway(Dictionaries(), pipeline, metrics, SeqTracker(), birth_wait_s=0, state=state,
                      publish_status=sink)
    gateway.restore()
    return gateway, metrics, pipeline, state


def stop(pipeline, state):
    pipeline.stop()
    state.close()


def test_a_restarted_gateway_drops_what_it_exported_and_resolves_with_saved_births(receiver, tmp_path):
    table, series = make_table()
    gateway, metrics, pipeline, state = start(receiver, tmp_path)
    gateway.on_birth("dev-1", birth(table))
    acks = Acks()
    for seq in (1, 2, 3):
        gateway.on_data("dev-1", batch(steady(series), seq=seq), acks)
    assert acks.wait(3) and metrics.exported_batches.value() == 3
    stop(pipeline, state)  # as good as SIGKILL here: everything is on disk before each ack

    gateway, metrics, pipeline, state = start(receiver, tmp_path)  # no birth arrives this time
    acks = Acks()
    for seq in (2, 3, 4):  # the broker redelivers 2 and 3 (their acks were lost), then 4 is new
        gateway.on_data("dev-1", batch(steady(series), seq=seq), acks)
    assert acks.wait(3)
    stop(pipeline, state)
    assert metrics.duplicates.value() == 2 and metrics.exported_batches.value() == 1
    assert metrics.rejected.value(reason="unknown_dict") == 0


def test_the_log_is_compacted_and_a_torn_line_is_ignored(tmp_path):
    state = GatewayState(str(tmp_path))
    tracker = SeqTracker()
    for seq in range(1, 6):
        tracker.mark("d", 7, seq)
        state.record([("d", 7, seq)], tracker)
    state.close()
    with open(tmp_path / "dedupe.log", "a") as f:
        f.write('[["d",7,6]')  # a crash in the middle of a write: no ack was sent for it
    state = GatewayState(str(tmp_path))
    restored = SeqTracker()
    assert state.load_dedupe(restored) == 5
    assert all(restored.seen("d", 7, s) for s in range(1, 6)) and not restored.seen("d", 7, 6)
    assert (tmp_path / "dedupe.log").read_text() == ""  # compacted into the snapshot
    again = SeqTracker()
    state.load_dedupe(again)
    assert again.snapshot() == [["d", 7, 5, [[1, 5]]]]
    state.close()


def test_one_gateway_per_state_directory(tmp_path):
    first = GatewayState(str(tmp_path))
    with pytest.raises(StateError):
        GatewayState(str(tmp_path))
    first.close()
    GatewayState(str(tmp_path)).close()


def test_births_are_written_only_when_a_run_is_new_or_its_dictionary_grew(tmp_path):
    state = GatewayState(str(tmp_path))
    table, _ = make_table()
    payload = birth(table)
    parsed = Dictionaries().add_birth("dev-1", payload)
    assert state.save_birth("dev-1", payload, parsed)
    assert not state.save_birth("dev-1", payload, parsed)  # a reconnect replays the retained birth
    assert list(state.births()) == [("dev-1", payload)]
    state.close()


def test_gaps_skip_the_jump_to_a_new_agent_run():
    t = SeqTracker()
    assert t.mark("d", 1, 1000, base=1000) == 0  # first sight of the stream: no gap
    assert t.mark("d", 1, 1003, base=1000) == 2  # 1001 and 1002 missing within the run
    assert t.mark("d", 1, 5000, base=5000) == 0  # the agent restarted: a new base, no loss
    assert t.mark("d", 1, 5002, base=5000) == 1
    assert SeqTracker(gaps=False).mark("d", 1, 9) == 0


def test_status_and_the_agents_drop_count(receiver, tmp_path):
    table, series = make_table()
    published = []
    gateway, metrics, pipeline, state = start(receiver, tmp_path, published)
    gateway.on_birth("dev-1", birth(table))
    acks = Acks()
    for seq, lost in ((1, None), (2, [3, 45]), (3, [3, 45])):
        builder = BatchBuilder()
        for ts, samples in steady(series):
            builder.add_tick(ts, samples)
        payload = builder.encode("dev-1", boot_tag(BOOT_ID), seq, 0, False, {"lost": lost} if lost else None)
        gateway.on_data("dev-1", payload, acks)
        acks.wait(seq)
    gateway.on_data("dev-1", payload, acks)  # a duplicate
    assert acks.wait(4)
    stop(pipeline, state)
    assert metrics.lost_batches.value(device="dev-1") == 3 and metrics.lost_samples.value(device="dev-1") == 45
    assert 'edge_gateway_device_lost_batches{device="dev-1"} 3' in metrics.render()
    status = gateway.status("dev-1")
    assert status["seq"] == 3 and status["batches"] == 3 and status["duplicates"] == 1 and status["lost"] == [3, 45]
    assert status["samples"] == 3 * batch_samples(series)
    assert len(published) == 1 and published[0][1]["seq"] == 1  # the first batch; then at most every 10 s
    gateway.publish_due(now=10**9)
    assert published[-1][1]["seq"] == 3


def batch_samples(series):
    return 3 * len(series)
