"""Gateway decoding: births, resolution against the dictionary, and every rejection by reason."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.model import Series, SeriesTable
from edge_wire import COUNTER
from edge_wire.birth import boot_tag
from gateway.decode.resolve import Dictionaries, Rejected, UnknownDictionary
from tests.support.gateway import BOOT_ID, batch, birth, make_table, steady


@pytest.fixture
def known():
    table, series = make_table()
    dicts = Dictionaries()
    dicts.add_birth("dev-1", birth(table))
    return dicts, table, series


def reason_of(dicts, payload, device="dev-1"):
    with pytest.raises(Rejected) as info:
        dicts.resolve(device, payload)
    assert info.value.device == device
    return info.value.reason


def test_good_batch_resolves_to_absolute_values(known):
    dicts, _, series = known
    resolved = dicts.resolve("dev-1", batch(steady(series)))
    assert resolved.device == "dev-1" and resolved.key == ("dev-1", boot_tag(BOOT_ID), 1)
    assert resolved.samples() == 15
    by_name = {s.key: (indexes, values) for s, indexes, values in resolved.points}
    assert by_name["system.network.io{device=eth0,direction=receive}"] == ([0, 1, 2], [1000, 1500, 2000])
    assert by_name["test.latency"][1][2] == [5, 252, 1, 3, 1, 0]
    assert resolved.birth.boot_time_ms == 1_700_000_000_000
    assert dicts.devices() == ["dev-1"]


def test_compressed_batch_resolves(known):
    dicts, _, series = known
    assert dicts.resolve("dev-1", batch(steady(series), compress=True)).samples() == 15


@pytest.mark.parametrize("payload, reason", [
    (b"\xc1 this is not msgpack", "not_msgpack"),
    (b"", "not_msgpack"),
    (msgpack.packb("just a string"), "bad_header"),
    (msgpack.packb([1, 0, "dev-1", 1, 1, 0, 5, [[0], [[0, 0, "x"]]]]), "bad_value"),
    (msgpack.packb([2, 0, "dev-1", 1, 1, 0, 5, [[0], []]]), "bad_version"),
    (msgpack.packb([1, 0, "dev-1", -1, 1, 0, 5, [[0], []]]), "bad_header"),
    (msgpack.packb([1, 0, "dev-1", 1, 1, 0, 5, [[0], [[0, 1]]]]), "bad_column"),
    (msgpack.packb({"ext": msgpack.ExtType(5, b"x")}), "not_msgpack"),
    (b"\x00" * 70000, "too_large"),
])
def test_malformed_payloads_are_rejected_by_reason(known, payload, reason):
    assert reason_of(known[0], payload) == reason


def test_truncated_batch_is_rejected(known):
    dicts, _, series = known
    payload = batch(steady(series))
    for cut in (1, len(payload) // 2, len(payload) - 1):
        assert reason_of(dicts, payload[:cut]) == "not_msgpack"


def test_unknown_series_and_dictionary(known):
    dicts, table, series = known
    stranger = make_table()[1]["rx"]
    stranger.id = 99
    assert reason_of(dicts, batch([(5, [(stranger, 1)])])) == "unknown_series"
    with pytest.raises(UnknownDictionary):
        dicts.resolve("dev-1", batch(steady(series), epoch=7))
    with pytest.raises(UnknownDictionary):
        dicts.resolve("dev-1", batch(steady(series), boot_id="another-boot"))
    assert reason_of(dicts, batch(steady(series), device="dev-2"), "dev-2") == "unknown_dict"


def test_header_device_must_match_the_topic(known):
    dicts, _, series = known
    assert reason_of(dicts, batch(steady(series), device="dev-1"), "dev-2") == "device_mismatch"
    with pytest.raises(Rejected) as info:
        dicts.add_birth("dev-2", birth(make_table()[0], device="dev-1"))
    assert info.value.reason == "device_mismatch"


def test_counter_backwards_and_histogram_shape(known):
    dicts, _, series = known
    assert reason_of(dicts, batch([(5, [(series["rx"], 10)]), (6, [(series["rx"], 9)])])) == "counter_backwards"
    assert reason_of(dicts, batch([(5, [(series["rx"], -1)])])) == "bad_value"
    assert reason_of(dicts, batch([(5, [(series["lat"], (2, 1, (1, 1)))])])) == "histogram_shape"
    assert reason_of(dicts, batch([(5, [(series["lat"], (3, 1, (1, 1, 0, 0)))])])) == "histogram_shape"
    assert reason_of(dicts, batch([(5, [(series["lat"], (2, 1, (1, 1, 0, 0)))]),
                                   (6, [(series["lat"], (1, 1, (1, 0, 0, 0)))])])) == "counter_backwards"
    assert reason_of(dicts, batch([(5, [(series["rx"], (2, 1, (1, 1, 0, 0)))])])) == "bad_value"
    # a gauge may go down
    assert dicts.resolve("dev-1", batch([(5, [(series["util"], 10)]), (6, [(series["util"], -3)])])).samples() == 2


def test_birth_with_unsorted_bounds_is_rejected():
    table, series = make_table()
    series["lat"].bounds = [1, 0.1]
    with pytest.raises(Rejected) as info:
        Dictionaries().add_birth("dev-1", birth(table))
    assert info.value.reason == "bad_birth"


def test_recent_epochs_are_kept_and_old_ones_forgotten():
    dicts = Dictionaries(keep=2)
    tables = [make_table(epoch) for epoch in range(3)]
    for table, _ in tables:
        dicts.add_birth("dev-1", birth(table))
    assert dicts.latest("dev-1").dict_epoch == 2
    assert dicts.resolve("dev-1", batch(steady(tables[1][1]), epoch=1)).samples() == 15
    with pytest.raises(UnknownDictionary):
        dicts.resolve("dev-1", batch(steady(tables[0][1]), epoch=0))


def test_a_grown_dictionary_resolves_batches_buffered_under_older_epochs():
    table, series = make_table()
    table.base, table.epoch = 100, 100
    first = birth(table)
    table.epoch = 130  # the dictionary grew (same agent run, append-only)
    dicts = Dictionaries()
    dicts.add_birth("dev-1", birth(table))
    dicts.add_birth("dev-1", first)  # a late, older birth of the same run does not shrink it
    for epoch in (100, 117, 130):
        assert dicts.resolve("dev-1", batch(steady(series), epoch=epoch)).birth.dict_epoch == 130
    for epoch in (99, 131):  # before this run, or a growth not announced yet
        with pytest.raises(UnknownDictionary):
            dicts.resolve("dev-1", batch(steady(series), epoch=epoch))


def test_births_may_be_larger_than_batches_but_are_bounded_too():
    table = SeriesTable()
    for i in range(2000):  # a big host: many CPUs and interfaces
        table.intern(Series("system.network.io", COUNTER, "By", {"device": "veth%08d" % i, "direction": "receive"}))
    payload = birth(table)
    assert len(payload) > 65536
    assert len(Dictionaries().add_birth("dev-1", payload).series) == 2000
    with pytest.raises(Rejected) as info:
        Dictionaries(max_birth=65536).add_birth("dev-1", payload)
    assert info.value.reason == "too_large"


def test_device_limit():
    dicts = Dictionaries(max_devices=1)
    dicts.add_birth("dev-1", birth(make_table()[0]))
    with pytest.raises(Rejected) as info:
        dicts.add_birth("dev-2", birth(make_table()[0], device="dev-2"))
    assert info.value.reason == "too_many_devices"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_rejected(data):
    dicts = Dictionaries()
    for call in (dicts.resolve, dicts.add_birth):
        try:
            call("dev-1", data)
        except Rejected:
            pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_good_batches_only_ever_raise_rejected(data):
    table, series = make_table()
    dicts = Dictionaries()
    dicts.add_birth("dev-1", birth(table))
    payload = bytearray(batch(steady(series)))
    for _ in range(data.draw(st.integers(1, 4))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    try:
        dicts.resolve("dev-1", bytes(payload))
    except Rejected:
        pass
