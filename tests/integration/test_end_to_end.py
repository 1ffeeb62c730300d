"""End to end with real processes: mosquitto, `edge-agent run`, `edge-gateway run` -> OTLP/HTTP.

The agent samples this machine's real /proc; the test reads /proc around the same time and checks
that names, attributes, units, timestamps and values arrive as OTLP. Then it publishes malformed
payloads to the data topic and checks they are rejected and counted while good data keeps flowing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from testbed.mosquitto import free_port, start_mosquitto, stop, wait_for
from testbed.otlp_receiver import OtlpReceiver, point_value

BIN = os.path.dirname(sys.executable)
DEVICE = "e2e-device"


def read_proc(name):
    with open("/proc/" + name) as f:
        return f.read()


def proc_stat_total():
    fields = read_proc("stat").split("\n")[0].split()[1:9]
    return dict(zip(("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"), map(int, fields), strict=True))


def proc_lo_rx_bytes():
    for line in read_proc("net/dev").split("\n"):
        if line.strip().startswith("lo:"):
            return int(line.split(":")[1].split()[0])
    raise AssertionError("no lo in /proc/net/dev")


@pytest.fixture
def pipeline(tmp_path):
    broker, port = start_mosquitto(tmp_path)
    receiver = OtlpReceiver()
    metrics_port = free_port()
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    gateway = subprocess.Popen(
        [BIN + "/edge-gateway", "run", "--broker", "mqtt://127.0.0.1:%d" % port, "--metrics-port", str(metrics_port),
         "--log-format", "json"], env=env, stdout=open(tmp_path / "gateway.out", "wb"), stderr=subprocess.STDOUT)
    before = {"stat": proc_stat_total(), "lo_rx": proc_lo_rx_bytes(), "t": time.time()}
    agent = subprocess.Popen(
        [BIN + "/edge-agent", "run", "--broker", "mqtt://127.0.0.1:%d" % port, "--device-id", DEVICE,
         "--interval", "0.5", "--batch", "2", "--state-dir", str(tmp_path / "state")],
        stdout=open(tmp_path / "agent.out", "wb"), stderr=subprocess.STDOUT)
    yield {"port": port, "receiver": receiver, "metrics_port": metrics_port, "before": before, "tmp": tmp_path}
    for proc in (agent, gateway):
        stop(proc, 10)
    receiver.stop()
    stop(broker)
    for name in ("agent.out", "gateway.out"):
        print("----", name, "\n", (tmp_path / name).read_text()[-3000:])


def gateway_metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as response:
        return response.read().decode()


def metric_value(text, name, **labels):
    wanted = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.split("\n"):
        if line.startswith(name + ("{" + wanted + "}" if labels else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_arrive_as_otlp_and_bad_input_is_counted(pipeline):
    receiver = pipeline["receiver"]
    wait_for(lambda: len({p[1] for p in receiver.points(DEVICE)}) >= 10, 30, "metrics from the agent")
    after = {"stat": proc_stat_total(), "lo_rx": proc_lo_rx_bytes(), "t": time.time()}
    before = pipeline["before"]
    points = receiver.points(DEVICE)
    names = {p[1] for p in points}
    for name in ("system.cpu.time", "system.cpu.utilization", "system.memory.usage", "system.memory.limit",
                 "system.cpu.load_average.1m", "system.network.io", "system.network.packets",
                 "system.network.errors", "system.network.dropped", "system.uptime"):
        assert name in names, name

    resource = points[0][0]
    assert resource["service.instance.id"] == resource["device.id"] == DEVICE
    assert resource["host.name"] == read_proc("sys/kernel/hostname").strip()
    assert resource["host.id"] == open("/etc/machine-id").read().strip()
    pretty = [ln for ln in open("/etc/os-release").read().split("\n") if ln.startswith("PRETTY_NAME=")][0]
    assert resource["os.description"].startswith(pretty.split("=", 1)[1].strip('"'))  # the OS, not Python
    assert resource["os.type"] == "linux" and "python" in resource["process.runtime.description"]

    by_key = {}
    for _resource, name, unit, metric, attrs, point in points:
        by_key.setdefault((name, tuple(sorted(attrs.items()))), []).append((unit, metric, point))

    # CPU idle time: a cumulative monotonic Sum in seconds, between /proc read before and after
    # (the eBPF backend cannot tell iowait from idle, so its idle may include iowait)
    # (no cpu="total" beside the per-CPU series: the machine's idle time is their sum)
    assert not any(dict(attrs).get("cpu") == "total" for name, attrs in by_key if name.startswith("system.cpu."))
    idle_points = [by_key[key][-1] for key in by_key if key[0] == "system.cpu.time" and ("state", "idle") in key[1]]
    assert len(idle_points) == os.sysconf("SC_NPROCESSORS_ONLN")
    unit, metric, point = idle_points[0]
    assert unit == "s" and metric.description == "Total seconds each logical CPU spent on each mode."
    assert metric.sum.is_monotonic and metric.sum.aggregation_temporality == 2  # CUMULATIVE
    idle = sum(point_value(p) for _, _, p in idle_points)
    low, high = before["stat"]["idle"], after["stat"]["idle"] + after["stat"]["iowait"]
    assert low / 100 - 0.05 <= idle <= high / 100 + 0.05, (idle, low, high)
    btime = int([ln for ln in read_proc("stat").split("\n") if ln.startswith("btime")][0].split()[1])
    assert point.start_time_unix_nano == btime * 10**9
    assert before["t"] - 5 <= point.time_unix_nano / 1e9 <= after["t"] + 1

    # memory limit is exact: MemTotal kB * 1024, a Gauge in bytes
    mem_total = int([ln for ln in read_proc("meminfo").split("\n") if ln.startswith("MemTotal:")][0].split()[1])
    unit, metric, point = by_key[("system.memory.limit", ())][-1]
    assert unit == "By" and metric.WhichOneof("data") == "sum" and not metric.sum.is_monotonic  # hostmetrics' type
    assert point_value(point) == mem_total * 1024

    # loopback receive bytes: the counter lies between the two readings
    unit, metric, point = by_key[("system.network.io", (("device", "lo"), ("direction", "receive")))][-1]
    assert unit == "By" and before["lo_rx"] <= point_value(point) <= after["lo_rx"]
    util = [point_value(p) for key in by_key if key[0] == "system.cpu.utilization" for _, _, p in by_key[key]]
    assert util and all(0.0 <= u <= 1.0 for u in util)

    # hostile payloads on the device's data topic: rejected and counted, good data keeps flowing
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-attacker")
    client.connect("127.0.0.1", pipeline["port"])
    client.loop_start()
    topic = "edge/%s/data" % DEVICE
    for payload in (b"\xc1garbage", b"\x98\x01", b"\x93\x01\x02\x03", b"x" * 300000):
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
    requests_before = len(receiver.requests)

    def rejected():
        text = gateway_metrics(pipeline["metrics_port"])
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.split("\n")
                    if line.startswith("edge_gateway_batches_rejected_total{"))
        return text if total >= 4 else None

    text = wait_for(rejected, 15, "the gateway to count 4 rejections")
    assert metric_value(text, "edge_gateway_batches_rejected_total", reason="not_msgpack") >= 2
    wait_for(lambda: len(receiver.requests) > requests_before + 1, 15, "good data after the bad")
    assert metric_value(gateway_metrics(pipeline["metrics_port"]), "edge_gateway_samples_exported_total") > 50
