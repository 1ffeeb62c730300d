"""`edge-gateway run` as a real process: JSON logs, OTLP JSON lines or OTLP/HTTP, /healthz, /metrics, SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from gateway.cli import build_parser
from testbed.mosquitto import free_port
from tests.support.gateway import send_device_data
from tests.support.otlp_http import Receiver


def gateway_process(tmp_path, mosquitto_broker, *extra, env=None):
    metrics_port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    clean.update(env or {})
    stderr = open(tmp_path / "gateway.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--broker", "mqtt://127.0.0.1:%d" % mosquitto_broker,
         "--metrics-port", str(metrics_port), "--log-format", "json", "--client-id", "gw-cli", *extra],
        stdout=subprocess.DEVNULL, stderr=stderr, env=clean)
    stderr.close()
    return proc, metrics_port


def get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=2) as answer:
            return answer.status, answer.read().decode()
    except OSError:
        return None, ""


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def log_events(tmp_path):
    lines = (tmp_path / "gateway.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


def terminate(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_with_file_output_json_logs_and_status_endpoints(tmp_path, mosquitto_broker):
    out = tmp_path / "otlp.jsonl"
    proc, metrics_port = gateway_process(tmp_path, mosquitto_broker, "--output", str(out))
    try:
        assert wait_for(lambda: get(metrics_port, "/healthz")[0] == 200)
        assert wait_for(lambda: any(e.get("event") == "mqtt_connected" for e in log_events(tmp_path)))
        send_device_data(mosquitto_broker)
        assert wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 1)
        assert wait_for(lambda: "edge_gateway_samples_exported_total 30.0" in get(metrics_port, "/metrics")[1])
        status, health = get(metrics_port, "/healthz")
        assert status == 200 and json.loads(health)["mqtt_connected"] is True
    finally:
        assert terminate(proc) == 0
    events = log_events(tmp_path)
    batches = [e for e in events if e.get("event") == "batch"]
    assert len(batches) == 2
    assert {k: batches[0][k] for k in ("device", "samples")} == {"device": "dev-1", "samples": 15}
    assert batches[0]["bytes"] > 0 and 0 <= batches[0]["lag_ms"] < 60_000
    rejected = [e for e in events if e.get("event") == "rejected"]
    assert rejected and rejected[0]["device"] == "dev-1" and rejected[0]["reason"] == "not_msgpack"
    assert events[-1]["event"] == "stopping" or any(e.get("event") == "stopping" for e in events)
    points = 0
    records = []
    for line in out.read_text().splitlines():
        if "resourceLogs" in line:  # device events (OTLP logs) share the file, one request a line
            request = json_format.Parse(line, ExportLogsServiceRequest())
            records += [r for rl in request.resource_logs for r in rl.scope_logs[0].log_records]
            continue
        request = json_format.Parse(line, ExportMetricsServiceRequest())
        points += sum(len(m.sum.data_points) + len(m.gauge.data_points) + len(m.histogram.data_points)
                      for rm in request.resource_metrics for m in rm.scope_metrics[0].metrics
                      if not m.name.startswith("edge."))  # the gateway's delivery metrics are not device samples
    assert points == 30
    assert "device.birth" in [r.event_name for r in records]


def test_run_exports_over_otlp_http_from_the_environment(tmp_path, mosquitto_broker):
    receiver = Receiver()
    proc, metrics_port = gateway_process(tmp_path, mosquitto_broker, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=t1"})
    try:
        assert wait_for(lambda: any(e.get("event") == "mqtt_connected" for e in log_events(tmp_path)))
        send_device_data(mosquitto_broker, n=1)
        assert wait_for(lambda: len(receiver.requests) >= 1)
        path, headers, request = receiver.requests[0]
        assert path == "/v1/metrics" and headers["x-tenant"] == "t1"
        assert request.resource_metrics[0].scope_metrics[0].scope.name == "edge-telemetry"
    finally:
        assert terminate(proc) == 0
        receiver.close()
    started = [e for e in log_events(tmp_path) if e.get("event") == "started"][0]
    assert started["exporter"] == "otlp http/protobuf %s/v1/metrics" % receiver.url


def test_bad_otel_variable_is_one_clear_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--metrics-port", "0"], capture_output=True, text=True,
        env={**os.environ, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "edge-gateway: OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' is not supported (use grpc or http/protobuf)"]


def test_parser_has_room_for_more_subcommands():
    parser = build_parser()
    args = parser.parse_args(["run", "--broker", "mqtts://b:8883", "--share-group", "g"])
    assert args.command == "run" and args.share_group == "g" and args.metrics_port == 9464
    with pytest.raises(SystemExit):
        parser.parse_args([])
