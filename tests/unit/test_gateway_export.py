"""Exporters against real receivers: an HTTP server and a grpcio server parsing OTLP protobuf."""

import io
import json
import threading
import time
from concurrent import futures

import grpc
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as svc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from gateway.convert.otlp import to_request
from gateway.decode.resolve import Dictionaries
from gateway.export.exporter import (
    GRPC,
    HTTP,
    FileExporter,
    GrpcExporter,
    HttpExporter,
    OtlpConfig,
    RetryPolicy,
    config_from_env,
    make_exporter,
    parse_headers,
    send_with_retry,
)
from gateway.export.pipeline import DROPPED, EXPORTED, ExportPipeline, Item
from gateway.ops.metrics import GatewayMetrics
from tests.support.gateway import FAST, batch, birth, make_table, steady


def resolved_batches(n=1, device="dev-1"):
    table, series = make_table()
    dicts = Dictionaries()
    dicts.add_birth(device, birth(table, device))
    return [dicts.resolve(device, batch(steady(series), device=device, seq=i)) for i in range(n)]


def a_request():
    return to_request(resolved_batches())


def http(receiver, **kw):
    return HttpExporter(OtlpConfig(endpoint=receiver.url + "/v1/metrics", timeout_s=5, **kw))


# ---------------------------------------------------------------- environment


def test_no_otlp_variables_means_file_exporter():
    assert config_from_env({}) is None
    assert config_from_env({"OTEL_SERVICE_NAME": "x"}) is None


def test_generic_http_endpoint_gets_the_signal_path():
    config = config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert config.protocol == HTTP and config.endpoint == "http://collector:4318/v1/metrics"
    assert config.timeout_s == 10 and config.compression == "none" and config.headers == {}


def test_signal_specific_variables_win_and_the_endpoint_is_used_as_is():
    config = config_from_env({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://metrics.example/custom/path",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=generic",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "Api-Key=a%20b,tenant=t1",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "1500",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    })
    assert config.endpoint == "https://metrics.example/custom/path"
    assert config.headers == {"api-key": "a b", "tenant": "t1"}
    assert config.timeout_s == 1.5 and config.compression == "gzip"


def test_grpc_protocol_and_defaults():
    config = config_from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert config.protocol == GRPC and config.endpoint == "http://localhost:4317"
    config = config_from_env({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
                              "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                              "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert config.protocol == GRPC and config.endpoint == "http://c:4317"
    assert isinstance(make_exporter(config), GrpcExporter)


@pytest.mark.parametrize("env, words", [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "TIMEOUT"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "COMPRESSION"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "HEADERS"),
])
def test_bad_variables_name_themselves(env, words):
    with pytest.raises(ValueError, match=words):
        config_from_env(env)


def test_header_parsing():
    assert parse_headers(" a=1 , b = x%3Dy ,") == {"a": "1", "b": "x=y"}


# ---------------------------------------------------------------- OTLP/HTTP


def test_http_export_posts_protobuf_with_headers_and_gzip(receiver):
    request = a_request()
    outcome = http(receiver, headers={"authorization": "Bearer t"}, compression="gzip").send(request)
    assert outcome.ok
    path, headers, got = receiver.requests[0]
    assert path == "/v1/metrics"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["Content-Encoding"] == "gzip" and headers["authorization"] == "Bearer t"
    assert got == request


def test_http_retries_503_then_succeeds(receiver):
    receiver.script = [(503, {}), (503, {})]
    retries = []
    outcome = send_with_retry(http(receiver), a_request(), FAST, threading.Event(),
                              lambda o, d: retries.append(o.reason))
    assert outcome.ok and len(receiver.requests) == 3 and retries == ["http_503", "http_503"]


def test_http_does_not_retry_400(receiver):
    receiver.script = [(400, {})]
    outcome = send_with_retry(http(receiver), a_request(), FAST, threading.Event())
    assert not outcome.ok and not outcome.retryable and outcome.reason == "http_400"
    assert len(receiver.requests) == 1


def test_http_honours_retry_after(receiver):
    receiver.script = [(429, {"Retry-After": "1"})]
    delays = []
    started = time.monotonic()
    outcome = send_with_retry(http(receiver), a_request(), FAST, threading.Event(), lambda o, d: delays.append(d))
    assert outcome.ok and delays == [1.0]
    assert time.monotonic() - started >= 0.95


def test_http_connection_refused_is_retryable_and_gives_up_after_max_elapsed():
    exporter = HttpExporter(OtlpConfig(endpoint="http://127.0.0.1:1/v1/metrics", timeout_s=1))
    outcome = exporter.send(a_request())
    assert not outcome.ok and outcome.retryable and outcome.reason == "refused"  # nothing was sent: not uncertain
    policy = RetryPolicy(initial_s=0.05, max_s=0.05, max_elapsed_s=0.3)
    outcome = send_with_retry(exporter, a_request(), policy, threading.Event())
    assert not outcome.ok and outcome.reason == "retries_exhausted"


def test_http_timeout_is_retryable(receiver):
    receiver.delay = 1.0
    outcome = HttpExporter(OtlpConfig(endpoint=receiver.url + "/v1/metrics", timeout_s=0.2)).send(a_request())
    assert not outcome.ok and outcome.retryable and outcome.reason == "timeout"


# ---------------------------------------------------------------- OTLP/gRPC


class Servicer(svc.MetricsServiceServicer):
    def __init__(self, failures=()):
        self.failures = list(failures)
        self.requests = []
        self.metadata = []

    def Export(self, request, context):  # noqa: N802
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        if self.failures:
            context.abort(self.failures.pop(0), "scripted failure")
        return ExportMetricsServiceResponse()


@pytest.fixture
def grpc_receiver():
    servicer = Servicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    svc.add_MetricsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, "http://127.0.0.1:%d" % port
    server.stop(None)


def test_grpc_export_to_a_real_server(grpc_receiver):
    servicer, endpoint = grpc_receiver
    config = config_from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                              "OTEL_EXPORTER_OTLP_HEADERS": "tenant=t1", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"})
    exporter = make_exporter(config)
    request = a_request()
    try:
        assert exporter.send(request).ok
    finally:
        exporter.close()
    assert servicer.requests == [request]
    assert servicer.metadata[0]["tenant"] == "t1"


def test_grpc_retries_unavailable_but_not_invalid_argument(grpc_receiver):
    servicer, endpoint = grpc_receiver
    exporter = GrpcExporter(OtlpConfig(protocol=GRPC, endpoint=endpoint, timeout_s=5))
    try:
        servicer.failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert send_with_retry(exporter, a_request(), FAST, threading.Event()).ok
        assert len(servicer.requests) == 3
        servicer.failures = [grpc.StatusCode.INVALID_ARGUMENT]
        outcome = send_with_retry(exporter, a_request(), FAST, threading.Event())
        assert not outcome.ok and not outcome.retryable and outcome.reason == "grpc_invalid_argument"
        assert len(servicer.requests) == 4
    finally:
        exporter.close()


# ---------------------------------------------------------------- file exporter


def test_file_exporter_writes_otlp_json_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    exporter = FileExporter(str(path))
    request = a_request()
    assert exporter.send(request).ok and exporter.send(request).ok
    exporter.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    parsed = json_format.Parse(lines[0], ExportMetricsServiceRequest())
    assert parsed == request
    assert json.loads(lines[1])["resourceMetrics"][0]["scopeMetrics"][0]["scope"]["name"] == "edge-telemetry"


def test_file_exporter_to_a_stream():
    stream = io.StringIO()
    FileExporter(stream=stream).send(a_request())
    assert stream.getvalue().count("\n") == 1


# ---------------------------------------------------------------- the pipeline


def collect_fates():
    fates = []
    done = threading.Event()

    def make(n):
        def fate(f):
            fates.append(f)
            if len(fates) == n:
                done.set()
        return fate
    return fates, done, make


def test_pipeline_batches_several_device_batches_into_one_request(receiver):
    metrics = GatewayMetrics()
    pipeline = ExportPipeline(http(receiver), metrics, queue_size=8, max_batches=8, retry=FAST)
    fates, done, make = collect_fates()
    items = resolved_batches(5)
    for item in items:
        assert pipeline.submit(Item(item, make(5)))
    pipeline.start()
    assert done.wait(5)
    pipeline.stop()
    assert fates == [EXPORTED] * 5
    assert len(receiver.requests) == 1
    points = sum(len(m.sum.data_points) + len(m.gauge.data_points) + len(m.histogram.data_points)
                 for m in receiver.requests[0][2].resource_metrics[0].scope_metrics[0].metrics
                 if not m.name.startswith("edge."))  # the gateway's own delivery metrics are not device samples
    assert points == 75 == metrics.samples.value()
    assert metrics.export_requests.value() == 1


def test_pipeline_drops_and_counts_non_retryable_failures(receiver):
    receiver.script = [(503, {}), (400, {})]
    metrics = GatewayMetrics()
    pipeline = ExportPipeline(http(receiver), metrics, retry=FAST).start()
    fates, done, make = collect_fates()
    pipeline.submit(Item(resolved_batches(1)[0], make(1)))
    assert done.wait(5)
    pipeline.stop()
    assert fates == [DROPPED]
    assert metrics.retries.value() == 1
    assert metrics.export_failures.value(reason="http_503") == 1
    assert metrics.export_failures.value(reason="http_400") == 1
    assert metrics.dropped.value() == 15 and metrics.samples.value() == 0


def test_queue_is_bounded_and_applies_backpressure(receiver):
    receiver.script = [(503, {})] * 1000  # the receiver is down
    metrics = GatewayMetrics()
    pipeline = ExportPipeline(http(receiver), metrics, queue_size=2, max_batches=1, retry=FAST).start()
    fates = []
    batches = resolved_batches(6)
    accepted = [pipeline.submit(Item(b, fates.append), timeout=0.1) for b in batches]
    # one batch is being retried by the worker, two wait in the queue, the rest are refused
    assert accepted == [True, True, True, False, False, False]
    assert pipeline.depth() == 2
    assert metrics.queue_capacity.value() == 2
    receiver.script = []  # recovery
    deadline = time.monotonic() + 5
    while len(fates) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    pipeline.stop()
    assert fates == [EXPORTED] * 3


def test_stopping_mid_retry_settles_nothing(receiver):
    receiver.script = [(503, {})] * 1000
    pipeline = ExportPipeline(http(receiver), GatewayMetrics(), retry=FAST).start()
    fates = []
    pipeline.submit(Item(resolved_batches(1)[0], fates.append))
    time.sleep(0.2)
    pipeline.stop(timeout=0.2)
    assert fates == []  # not acked: the broker will redeliver it


def test_file_exporter_writes_otlp_json_as_the_spec_encodes_it():
    """OTLP/JSON: enums as integers (not their names), lowerCamelCase keys, 64-bit integers as strings."""
    stream = io.StringIO()
    FileExporter(stream=stream).send(a_request())
    line = stream.getvalue()
    assert "AGGREGATION_TEMPORALITY" not in line and '"aggregationTemporality":2' in line
    metric = json.loads(line)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]
    point = metric["sum"]["dataPoints"][0]
    assert metric["sum"]["isMonotonic"] is True and isinstance(point["timeUnixNano"], str)
    assert json_format.Parse(line, ExportMetricsServiceRequest()) == a_request()


def test_logs_signal_reads_its_own_variables():
    config = config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, signal="logs")
    assert config.endpoint == "http://collector:4318/v1/logs"
    config = config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://l:1/x",
                              "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "a=1"}, signal="logs")
    assert config.endpoint == "http://l:1/x" and config.headers == {}
