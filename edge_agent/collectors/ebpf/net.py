"""Network metrics from bpf/net.c: conversion of its map readings to samples, and the collector.

Metrics (the first two as procfs/netlink, same attributes, units and scale):

    system.network.io                        counter  By            device, direction=receive|transmit
    system.network.packets                   counter  {packet}      device, direction
    system.network.tcp.retransmits           counter  {segment}     -
    system.network.tcp.retransmits.failed    counter  {segment}     -   (attempts the stack refused)
    system.network.tcp.connections.opened    counter  {connection}  type=active|passive
    system.network.tcp.connections.closed    counter  {connection}  -
    system.network.tcp.transitions           counter  {transition}  state=established|syn_sent|...|close
    system.network.kernel.dropped            counter  {packet}      reason=<skb_drop_reason, lower case>

plus, from the companion collector (netlink, else procfs) because no tracepoint sees them:
`system.network.errors` and `system.network.dropped` per device and direction (and netlink's
`system.linux.network.*`). Those series keep the companion's `source`.

Semantics: io/packets count what the tracepoints see (net:netif_receive_skb after GRO, so a
merged super-packet counts once; net:net_dev_xmit with rc 0). Bytes are made to match the
device's own counters, which differ by link type: on Ethernet (and veth) the device counts the
14-byte header both ways, while the receive tracepoint's length excludes it, so `to_samples` adds
14 per received packet; loopback counts neither way (loopback_xmit takes the length after
eth_type_trans), while the transmit tracepoint's length includes it, so 14 per sent packet comes
off (LINK_ADJUST, by ARPHRD type from /sys/class/net/<dev>/type). Interfaces are keyed by name in
the kernel program and only names present in the agent's network namespace are reported.
Counters are seeded from the companion's value when an interface is first seen, so they continue
the kernel's device counters. `transitions` counts entries into each TCP state (not the current
population); `opened` counts completed handshakes and `closed` the end of a connection that was
established. kernel.dropped counts every skb:kfree_skb (every freed-as-dropped packet, whatever
the layer), by the kernel's own reason names (read from tracefs at start; `not_specified` is
common).

Example output:

    system.network.io{device=eth0,direction=receive}            178361262
    system.network.packets{device=eth0,direction=transmit}      4374
    system.network.tcp.retransmits                              12
    system.network.tcp.connections.opened{type=active}          40
    system.network.kernel.dropped{reason=no_socket}             3
"""

import os

from edge_agent.collectors import wanted_interface
from edge_agent.model import BOOT
from edge_wire import COUNTER

# bytes per packet to add to the tracepoints' (receive, transmit) lengths to get the device's count
LINK_ADJUST = {1: (14, 0), 772: (0, -14)}  # ARPHRD_ETHER, ARPHRD_LOOPBACK
FROM_COMPANION = ("system.network.errors", "system.network.dropped")


def to_samples(reading, cache, adjust=None, devices=None, base=None, since_boot=False):
    """Samples for one loader reading (see bpf_loader.NetProgram.read for its shape).

    adjust:  {device: (bytes per received packet, bytes per sent packet)} added to io (LINK_ADJUST
             of its link type); missing is (0, 0).
    devices: names to report (others skipped); None reports every name in the reading.
    base:    {(metric, device, direction): value} added to io/packets (the seed); missing is 0.
    since_boot: io/packets are seeded with the kernel's counters (here or by the collector), so
             they count since boot (series start BOOT), not since the program's load.
    """
    adjust = adjust or {}
    base = base or {}
    out = []
    seen = set()
    for name, rx_bytes, rx_packets, tx_bytes, tx_packets in reading.get("devices", ()):
        if devices is not None and name not in devices:
            continue
        seen.add(name)
        rx_adjust, tx_adjust = adjust.get(name, (0, 0))
        _device(out, cache, name, max(rx_bytes + rx_adjust * rx_packets, 0), rx_packets,
                max(tx_bytes + tx_adjust * tx_packets, 0), tx_packets, base, since_boot)
    for name in sorted(devices or ()):
        if name not in seen:  # present but no traffic since the program loaded
            _device(out, cache, name, 0, 0, 0, 0, base, since_boot)
    tcp = reading.get("tcp")
    if tcp is not None:
        out.append((cache.get("system.network.tcp.retransmits", COUNTER, "{segment}"), tcp["retransmits"]))
        if "retransmit_failures" in tcp:
            series = cache.get("system.network.tcp.retransmits.failed", COUNTER, "{segment}")
            out.append((series, tcp["retransmit_failures"]))
        for kind in ("active", "passive"):
            series = cache.get("system.network.tcp.connections.opened", COUNTER, "{connection}", {"type": kind})
            out.append((series, tcp["opened_" + kind]))
        out.append((cache.get("system.network.tcp.connections.closed", COUNTER, "{connection}"), tcp["closed"]))
    for state, count in reading.get("tcp_states", ()):
        out.append((cache.get("system.network.tcp.transitions", COUNTER, "{transition}", {"state": state}), count))
    for reason, count in reading.get("drops", ()):
        out.append((cache.get("system.network.kernel.dropped", COUNTER, "{packet}", {"reason": reason}), count))
    return out


def _device(out, cache, name, rx_bytes, rx_packets, tx_bytes, tx_packets, base, since_boot):
    for metric, unit, direction, value in (
        ("system.network.io", "By", "receive", rx_bytes),
        ("system.network.packets", "{packet}", "receive", rx_packets),
        ("system.network.io", "By", "transmit", tx_bytes),
        ("system.network.packets", "{packet}", "transmit", tx_packets),
    ):
        # seeded with the kernel's own counters: counts since boot; else since the program's load
        series = cache.get(metric, COUNTER, unit, {"device": name, "direction": direction},
                           start=BOOT if since_boot else None)
        out.append((series, value + base.get((metric, name, direction), 0)))


def link_adjust(name, sysfs="/sys/class/net"):
    """(receive, transmit) bytes per packet that make the tracepoints' lengths the device's count
    for interface `name` ((0, 0) for a link type not in LINK_ADJUST, or unknown)."""
    try:
        with open("%s/%s/type" % (sysfs, name)) as f:
            return LINK_ADJUST.get(int(f.read().strip()), (0, 0))
    except (OSError, ValueError):
        return (0, 0)


class EbpfNetCollector:
    """network collector over a loader with `read()` (bpf_loader.NetProgram).

    `companion` is the netlink or procfs network collector: it supplies the per-device errors
    and drops no tracepoint sees, the seed of each interface's counters, and link events.
    """

    name = "network"
    source = "ebpf"

    def __init__(self, program, companion=None, include=None, exclude=None, sysfs="/sys/class/net"):
        from edge_agent.clock import wall_ms
        from edge_agent.collectors.seriescache import SeriesCache

        self.program = program
        self.companion = companion
        self.include = list(include or ())
        self.exclude = list(exclude or ())
        self.sysfs = sysfs
        self.cache = SeriesCache(self.source, start_ms=wall_ms())  # the maps count from their load
        self.adjust = {}
        self.base = None  # per device: {(metric, device, direction): value}
        self.seeded = set()
        self.floor = {}

    def _present(self):
        try:
            names = os.listdir(self.sysfs)
        except OSError:
            return None
        return set([n for n in names if wanted_interface(n, self.include, self.exclude)])

    def collect(self):
        companion = self.companion.collect() if self.companion is not None else []
        reading = self.program.read()
        devices = self._present()
        for name in devices or ():
            if name not in self.adjust:
                self.adjust[name] = link_adjust(name, self.sysfs)
        raw = to_samples(reading, self.cache, self.adjust, devices, since_boot=self.companion is not None)
        # seed interfaces seen for the first time with the kernel's own counters
        kernel = {}
        out = []
        for series, value in companion:
            if series.name in ("system.network.io", "system.network.packets"):
                kernel[(series.name, series.attrs["device"], series.attrs["direction"])] = value
            else:
                out.append((series, value))
        if self.base is None:
            self.base = {}
        for series, value in raw:
            device = series.attrs.get("device") if series.attrs else None
            if device is not None:
                key = (series.name, device, series.attrs["direction"])
                if device not in self.seeded and key in kernel:
                    self.base[key] = max(kernel[key] - value, 0)
                value += self.base.get(key, 0)
            floor = self.floor.get(series.key, 0)
            if value < floor:
                value = floor
            self.floor[series.key] = value
            out.append((series, value))
        for series, _ in raw:
            if series.attrs and "device" in series.attrs:
                self.seeded.add(series.attrs["device"])
        for name in list(self.seeded):
            if devices is not None and name not in devices:  # gone: seed again if it comes back
                self.seeded.discard(name)
                self.adjust.pop(name, None)
                for key in [k for k in self.base if k[1] == name]:
                    del self.base[key]
                for key in [k for k in self.floor if "device=%s," % name in k]:
                    del self.floor[key]
        return out

    def poll_events(self):
        poll = getattr(self.companion, "poll_events", None)
        return poll() if poll is not None else []

    def fileno(self):
        return self.companion.fileno() if hasattr(self.companion, "fileno") else -1

    def close(self):
        self.program.close()
        if self.companion is not None:
            self.companion.close()
