"""A real OTLP/HTTP receiver for tests: POST /v1/metrics (and /v1/logs), parsed with opentelemetry-proto.

`answer` decides each response (200 by default), so tests can stage outages (503) and recovery;
`delay` how long it takes to answer after it stored a request (0 by default), so tests can stage a
receiver that stores what it then answers too late.
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from collections.abc import Callable

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)


class OtlpReceiver:
    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.arrivals: list[float] = []  # time.time() each request in `requests` arrived
        self.logs: list[ExportLogsServiceRequest] = []
        self.refused = 0
        self.answer: Callable[[], int] = lambda: 200
        self.delay: Callable[[], float] = lambda: 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                code = receiver.answer() if self.path in ("/v1/metrics", "/v1/logs") else 404
                if code == 200 and self.path == "/v1/logs":
                    logs = ExportLogsServiceRequest()
                    logs.ParseFromString(body)
                    with receiver.lock:
                        receiver.logs.append(logs)
                elif code == 200:
                    request = ExportMetricsServiceRequest()
                    request.ParseFromString(body)
                    with receiver.lock:
                        receiver.requests.append(request)
                        receiver.arrivals.append(time.time())
                else:
                    with receiver.lock:
                        receiver.refused += 1
                time.sleep(receiver.delay())
                answer = ExportLogsServiceResponse() if self.path == "/v1/logs" else ExportMetricsServiceResponse()
                reply = answer.SerializeToString() if code == 200 else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def points(self, device: str | None = None) -> list[tuple[dict, str, str, object, dict]]:
        """Every data point received: (resource attrs, metric name, unit, metric, point attrs) + point."""
        out = []
        with self.lock:
            requests = list(self.requests)
        for request in requests:
            for rm in request.resource_metrics:
                resource = {a.key: _value(a.value) for a in rm.resource.attributes}
                if device is not None and resource.get("service.instance.id") != device:
                    continue
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            attrs = {a.key: _value(a.value) for a in point.attributes}
                            out.append((resource, metric.name, metric.unit, metric, attrs, point))
        return out


def _value(any_value: object) -> object:
    return getattr(any_value, any_value.WhichOneof("value"))  # type: ignore[attr-defined]


def point_value(point: object) -> float:
    """A NumberDataPoint's value, int or double."""
    return getattr(point, point.WhichOneof("value"))  # type: ignore[attr-defined]
