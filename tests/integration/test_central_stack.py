"""The central stack for real: agent -> mosquitto -> gateway -> Debian's Prometheus (remote write).

Two agents on this machine: one on /proc (its values are checked against /proc read by the test:
CPU seconds per CPU and state, bytes per interface, memory), one on the default backends (eBPF when
root) for the eBPF panels. Prometheus also scrapes the gateway's /metrics. Then: no double counting,
every query of the generated dashboard parses and returns data, `promtool check metrics` on the
gateway's /metrics, `promtool check rules` and `promtool test rules` on deploy/prometheus/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from deploy.grafana import dashboard  # a namespace package: the checkout is on sys.path
from testbed.mosquitto import free_port, start_mosquitto, stop, wait_for
from tests.support import ROOT
from tests.support.prometheus import PROMTOOL, start_prometheus

REPO = Path(ROOT)
BIN = os.path.dirname(sys.executable)
PROCFS, AUTO = "stack-procfs", "stack-auto"
STATES = ("user", "nice", "system", "idle", "wait", "interrupt", "softirq", "steal")  # /proc/stat's columns


def proc_cpus() -> dict[str, list[int]]:
    rows = {}
    for line in Path("/proc/stat").read_text().split("\n"):
        if re.match(r"cpu\d", line):
            fields = line.split()
            rows[fields[0]] = [int(v) for v in fields[1:9]]
    return rows


def proc_net() -> dict[str, tuple[int, int]]:
    out = {}
    for line in Path("/proc/net/dev").read_text().split("\n")[2:]:
        if ":" in line:
            name, rest = line.split(":", 1)
            cols = rest.split()
            out[name.strip()] = (int(cols[0]), int(cols[8]))
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    broker, port = start_mosquitto(tmp)
    metrics_port = free_port()
    prom = start_prometheus(tmp, scrape=["'127.0.0.1:%d'" % metrics_port])
    gateway = subprocess.Popen(
        [BIN + "/edge-gateway", "run", "--broker", "mqtt://127.0.0.1:%d" % port, "--metrics-port", str(metrics_port),
         "--prometheus-remote-write", prom.write_url, "--log-format", "json"],
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        stdout=open(tmp / "gateway.out", "wb"), stderr=subprocess.STDOUT)
    (tmp / "procfs.json").write_text(json.dumps({"collectors": {"cpu": {"backend": "procfs"},
                                                                "network": {"backend": "procfs"}}}))
    agents = []
    for device, extra in ((PROCFS, ["--config", str(tmp / "procfs.json")]), (AUTO, [])):
        agents.append(subprocess.Popen(
            [BIN + "/edge-agent", "run", "--broker", "mqtt://127.0.0.1:%d" % port, "--device-id", device,
             "--interval", "0.5", "--batch", "1", "--state-dir", str(tmp / device)] + extra,
            stdout=open(tmp / (device + ".out"), "wb"), stderr=subprocess.STDOUT))
    yield {"prom": prom, "metrics_port": metrics_port, "tmp": tmp}
    for proc in agents + [gateway]:
        stop(proc, 10)
    prom.stop()
    stop(broker)
    for name in ("gateway.out", PROCFS + ".out", AUTO + ".out"):
        print("----", name, "\n", (tmp / name).read_text()[-2000:])


def newest(prom, selector: str) -> float:
    """The oldest of the newest sample times of the selected series (0 when there are none)."""
    return prom.value("min(timestamp(%s))" % selector) or 0.0


def test_prometheus_holds_what_proc_says(stack):
    prom = stack["prom"]
    sel = 'system_cpu_time_seconds_total{instance="%s"}' % PROCFS
    wait_for(lambda: newest(prom, sel), 60, "the /proc agent's CPU time in Prometheus")
    cpus, net = proc_cpus(), proc_net()
    t_before = time.time()
    wait_for(lambda: newest(prom, sel) > t_before and newest(prom, 'system_network_io_bytes_total{instance="%s"}'
                                                          % PROCFS) > t_before, 30, "samples newer than the reading")
    at = time.time()
    cpus_after, net_after = proc_cpus(), proc_net()
    series = prom.query(sel, at)
    assert len(series) == len(cpus) * 8, "one series per CPU and state, no cpu=total"
    for s in series:
        cpu, state = s["metric"]["cpu"], s["metric"]["state"]
        i = STATES.index(state)
        value = float(s["value"][1])
        # USER_HZ ticks as seconds; idle/iowait may step back a little on tickless kernels (held by the agent)
        assert cpus[cpu][i] / 100 - 0.05 <= value <= max(cpus_after[cpu][i], cpus[cpu][i]) / 100 + 0.001, (cpu, state)
    # no double counting: the machine's CPU seconds per second are its number of CPUs
    wait_for(lambda: (prom.value("min(count_over_time(%s[12s]))" % sel) or 0) >= 20, 60, "12 s of samples")
    later = time.time()
    total = 'sum(system_cpu_time_seconds_total{instance="%s"})' % PROCFS
    stamp = "max(timestamp(%s))" % sel
    busy = ((prom.value(total, later) - prom.value(total, later - 10))
            / (prom.value(stamp, later) - prom.value(stamp, later - 10)))
    assert abs(busy - len(cpus)) < 0.1 * len(cpus), busy
    assert prom.query('system_cpu_time_seconds_total{cpu="total"}', at) == []
    by_state = prom.query('sum by (state) (system_cpu_utilization_ratio{instance="%s"})' % PROCFS, at)
    assert abs(sum(float(r["value"][1]) for r in by_state) - len(cpus)) < 0.01 * len(cpus) + 0.01
    for s in prom.query('system_network_io_bytes_total{instance="%s"}' % PROCFS, at):
        device, direction = s["metric"]["device"], s["metric"]["direction"]
        column = 0 if direction == "receive" else 1
        assert net[device][column] <= float(s["value"][1]) <= net_after[device][column], (device, direction)
    assert {s["metric"]["device"] for s in prom.query('system_network_io_bytes_total{instance="%s"}' % PROCFS, at)} == set(net)
    mem_total = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    assert prom.value('system_memory_limit_bytes{instance="%s"}' % PROCFS, at) == mem_total
    partition = prom.value('sum(system_memory_usage_bytes{instance="%s",state=~"used|free|buffered|cached"})'
                           % PROCFS, at)
    assert partition == mem_total
    info = prom.query('target_info{instance="%s"}' % PROCFS, at)[0]["metric"]
    assert info["job"] == "edge-agent" and info["host_id"] == Path("/etc/machine-id").read_text().strip()
    assert "Linux" in info["os_description"] and info["device_id"] == PROCFS


def grafana_to_promql(expr: str) -> str:
    return expr.replace('=~"$device"', '=~".+"').replace("$__rate_interval", "1m")


def test_every_dashboard_query_parses_and_returns_data(stack):
    prom = stack["prom"]
    model = dashboard.build()
    committed = json.loads((REPO / "deploy/grafana/dashboards/edge-fleet.json").read_text())
    assert committed == model, "deploy/grafana/dashboards/edge-fleet.json is stale: run deploy/grafana/dashboard.py"
    queries = dashboard.queries(model)
    assert len(queries) >= 20
    ebpf = os.geteuid() == 0  # the eBPF panels need the eBPF backend, which needs root (CI runs as root)
    missing = {}

    def all_answer():
        missing.clear()
        for expr in queries:
            match = re.fullmatch(r"label_values\((.*), (\w+)\)", expr)
            if match:
                found = prom.api("series", **{"match[]": match.group(1)})
                ok = any(match.group(2) in s for s in found)
            else:
                ok = bool(prom.query(grafana_to_promql(expr)))  # raises PromQLError when it does not parse
            if not ok and (ebpf or "runqueue" not in expr and "tcp_" not in expr and "kernel_dropped" not in expr):
                missing[expr] = True
        return not missing

    try:
        wait_for(all_answer, 90, "data for every dashboard query", poll=2)
    except AssertionError:
        raise AssertionError("no data for: %s" % sorted(missing)) from None


def test_promtool_checks_the_gateways_metrics_and_the_alert_rules(stack):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % stack["metrics_port"], timeout=5) as answer:
        text = answer.read()
    for name in (b"process_cpu_seconds_total", b"edge_gateway_build_info{", b"# HELP edge_gateway_device_online",
                 b'edge_gateway_device_online{device="%s"} 1.0' % PROCFS.encode()):
        assert name in text, name
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr
    rules = REPO / "deploy/prometheus"
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "rules_test.yml"],
                 ["check", "config", "prometheus.yml"]):
        done = subprocess.run([PROMTOOL] + args, cwd=rules, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
