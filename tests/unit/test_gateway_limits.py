"""Gateway limits: payload size, birth size, series per birth, devices, and the rate of new series.

What exceeds a limit is rejected whole with its own reason, counted in /metrics, and changes nothing:
the device's good dictionary keeps resolving its batches.
"""

import types

import pytest

from edge_agent.model import Series, SeriesTable
from edge_wire import COUNTER, GAUGE
from gateway.app import Gateway
from gateway.decode.resolve import Dictionaries, Rejected, UnknownDictionary
from gateway.ops.metrics import GatewayMetrics
from tests.support.gateway import BOOT_ID, batch, birth, make_table, steady


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def big_table(n, start=0, epoch=0, base=None):
    """`n` network counters numbered from `start`: a dictionary that grows when `start + n` grows."""
    table = SeriesTable(epoch)
    table.base = epoch if base is None else base
    for i in range(start + n):
        table.intern(Series("system.network.io", COUNTER, "By", {"device": "veth%06d" % i}))
    return table


def reason(call, *args):
    with pytest.raises(Rejected) as info:
        call(*args)
    return info.value.reason


def test_payload_limit_is_exact():
    table, series = make_table()
    payload = batch(steady(series))
    dicts = Dictionaries(max_payload=len(payload))
    dicts.add_birth("dev-1", birth(table))
    assert dicts.resolve("dev-1", payload).samples() == 15
    small = Dictionaries(max_payload=len(payload) - 1)
    small.add_birth("dev-1", birth(table))
    assert reason(small.resolve, "dev-1", payload) == "too_large"


def test_birth_size_and_series_count_limits():
    payload = birth(big_table(300))
    assert reason(Dictionaries(max_birth=len(payload) - 1).add_birth, "dev-1", payload) == "too_large"
    assert reason(Dictionaries(max_series=299).add_birth, "dev-1", payload) == "too_many_series"
    assert len(Dictionaries(max_series=300).add_birth("dev-1", payload).series) == 300


def test_device_limit_admits_known_devices_only():
    dicts = Dictionaries(max_devices=2)
    for device in ("dev-1", "dev-2"):
        dicts.add_birth(device, birth(make_table()[0], device=device))
    assert reason(dicts.add_birth, "dev-3", birth(make_table()[0], device="dev-3")) == "too_many_devices"
    dicts.add_birth("dev-1", birth(make_table()[0], boot_id="rebooted"))  # a known device may rebirth
    assert sorted(dicts.devices()) == ["dev-1", "dev-2"]


@pytest.mark.slow
def test_new_series_rate_limits_a_growing_dictionary():
    clock = Clock()
    dicts = Dictionaries(max_series=5000, max_new_series=100, clock=clock)
    first = big_table(1800)
    dicts.add_birth("dev-1", birth(first))  # a big host's first birth: bounded by max_series alone
    for _ in range(20):  # reconnections re-announce the same dictionary: nothing new, never limited
        dicts.add_birth("dev-1", birth(first))
    # same run, 150 series more: more than a minute's allowance, admitted on a full one, which it overdraws
    assert len(dicts.add_birth("dev-1", birth(big_table(150, start=1800, epoch=5, base=0))).series) == 1950
    grown = big_table(30, start=1950, epoch=9, base=0)
    assert reason(dicts.add_birth, "dev-1", birth(grown)) == "series_rate"
    assert dicts.latest("dev-1").dict_epoch == 5  # the good dictionary stays
    clock.now += 40  # -50 + 66: still short of 30
    assert reason(dicts.add_birth, "dev-1", birth(grown)) == "series_rate"
    clock.now += 20
    assert len(dicts.add_birth("dev-1", birth(grown)).series) == 1980
    # another boot announcing the same series is not new
    assert len(dicts.add_birth("dev-1", birth(big_table(1980), boot_id="other-boot")).series) == 1980


@pytest.mark.slow
def test_rapid_rebirths_with_growing_dictionaries_are_limited_and_counted():
    clock = Clock()
    dicts = Dictionaries(max_new_series=60, clock=clock)
    metrics = GatewayMetrics()
    gateway = Gateway(dicts, types.SimpleNamespace(), metrics)  # births never reach the pipeline
    table = SeriesTable()
    table.base = 0
    accepted = []
    for second in range(100):  # 50 new series a second, each time announced by a rebirth
        for i in range(50):
            table.intern(Series("flood", GAUGE, "1", {"n": str(second * 50 + i)}))
        table.epoch = second
        gateway.on_birth("dev-1", birth(table))
        if dicts.latest("dev-1").dict_epoch == second:
            accepted.append(second)
        clock.now += 1
    # the first birth, one on the full allowance, the next when it is full again (≈ 50 s later), which
    # overdraws it by about 2500: nothing more for the next 40 minutes
    assert accepted[:2] == [0, 1] and len(accepted) == 3 and 50 <= accepted[2] <= 53, accepted
    assert len(dicts.latest("dev-1").series) < 3000
    text = metrics.render()
    assert 'edge_gateway_births_rejected_total{reason="series_rate"} %d' % (100 - len(accepted)) in text


def test_rate_limit_can_be_turned_off():
    dicts = Dictionaries(max_series=500, max_new_series=0)
    for n in range(100, 501, 100):
        dicts.add_birth("dev-1", birth(big_table(n, epoch=n, base=0)))
    assert len(dicts.latest("dev-1").series) == 500


def test_a_limited_device_keeps_resolving_and_its_refused_birth_is_admitted_later():
    clock = Clock()
    table, series = make_table()
    table.base = 0
    dicts = Dictionaries(max_new_series=3, clock=clock)
    dicts.add_birth("dev-1", birth(table))
    extra = [Series("extra", GAUGE, "1", {"i": str(i)}) for i in range(6)]
    for s in extra[:3]:
        table.intern(s)
    table.epoch = 3
    dicts.add_birth("dev-1", birth(table))  # 3 new: the whole allowance
    for s in extra[3:]:
        table.intern(s)
    table.epoch = 7
    for _ in range(5):  # the agent reconnects a few times, re-announcing the grown dictionary
        assert reason(dicts.add_birth, "dev-1", birth(table)) == "series_rate"
        assert dicts.resolve("dev-1", batch(steady(series), epoch=3)).samples() == 15
    newer = batch([(1000, [(extra[5], 1)])], epoch=7)
    with pytest.raises(UnknownDictionary):  # the gateway parks it and waits for the birth
        dicts.resolve("dev-1", newer)
    clock.now += 60  # the allowance refilled: the refused birth is admitted when a batch needs it
    assert dicts.resolve("dev-1", newer).points[0][0].key == "extra{i=5}"
    assert dicts.latest("dev-1").dict_epoch == 7 and dicts.latest("dev-1").boot_id == BOOT_ID


def test_run_flag_reaches_the_dictionaries():
    from gateway.cli import build_parser

    args = build_parser().parse_args(["run", "--max-new-series", "7"])
    assert args.max_new_series == 7
    assert build_parser().parse_args(["run"]).max_new_series == 1000


def test_a_deflated_flood_of_samples_is_refused_cheaply():
    """30 KB of deflated zero deltas would be 640,000 samples: refused before any is expanded."""
    import time
    import zlib

    import msgpack

    from edge_wire.decode import WireError, decode, parse_batch

    columns = [[sid, 0, 1] + [0] * 63 for sid in range(10000)]
    body = msgpack.packb([[0] + [1000] * 63, columns])
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = compressor.compress(body) + compressor.flush()
    payload = msgpack.packb([1, 1, "d", 1, 1, 1, 1, deflated])
    assert len(payload) < 65536
    started = time.monotonic()
    with pytest.raises(WireError) as err:
        parse_batch(decode(payload))
    assert err.value.reason == "too_many_samples"
    print("refused in %.3f s" % (time.monotonic() - started))
