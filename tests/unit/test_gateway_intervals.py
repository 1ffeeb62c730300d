"""The effective sampling interval of stretched series reaches OTLP as `edge.sampling.interval`."""

import msgpack
import pytest

from edge_wire.decode import WireError, decode, parse_batch
from gateway.convert.otlp import to_request
from gateway.decode.resolve import Dictionaries
from tests.support.gateway import BOOT_TIME_MS, batch, birth, make_table, steady


def with_ext(payload: bytes, ext: dict) -> bytes:
    message = msgpack.unpackb(payload)
    return msgpack.packb(message[:8] + [ext])


def test_intervals_become_a_gauge_per_stretched_series():
    table, series = make_table()
    dicts = Dictionaries()
    dicts.add_birth("dev-1", birth(table))
    payload = with_ext(batch(steady(series)), {"iv": [[4000, series["cpu"].id, series["mem"].id], [60000, series["util"].id]]})
    request = to_request([dicts.resolve("dev-1", payload)])
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    points = metrics["edge.sampling.interval"].gauge.data_points
    got = {}
    for p in points:
        attrs = {a.key: a.value.string_value for a in p.attributes}
        got[(attrs["metric.name"], attrs.get("state", attrs.get("cpu")))] = p.as_int
        assert p.time_unix_nano == (BOOT_TIME_MS + 62_000) * 1_000_000  # the batch's last tick
    assert got == {("system.cpu.time", "user"): 4000, ("system.memory.usage", "used"): 4000,
                   ("system.cpu.utilization", "total"): 60000}
    assert metrics["edge.sampling.interval"].unit == "ms"


def test_no_stretched_series_no_extra_metric():
    table, series = make_table()
    dicts = Dictionaries()
    dicts.add_birth("dev-1", birth(table))
    request = to_request([dicts.resolve("dev-1", batch(steady(series)))])
    names = {m.name for m in request.resource_metrics[0].scope_metrics[0].metrics}
    assert "edge.sampling.interval" not in names


@pytest.mark.parametrize("ext", [{"iv": "x"}, {"iv": [[1000]]}, {"iv": [[1000, -1]]}, {"lost": [1]}, {"lost": "many"}])
def test_malformed_ext_is_rejected(ext):
    table, series = make_table()
    payload = with_ext(batch(steady(series)), ext)
    with pytest.raises(WireError) as err:
        parse_batch(decode(payload))
    assert err.value.reason == "bad_ext"
