"""A real OTLP peer written by others: the `rotel` collector (PyPI wheel) receives the gateway's OTLP
over gRPC and over HTTP, metrics and device-event logs, and re-exports them (OTLP/HTTP) to a receiver
here; what comes out is what the gateway sent."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub

from gateway.convert.events import DeviceEvents
from gateway.convert.otlp import to_request
from gateway.decode.resolve import Dictionaries
from gateway.export.exporter import GrpcExporter, HttpExporter, OtlpConfig, RetryPolicy, send_with_retry
from testbed.mosquitto import free_port, stop, wait_for
from testbed.otlp_receiver import OtlpReceiver
from tests.support.gateway import BOOT_TIME_MS, batch, birth, make_table, steady

rotel = pytest.importorskip("rotel", reason="rotel is a test dependency (pyproject [test])")
ROTEL = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")


def points(requests):
    out = set()
    for request in requests:
        for rm in request.resource_metrics:
            instance = {a.key: a.value.string_value for a in rm.resource.attributes}["service.instance.id"]
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    data = getattr(m, m.WhichOneof("data"))
                    for p in data.data_points:
                        value = p.sum if m.WhichOneof("data") == "histogram" else getattr(p, p.WhichOneof("value"))
                        out.add((instance, m.name, m.unit, m.description, p.time_unix_nano, p.start_time_unix_nano,
                                 tuple(sorted((a.key, str(a.value)) for a in p.attributes)), value))
    return out


@pytest.fixture
def collector(tmp_path):
    receiver = OtlpReceiver()
    grpc_port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [ROTEL, "start", "--otlp-grpc-endpoint", "127.0.0.1:%d" % grpc_port,
         "--otlp-http-endpoint", "127.0.0.1:%d" % http_port, "--exporter", "otlp",
         "--otlp-exporter-endpoint", receiver.url, "--otlp-exporter-protocol", "http", "--batch-timeout", "100ms"],
        stdout=open(tmp_path / "rotel.log", "wb"), stderr=subprocess.STDOUT)
    for port in (grpc_port, http_port):
        wait_for(lambda p=port: _open(p), 20, "rotel listening on %d" % port)
    yield {"receiver": receiver, "grpc": grpc_port, "http": http_port}
    stop(proc)
    receiver.stop()
    print((tmp_path / "rotel.log").read_text()[-2000:])


def _open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_rotel_receives_and_reexports_our_metrics_and_logs(collector, protocol):
    table, series = make_table()
    dicts = Dictionaries()
    dicts.add_birth("dev-1", birth(table))
    t0 = BOOT_TIME_MS + 60_000
    request = to_request([dicts.resolve("dev-1", batch(steady(series, t0=t0), ext={"lost": [1, 9]}))])
    if protocol == "grpc":
        config = OtlpConfig(protocol="grpc", endpoint="http://127.0.0.1:%d" % collector["grpc"], timeout_s=5)
        metrics, logs = GrpcExporter(config), GrpcExporter(config, LogsServiceStub)
    else:
        base = "http://127.0.0.1:%d" % collector["http"]
        metrics = HttpExporter(OtlpConfig(endpoint=base + "/v1/metrics", timeout_s=5))
        logs = HttpExporter(OtlpConfig(endpoint=base + "/v1/logs", timeout_s=5))
    stopping = threading.Event()
    assert send_with_retry(metrics, request, RetryPolicy(initial_s=0.1, max_elapsed_s=20), stopping).ok
    events = DeviceEvents(logs, dicts.latest)
    events.birth("dev-1", dicts.latest("dev-1"))
    events.lost("dev-1", 1, 9, t0 + 2000)
    assert send_with_retry(logs, events.request(list(events._queue)), RetryPolicy(initial_s=0.1), stopping).ok
    receiver = collector["receiver"]
    sent = points([request])
    wait_for(lambda: points(receiver.requests) >= sent, 20, "rotel to re-export every point")
    assert points(receiver.requests) == sent
    wait_for(lambda: receiver.logs, 20, "rotel to re-export the logs")
    records = [r for req in receiver.logs for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    assert sorted(r.event_name for r in records) == ["device.birth", "device.data.lost"]
    resource = {a.key: a.value.string_value for a in receiver.logs[0].resource_logs[0].resource.attributes}
    assert resource["service.instance.id"] == "dev-1" and resource["service.name"] == "edge-agent"
    lost = [r for r in records if r.event_name == "device.data.lost"][0]
    assert lost.severity_number == 13 and lost.time_unix_nano == (t0 + 2000) * 1_000_000
    metrics.close()
    logs.close()
