"""/healthz, /readyz (gateway/ops/health.py says what they mean) and Prometheus /metrics on a small
stdlib HTTP server thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class StatusServer:
    """`render()` feeds /metrics; `health()` and `ready()` return (ok, details) for /healthz and /readyz
    (200 or 503). Binding the port happens here: OSError when it is taken."""

    def __init__(self, render: Callable[[], str], health: Callable[[], tuple[bool, dict]],
                 host: str = "127.0.0.1", port: int = 9464, ready: Callable[[], tuple[bool, dict]] | None = None) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, PROMETHEUS, server.render().encode())
                elif path in ("/healthz", "/readyz"):
                    healthy, details = (server.health if path == "/healthz" else server.ready)()
                    word = ("ok" if healthy else "unhealthy") if path == "/healthz" else ("ready" if healthy else "not ready")
                    body = json.dumps({"status": word, **details}).encode()
                    self._answer(200 if healthy else 503, "application/json", body)
                else:
                    self._answer(404, "text/plain", b"not found\n")

            def _answer(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes are not events worth a log line

        self.render = render
        self.health = health
        self.ready = ready or health
        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,), name="status-http", daemon=True)

    def start(self) -> StatusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
