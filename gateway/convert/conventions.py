"""The one metric convention the gateway exports: the OpenTelemetry Collector's hostmetrics receiver.

Every metric a collector (procfs, netlink, eBPF) or the gateway itself can produce has an entry in
`CATALOG`: its OTLP type, its unit and its description, so OTLP and Prometheus users get the same
types, units and HELP texts as from a Collector with hostmetrics on the host (docs/metrics.md has
the table). The wire carries only gauge/counter/histogram and the device's own unit; the type
(a gauge that is a non-monotonic Sum, as memory usage), the description and the convention's unit
are the gateway's to add.

`present(series)` also reads agents of before this convention (and backends that still say it the
old way) into it: `iowait`/`irq` states are `wait`/`interrupt`, memory `buffers` is `buffered`,
and `cpu="total"` is never a `cpu` value (see `Presenter`).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_wire import COUNTER, GAUGE, HISTOGRAM

# OTLP types
SUM = "sum"  # cumulative monotonic Sum (a counter)
UPDOWN = "updown"  # cumulative non-monotonic Sum (a value that goes up and down, e.g. memory in use)
GAUGE_T = "gauge"
HISTOGRAM_T = "histogram"


@dataclass(frozen=True)
class Convention:
    type: str
    unit: str
    description: str


def _c(type_: str, unit: str, description: str) -> Convention:
    return Convention(type_, unit, description)


CATALOG: dict[str, Convention] = {
    # hostmetrics receiver: cpu, memory, load, network, system scrapers (descriptions verbatim)
    "system.cpu.time": _c(SUM, "s", "Total seconds each logical CPU spent on each mode."),
    "system.cpu.utilization": _c(GAUGE_T, "1", "Difference in system.cpu.time since the last measurement per "
                                 "logical CPU, divided by the elapsed time (value in interval [0,1])."),
    "system.memory.usage": _c(UPDOWN, "By", "Bytes of memory in use."),
    "system.memory.limit": _c(UPDOWN, "By", "Total bytes of memory available."),
    "system.linux.memory.available": _c(UPDOWN, "By", "An estimate of how much memory is available for starting "
                                        "new applications, without swapping. This is a more accurate alternative "
                                        "than system.memory.usage with state=free. (Linux only)"),
    "system.cpu.load_average.1m": _c(GAUGE_T, "{thread}", "Average CPU Load over 1 minute."),
    "system.cpu.load_average.5m": _c(GAUGE_T, "{thread}", "Average CPU Load over 5 minutes."),
    "system.cpu.load_average.15m": _c(GAUGE_T, "{thread}", "Average CPU Load over 15 minutes."),
    "system.network.io": _c(SUM, "By", "The number of bytes transmitted and received."),
    "system.network.packets": _c(SUM, "{packets}", "The number of packets transferred."),
    "system.network.errors": _c(SUM, "{errors}", "The number of errors encountered."),
    "system.network.dropped": _c(SUM, "{packets}", "The number of packets dropped."),
    "system.uptime": _c(GAUGE_T, "s", "The time the system has been running"),
    # netlink: the kernel's detailed link statistics and state (no hostmetrics equivalent)
    "system.linux.network.errors": _c(SUM, "{errors}", "Errors on a network interface by the kernel's error type."),
    "system.linux.network.multicast": _c(SUM, "{packets}", "Multicast packets received."),
    "system.linux.network.collisions": _c(SUM, "{collisions}", "Collisions seen on the medium."),
    "system.linux.network.compressed": _c(SUM, "{packets}", "Compressed packets transferred (CSLIP, PPP)."),
    "system.linux.network.dropped": _c(SUM, "{packets}", "Packets dropped by the kernel for a reason "
                                       "system.network.dropped does not count (no handler, other host)."),
    "system.linux.network.operstate": _c(GAUGE_T, "1", "Operational state of the interface, RFC 2863 "
                                         "(1 up is 6, down 2, unknown 0)."),
    "system.linux.network.carrier": _c(GAUGE_T, "1", "1 while the interface has a carrier (link), 0 without."),
    "system.linux.network.mtu": _c(GAUGE_T, "By", "Maximum transmission unit of the interface."),
    # eBPF: measurements no /proc file gives (names of edge_agent/collectors/ebpf_*.py)
    "system.cpu.scheduler.busy_time": _c(SUM, "s", "Seconds each logical CPU ran a task other than idle, as the "
                                         "scheduler switched them (sched_switch); not split by mode."),
    "system.cpu.context_switches": _c(SUM, "{context_switch}", "Context switches, per logical CPU."),
    "system.cpu.runqueue.latency": _c(HISTOGRAM_T, "s", "Time runnable tasks waited on a run queue before they "
                                      "ran (sched_wakeup to sched_switch)."),
    "system.cpu.softirq.time": _c(SUM, "s", "Time spent in soft interrupt handlers, by vector."),
    "process.cpu.time": _c(SUM, "s", "CPU time of the busiest commands (top N by CPU time since the agent started)."),
    "system.network.tcp.retransmits": _c(SUM, "{segment}", "TCP segments retransmitted."),
    "system.network.tcp.retransmits.failed": _c(SUM, "{segment}", "TCP retransmissions the stack could not send."),
    "system.network.tcp.connections.opened": _c(SUM, "{connection}", "TCP connections established, active "
                                                "(connect) or passive (accept)."),
    "system.network.tcp.connections.closed": _c(SUM, "{connection}", "Established TCP connections that ended."),
    "system.network.tcp.transitions": _c(SUM, "{transition}", "Entries of TCP sockets into each state."),
    "system.network.kernel.dropped": _c(SUM, "{packets}", "Packets the kernel freed as dropped, by the "
                                        "kernel's drop reason (skb:kfree_skb)."),
    # made by the gateway from what batches say about their delivery
    "edge.sampling.interval": _c(GAUGE_T, "ms", "Effective sampling interval: without metric.name the device's "
                                 "base interval, with it the interval of a series the sampler stretched."),
    "edge.agent.lost.batches": _c(SUM, "{batch}", "Batches the agent dropped from its buffer before they were "
                                  "delivered (cumulative since the agent started)."),
    "edge.agent.lost.samples": _c(SUM, "{sample}", "Samples in the batches the agent dropped (cumulative since "
                                  "the agent started)."),
}

TYPE_OF_KIND = {COUNTER: SUM, GAUGE: GAUGE_T, HISTOGRAM: HISTOGRAM_T}

# attribute values of agents before this convention -> hostmetrics'
LEGACY_VALUES = {
    ("system.cpu.time", "state"): {"iowait": "wait", "irq": "interrupt"},
    ("system.memory.usage", "state"): {"buffers": "buffered"},
}
PER_CPU = ("system.cpu.time", "system.cpu.utilization", "system.cpu.context_switches",
           "system.cpu.scheduler.busy_time")


def convention(name: str, kind: int) -> Convention:
    """The metric's convention; an unknown name keeps the wire's kind and gets no description."""
    known = CATALOG.get(name)
    if known is not None and TYPE_OF_KIND.get(kind) in (known.type, GAUGE_T if known.type == UPDOWN else None):
        return known
    return Convention(TYPE_OF_KIND.get(kind, GAUGE_T), "", "")


def unit(name: str, kind: int, device_unit: str) -> str:
    """The convention's unit where it only spells the device's differently (`{packet}` for `{packets}`)."""
    known = convention(name, kind).unit
    if known and known != device_unit and known.startswith("{") and device_unit.startswith("{"):
        return known
    return device_unit


class Presenter:
    """Per birth: each series' exported attributes under the convention, or None to leave it out.

    `cpu="total"` beside per-CPU series of the same metric is left out (the total is a query's
    sum, and counting it again would double the machine); alone (an agent told per_cpu=false) it
    loses the `cpu` attribute, as the machine-wide series it is. Computed once per series.
    """

    def __init__(self, series: dict) -> None:
        self._per_cpu = {s.name for s in series.values() if s.attrs.get("cpu", "total") != "total"}
        self._cache: dict[int, dict | None] = {}

    def attrs(self, series) -> dict | None:
        key = id(series)
        if key not in self._cache:
            self._cache[key] = self._present(series)
        return self._cache[key]

    def _present(self, series) -> dict | None:
        attrs = dict(series.attrs)
        if series.name in PER_CPU and attrs.get("cpu") == "total":
            if series.name in self._per_cpu:
                return None
            del attrs["cpu"]
        for key, value in list(attrs.items()):
            mapped = LEGACY_VALUES.get((series.name, key), {}).get(value)
            if mapped is not None:
                attrs[key] = mapped
        return attrs
