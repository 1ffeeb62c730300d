"""The gateway's direct protobuf writer (gateway/convert/otlpwire.py) against opentelemetry-proto's messages.

`to_request` (gateway/convert/otlp.py) builds the request from opentelemetry-proto message objects; the
writer must give the very bytes `SerializeToString()` gives, for real agent output and for the
corners (values beyond int64, zero times, starts after a point's time, histograms, several
devices), and those bytes must parse with opentelemetry-proto. tests/unit/test_gateway_otlp.py and the
fuzz properties also compare the two on every conversion they make.
"""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from edge_agent.model import Series, SeriesTable
from edge_wire import COUNTER, GAUGE
from edge_wire.birth import encode_birth
from gateway.convert.otlp import to_request
from gateway.convert.otlpwire import Encoded, as_message, encode
from gateway.decode.resolve import Dictionaries
from tests.support import ROOT
from tests.support.gateway import BOOT_TIME_MS, batch, birth, info, make_table, steady

RECORDING = os.path.join(ROOT, "fleetsim", "recording.msgpack")


def same_bytes(resolved: list) -> bytes:
    expected = to_request(resolved).SerializeToString()
    got = encode(resolved).SerializeToString()
    assert got == expected
    parsed = ExportMetricsServiceRequest()
    parsed.ParseFromString(got)
    assert parsed == to_request(resolved)
    return got


def test_recorded_agent_output_of_many_devices_is_byte_identical():
    """Three minutes of this machine's real stream (fleetsim/recording.msgpack), as three devices."""
    with open(RECORDING, "rb") as f:
        recording = msgpack.unpackb(f.read())
    dicts = Dictionaries()
    resolved = []
    for n in range(3):
        device = "pi-%04d" % n
        for payload in recording["births"]:
            obj = msgpack.unpackb(payload)
            obj["dev"] = device
            dicts.add_birth(device, msgpack.packb(obj))
        for payload in recording["batches"]:
            obj = msgpack.unpackb(payload)
            obj[2] = device
            resolved.append(dicts.resolve(device, msgpack.packb(obj)))
    data = same_bytes(resolved[::2] + resolved[1::2])  # devices interleaved, as a request mixes them
    assert len(ExportMetricsServiceRequest.FromString(data).resource_metrics) == 3
    assert sum(r.samples() for r in resolved) == 3 * 13740


def test_encoded_request_stands_in_for_the_message():
    table, series = make_table()
    dicts = Dictionaries()
    dicts.add_birth("dev-1", birth(table))
    request = encode([dicts.resolve("dev-1", batch(steady(series)))])
    assert isinstance(request, Encoded) and request.ByteSize() == len(request.SerializeToString())
    assert as_message(request) is request.message() and as_message(request.message()) is request.message()


def test_many_series_share_their_records_and_caches_across_devices():
    table, series = make_table()
    dicts = Dictionaries()
    for device in ("a-1", "a-2"):
        dicts.add_birth(device, birth(table, device))
    one = dicts.resolve("a-1", batch(steady(series), device="a-1"))
    two = dicts.resolve("a-2", batch(steady(series), device="a-2"))
    same_bytes([one, two])
    assert [p[0] for p in one.points] == [p[0] for p in two.points]  # the very same records
    assert all(p[0].otlp is not None for p in one.points)


@st.composite
def columns(draw):
    """A device with counters and gauges of odd scales, and a batch of odd values and times."""
    n = draw(st.integers(1, 5))
    table = SeriesTable(0)
    made = []
    for _ in range(n):
        kind = draw(st.sampled_from([COUNTER, GAUGE]))
        scale = draw(st.sampled_from([1, 2, 1024, 0.01, 0.0001, 0.3, 2.0, 1e-9]))
        s = Series("m.%d" % draw(st.integers(0, 2)), kind, draw(st.sampled_from(["By", "s", "1", ""])),
                   {"k": draw(st.sampled_from(["", "v", "w" * 200])), "n": draw(st.integers(-5, 2 ** 62))},
                   scale, None, "procfs")
        if kind == COUNTER and draw(st.booleans()):
            s.start = draw(st.sampled_from([1, BOOT_TIME_MS + 10 ** 9, 2 ** 60 // 1_000_000]))
        table.intern(s)
        made.append(s)
    t0 = draw(st.sampled_from([0, 1, BOOT_TIME_MS, BOOT_TIME_MS + 60_000]))
    ticks = []
    values = {id(s): draw(st.integers(0, 2 ** 40)) for s in made}
    for t in range(draw(st.integers(1, 12))):
        samples = []
        for s in made:
            if draw(st.integers(0, 3)):
                big = draw(st.sampled_from([0, 1, 2 ** 61, 2 ** 63 - 1, 2 ** 63 + 5]))
                values[id(s)] += draw(st.integers(0, 10 ** 6)) + (big if s.kind == COUNTER else 0)
                samples.append((s, values[id(s)] if s.kind == COUNTER else draw(st.integers(-2 ** 63, 2 ** 64 - 1))))
        if samples:
            ticks.append((t0 + 1000 * t, samples))
    return table, ticks


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(columns(), st.booleans())
def test_random_batches_are_byte_identical_or_refused_alike(made, interval):
    table, ticks = made
    if not ticks:
        return
    device_info = dict(info(), interval_ms=1000) if interval else info()
    dicts = Dictionaries()
    dicts.add_birth("dev-1", encode_birth(device_info, table))
    try:
        resolved = [dicts.resolve("dev-1", batch(ticks, ext={"lost": [1, 2], "iv": [[5000, 0]]}))]
    except Exception:  # values the decoder refuses (negative counters beyond the wire's range) are not ours
        return
    try:
        expected = to_request(resolved).SerializeToString()
    except ValueError:
        expected = None
    try:
        got = encode(resolved).SerializeToString()
    except ValueError:
        got = None
    assert got == expected
