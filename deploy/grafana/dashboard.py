"""The fleet dashboard as code (grafana-foundation-sdk), written to deploy/grafana/dashboards/.

    .venv/bin/python deploy/grafana/dashboard.py     # regenerate edge-fleet.json after a change here

Rows: the fleet (devices online, last seen, lost and late samples, sampling intervals, export
lag), one device's CPU, memory and network (the `device` variable: Prometheus `instance`), and its
eBPF measurements (run-queue latency heatmap, TCP retransmits, kernel drops). Every query uses the
names the gateway writes (docs/metrics.md); tests/integration/test_central_stack.py runs each against a real
Prometheus fed by a real agent and gateway, and checks the committed JSON is this file's output.
"""

from __future__ import annotations

import json
import os
import sys

from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "edge-fleet.json")
DEV = 'instance=~"$device"'
RATE = "$__rate_interval"


def query(expr: str, legend: str = "", ref: str = "A", fmt: PromQueryFormat | None = None, instant: bool = False):
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    if fmt is not None:
        q = q.format(fmt)
    return q.instant() if instant else q


def series(title: str, unit: str, *queries, stacked: bool = False, description: str = "", span: int = 12):
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).span(span).height(8)
    if description:
        panel = panel.description(description)
    if stacked:
        from grafana_foundation_sdk.builders.common import StackingConfig
        from grafana_foundation_sdk.models.common import StackingMode

        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(40)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def build() -> dict:
    board = (
        dashboard.Dashboard("Edge telemetry: fleet")
        .uid("edge-telemetry-fleet")
        .description("Devices running edge-agent, through edge-gateway into Prometheus (deploy/README.md)")
        .tags(["edge-telemetry", "hostmetrics"])
        .time("now-1h", "now")
        .refresh("30s")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("device").label("Device").datasource(DATASOURCE)
            .query('label_values(target_info{job="edge-agent"}, instance)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(False).include_all(False)
        )
        .with_row(dashboard.Row("Fleet"))
        .with_panel(
            stat.Panel().title("Devices online").datasource(DATASOURCE).span(4).height(4)
            .description("Devices whose retained state is online (the broker's last will says offline)")
            .with_target(query("count(max by (device) (edge_gateway_device_online) == 1) or vector(0)", instant=True))
        )
        .with_panel(
            stat.Panel().title("Devices reporting (5 min)").datasource(DATASOURCE).span(4).height(4)
            .description("Devices with data in Prometheus over the last five minutes")
            .with_target(query('count(count by (instance) (count_over_time(target_info{job="edge-agent"}[5m])))',
                               instant=True))
        )
        .with_panel(
            stat.Panel().title("Samples lost by agents (1 h)").datasource(DATASOURCE).span(4).height(4)
            .description("Samples agents dropped from their buffers before delivery (edge.agent.lost.samples)")
            .with_target(query("sum(increase(edge_agent_lost_samples_total[1h]))", instant=True))
        )
        .with_panel(
            table.Panel().title("Last seen (seconds ago)").datasource(DATASOURCE).unit("s").span(8).height(8)
            .with_target(query("time() - max by (device) (edge_gateway_device_last_seen_timestamp_seconds)",
                               fmt=PromQueryFormat.TABLE, instant=True))
        )
        .with_panel(series(
            "Lost and late samples", "short",
            query("sum by (instance) (increase(edge_agent_lost_samples_total[%s]))" % RATE, "lost {{instance}}"),
            query("sum by (device) (increase(edge_gateway_device_late_samples_total[%s]))" % RATE,
                  "late {{device}}", "B"),
            description="lost: dropped by the agent; late: exported more than --late-after after measured",
            span=16))
        .with_panel(series(
            "Sampling interval (longest per device)", "ms",
            query("max by (instance) (edge_sampling_interval_milliseconds)", "{{instance}}"), span=12))
        .with_panel(series(
            "Export lag p99", "s",
            query("histogram_quantile(0.99, sum by (le) (rate(edge_gateway_lag_seconds_bucket[%s])))" % RATE, "p99"),
            span=12))
        .with_row(dashboard.Row("Device $device"))
        .with_panel(series(
            "CPU time by state (all CPUs)", "s",
            query("sum by (state) (rate(system_cpu_time_seconds_total{%s}[%s]))" % (DEV, RATE), "{{state}}"),
            stacked=True, description="CPU seconds per second: a 2-CPU device adds up to 2"))
        .with_panel(series(
            "CPU busy per CPU", "percentunit",
            query('1 - avg by (cpu) (system_cpu_utilization_ratio{%s,state="idle"})' % DEV, "{{cpu}}")))
        .with_panel(series(
            "Memory", "bytes",
            query('sum by (state) (system_memory_usage_bytes{%s,state=~"used|buffered|cached|free"})' % DEV,
                  "{{state}}"),
            stacked=True))
        .with_panel(series(
            "Load average", "short",
            query("system_cpu_load_average_1m{%s}" % DEV, "1m"),
            query("system_cpu_load_average_5m{%s}" % DEV, "5m", "B"),
            query("system_cpu_load_average_15m{%s}" % DEV, "15m", "C")))
        .with_panel(series(
            "Network traffic", "Bps",
            query("sum by (device, direction) (rate(system_network_io_bytes_total{%s}[%s]))" % (DEV, RATE),
                  "{{device}} {{direction}}")))
        .with_panel(series(
            "Network errors and drops", "pps",
            query("sum by (device, direction) (rate(system_network_errors_total{%s}[%s]))" % (DEV, RATE),
                  "errors {{device}} {{direction}}"),
            query("sum by (device, direction) (rate(system_network_dropped_total{%s}[%s]))" % (DEV, RATE),
                  "dropped {{device}} {{direction}}", "B")))
        .with_row(dashboard.Row("eBPF on $device"))
        .with_panel(
            heatmap.Panel().title("Run-queue latency").datasource(DATASOURCE).span(12).height(8).calculate(False)
            .with_target(query("sum by (le) (rate(system_cpu_runqueue_latency_seconds_bucket{%s}[%s]))" % (DEV, RATE),
                               "{{le}}", fmt=PromQueryFormat.HEATMAP))
        )
        .with_panel(series(
            "TCP retransmits", "short",
            query("rate(system_network_tcp_retransmits_total{%s}[%s])" % (DEV, RATE), "retransmits/s"), span=6))
        .with_panel(series(
            "Kernel packet drops by reason", "pps",
            query("sum by (reason) (rate(system_network_kernel_dropped_total{%s}[%s]))" % (DEV, RATE), "{{reason}}"),
            span=6))
    )
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def queries(model: dict) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    out = [t["expr"] for p in model.get("panels", []) for t in p.get("targets", []) if "expr" in t]
    for variable in model.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            out.append(variable["query"] if isinstance(variable["query"], str) else variable["query"]["query"])
    return out


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    with open(OUTPUT, "w") as f:
        f.write(render())
    print("wrote %s (%d queries)" % (OUTPUT, len(queries(build()))), file=sys.stderr)
