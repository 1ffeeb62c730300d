"""A scripted OTLP/HTTP receiver in the test's process: each request parsed as protobuf and kept;
the answer to each from `script` ((status, headers) in turn), then 200."""

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)


class Receiver:
    """An OTLP/HTTP receiver: answers from `script` (status, headers) in turn, then 200."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests = []  # (path, headers, ExportMetricsServiceRequest)
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                receiver.requests.append((self.path, self.headers, request))
                time.sleep(receiver.delay)
                status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                reply = ExportMetricsServiceResponse().SerializeToString() if status == 200 else b"no"
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
