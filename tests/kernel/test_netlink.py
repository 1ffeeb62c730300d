"""pyroute2 collector: pure conversion, a live read cross-checked with /proc/net/dev, link events."""

import os
import subprocess
import sys
import time
import uuid

import pytest

from edge_agent.collectors import netlink
from edge_agent.collectors.counters import Monotonic
from edge_agent.collectors.seriescache import SeriesCache
from edge_wire import COUNTER, GAUGE


class _Msg:
    def __init__(self, attrs, index=3):
        self.attrs = dict(attrs)
        self.index = index

    def get_attr(self, name):
        return self.attrs.get(name)

    def get(self, key):
        return self.index if key == "index" else None


STATS = {"rx_bytes": 2**64 - 10, "tx_bytes": 5, "rx_packets": 1, "tx_packets": 2, "rx_errors": 0, "tx_errors": 1,
         "rx_dropped": 3, "tx_dropped": 4, "multicast": 6, "collisions": 0, "rx_crc_errors": 7,
         "tx_carrier_errors": 8, "rx_nohandler": 9}


def test_parse_and_convert_all_offered_counters():
    link = netlink.parse_link(_Msg({"IFLA_IFNAME": "eth0", "IFLA_STATS64": STATS, "IFLA_OPERSTATE": "UP",
                                    "IFLA_CARRIER": 1, "IFLA_MTU": 1500}))
    assert link["operstate"] == 6 and link["carrier"] == 1 and link["mtu"] == 1500
    samples = netlink.to_samples([link], SeriesCache("netlink"), Monotonic())
    got = dict((s.key, v) for s, v in samples)
    assert got["system.network.io{device=eth0,direction=receive}"] == 2**64 - 10  # above 2^63 stays exact
    assert got["system.network.errors{device=eth0,direction=transmit}"] == 1
    assert got["system.network.dropped{device=eth0,direction=receive}"] == 3
    assert got["system.linux.network.errors{device=eth0,direction=receive,type=crc}"] == 7
    assert got["system.linux.network.errors{device=eth0,direction=transmit,type=carrier}"] == 8
    assert got["system.linux.network.dropped{device=eth0,type=nohandler}"] == 9
    assert got["system.linux.network.multicast{device=eth0,direction=receive}"] == 6
    assert got["system.linux.network.mtu{device=eth0}"] == 1500
    kinds = dict((s.name, (s.kind, s.source)) for s, _ in samples)
    assert kinds["system.network.io"] == (COUNTER, "netlink")
    assert kinds["system.linux.network.operstate"] == (GAUGE, "netlink")


def test_counter_wrap_is_continued():
    cache, counters = SeriesCache("netlink"), Monotonic()
    link = {"name": "e", "stats": {"tx_bytes": 2**64 - 1}, "operstate": 6, "carrier": 1, "mtu": 1}
    netlink.to_samples([link], cache, counters)
    link["stats"]["tx_bytes"] = 9
    got = dict((s.key, v) for s, v in netlink.to_samples([link], cache, counters))
    assert got["system.network.io{device=e,direction=transmit}"] == 2**64 + 9


def _need_netlink(root=False):
    reason = None
    if not sys.platform.startswith("linux"):
        reason = "not Linux"
    elif root and os.geteuid() != 0:
        reason = "needs root to create a veth pair"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def test_live_read_agrees_with_proc_net_dev():
    _need_netlink()
    from edge_agent.collectors.procfs.registry import parse_net_dev

    coll = netlink.NetlinkCollector(include=["lo"], events=False)
    try:
        with open("/proc/net/dev") as f:
            before = parse_net_dev(f.read())["lo"]
        got = dict((s.key, v) for s, v in coll.collect())
        with open("/proc/net/dev") as f:
            after = parse_net_dev(f.read())["lo"]
    finally:
        coll.close()
    value = got["system.network.packets{device=lo,direction=receive}"]
    assert before["rx_packets"] <= value <= after["rx_packets"]
    assert got["system.linux.network.mtu{device=lo}"] > 0


@pytest.mark.root
def test_link_events_name_the_interface():
    _need_netlink(root=True)
    a, b = "etl" + uuid.uuid4().hex[:6], "etm" + uuid.uuid4().hex[:6]
    coll = netlink.NetlinkCollector(events=True)
    try:
        assert coll.fileno() >= 0
        coll.poll_events()
        subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
        subprocess.run(["ip", "link", "set", a, "up"], check=True)
        changed, deadline = [], time.monotonic() + 3
        while a not in changed and time.monotonic() < deadline:
            changed += coll.poll_events()
            time.sleep(0.05)
        assert a in changed
        assert a in dict((s.attrs.get("device"), 1) for s, _ in coll.collect())
        subprocess.run(["ip", "link", "set", a, "down"], check=True)
        changed, deadline = [], time.monotonic() + 3
        while a not in changed and time.monotonic() < deadline:
            changed += coll.poll_events()
            time.sleep(0.05)
        assert a in changed
        assert coll.poll_events() == [] or True  # never blocks
    finally:
        subprocess.run(["ip", "link", "del", a], check=False, capture_output=True)
        coll.close()


def test_parse_link_events_datagram():
    import struct

    def msg(kind, name):
        attr = struct.pack("=HH", 4 + len(name) + 1, netlink.IFLA_IFNAME) + name + b"\0"
        attr += b"\0" * (-len(attr) % 4)
        mtu = struct.pack("=HHI", 8, 4, 1500)
        body = struct.pack("=BBHiII", 0, 0, 1, 7, 0, 0) + mtu + attr
        return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body

    data = msg(netlink.RTM_NEWLINK, b"eth0") + msg(netlink.RTM_DELLINK, b"wlan0") + msg(netlink.RTM_NEWLINK, b"eth0")
    assert netlink.parse_link_events(data) == ["eth0", "wlan0"]
    assert netlink.parse_link_events(data[:20]) == []
