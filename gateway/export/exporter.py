"""Exporters: OTLP/HTTP, OTLP/gRPC and OTLP JSON lines to a file or stdout.

Every exporter offers `send(request) -> Outcome` (one attempt) and `close()`. `send_with_retry`
adds the policy: exponential backoff with jitter on retryable answers (Retry-After honoured),
immediate give-up on the others. `config_from_env` reads the standard OTEL_EXPORTER_OTLP_*
variables the OpenTelemetry SDKs and Collector use, for metrics or (`signal="logs"`) logs; the
same exporters carry either signal's request (a gRPC one is given the logs service's stub).
"""

from __future__ import annotations

import email.utils
import gzip
import json
import os
import random
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TextIO

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import MetricsServiceStub

HTTP = "http/protobuf"
GRPC = "grpc"
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
RETRYABLE_GRPC = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.DATA_LOSS,
})
MAX_RETRY_AFTER_S = 300.0
# failed attempts that may have reached the receiver all the same: what is sent again after one of
# these may be stored twice (with identical timestamps and values, which a time-series store collapses)
UNCERTAIN = frozenset({"timeout", "connection", "grpc_deadline_exceeded", "grpc_cancelled", "grpc_unknown"})


@dataclass(frozen=True)
class Outcome:
    ok: bool
    retryable: bool = False
    reason: str = ""  # metric label when not ok: http_503, grpc_unavailable, connection, timeout …
    retry_after: float | None = None
    rejected_points: int = 0  # partial success reported by the receiver


OK = Outcome(True)


class Exporter(Protocol):
    def send(self, request: ExportMetricsServiceRequest) -> Outcome: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- configuration


@dataclass
class OtlpConfig:
    protocol: str = HTTP
    endpoint: str = "http://localhost:4318/v1/metrics"
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    compression: str = "none"
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None
    insecure: bool | None = None


def _env(env: Mapping[str, str], name: str, signal: str = "metrics") -> str | None:
    """The signal-specific OTEL_EXPORTER_OTLP_<SIGNAL>_<name> first, then OTEL_EXPORTER_OTLP_<name>."""
    for key in ("OTEL_EXPORTER_OTLP_%s_%s" % (signal.upper(), name), "OTEL_EXPORTER_OTLP_" + name):
        value = env.get(key, "").strip()
        if value:
            return value
    return None


def parse_headers(text: str) -> dict[str, str]:
    """W3C-baggage-like `k1=v1,k2=v2` with percent-encoded values, as the OTel spec defines."""
    headers = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError("OTEL_EXPORTER_OTLP_HEADERS: %r is not key=value" % item.strip())
        headers[urllib.parse.unquote(key.strip()).lower()] = urllib.parse.unquote(value.strip())
    return headers


def config_from_env(env: Mapping[str, str] = os.environ, signal: str = "metrics") -> OtlpConfig | None:
    """The OTLP exporter configuration for `signal` (metrics, logs), or None when no OTLP variable is
    set (use the file exporter)."""
    protocol = _env(env, "PROTOCOL", signal)
    endpoint = _env(env, "ENDPOINT", signal)
    if protocol is None and endpoint is None:
        return None
    protocol = protocol or HTTP
    if protocol not in (HTTP, GRPC):
        raise ValueError("OTEL_EXPORTER_OTLP_PROTOCOL: %r is not supported (use grpc or http/protobuf)" % protocol)
    config = OtlpConfig(protocol=protocol)
    specific = env.get("OTEL_EXPORTER_OTLP_%s_ENDPOINT" % signal.upper(), "").strip()
    if protocol == GRPC:
        config.endpoint = endpoint or "http://localhost:4317"
    elif specific:
        config.endpoint = specific  # the signal-specific URL is used as is
    else:
        config.endpoint = (endpoint or "http://localhost:4318").rstrip("/") + "/v1/" + signal
    config.headers = parse_headers(_env(env, "HEADERS", signal) or "")
    timeout = _env(env, "TIMEOUT", signal)
    if timeout is not None:
        try:
            config.timeout_s = float(timeout) / 1000.0  # milliseconds, per the spec
        except ValueError:
            raise ValueError("OTEL_EXPORTER_OTLP_TIMEOUT: %r is not a number of milliseconds" % timeout)
    compression = (_env(env, "COMPRESSION", signal) or "none").lower()
    if compression not in ("gzip", "none"):
        raise ValueError("OTEL_EXPORTER_OTLP_COMPRESSION: %r is not gzip or none" % compression)
    config.compression = compression
    config.certificate = _env(env, "CERTIFICATE", signal)
    config.client_key = _env(env, "CLIENT_KEY", signal)
    config.client_certificate = _env(env, "CLIENT_CERTIFICATE", signal)
    insecure = _env(env, "INSECURE", signal)
    if insecure is not None:
        config.insecure = insecure.lower() == "true"
    return config


def make_exporter(config: OtlpConfig, stub: Callable | None = None) -> Exporter:
    """The OTLP exporter `config` asks for; `stub` is the gRPC service stub (metrics by default)."""
    return GrpcExporter(config, stub or MetricsServiceStub) if config.protocol == GRPC else HttpExporter(config)


# ---------------------------------------------------------------- OTLP/HTTP


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class HttpExporter:
    """POST application/x-protobuf to the metrics URL, gzip when configured."""

    def __init__(self, config: OtlpConfig) -> None:
        self.config = config
        self._context = None
        if config.endpoint.startswith("https:"):
            self._context = ssl.create_default_context(cafile=config.certificate)
            if config.client_certificate:
                self._context.load_cert_chain(config.client_certificate, config.client_key)

    def send(self, request: ExportMetricsServiceRequest) -> Outcome:
        body = request.SerializeToString()
        headers = {"Content-Type": "application/x-protobuf", "User-Agent": "edge-gateway"}
        headers.update(self.config.headers)
        if self.config.compression == "gzip":
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        outcome, reply = post(self.config.endpoint, body, headers, self.config.timeout_s, self._context)
        if outcome.ok and reply:
            return _partial(reply)
        return outcome

    def close(self) -> None:
        pass


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float, context: ssl.SSLContext | None,
         answer: Callable[[int, str], Outcome | None] | None = None) -> tuple[Outcome, bytes]:
    """One HTTP POST: (OK, the reply's body), or (the failure, b""). An error answer is retryable when
    its code is in RETRYABLE_HTTP, unless `answer(code, first bytes of its body)` decides otherwise."""
    http_request = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(http_request, timeout=timeout_s, context=context) as reply:
            return OK, reply.read()
    except urllib.error.HTTPError as exc:
        code = exc.code
        decided = answer(code, exc.read(300).decode("utf-8", "replace").strip()) if answer else None
        if decided is not None:
            return decided, b""
        return Outcome(False, code in RETRYABLE_HTTP, "http_%d" % code, _retry_after(exc.headers.get("Retry-After"))), b""
    except TimeoutError:
        return Outcome(False, True, "timeout"), b""
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return Outcome(False, True, "timeout"), b""
        # refused: nothing was sent; anything else may have broken after the request went out
        return Outcome(False, True, "refused" if isinstance(reason, ConnectionRefusedError) else "connection"), b""


def _partial(body: bytes) -> Outcome:
    response = ExportMetricsServiceResponse()
    try:
        response.ParseFromString(body)
    except Exception:  # a 2xx with a body we cannot read is still a success
        return OK
    return Outcome(True, rejected_points=response.partial_success.rejected_data_points)


# ---------------------------------------------------------------- OTLP/gRPC


class GrpcExporter:
    """An opentelemetry-proto service stub (MetricsService, LogsService) over a grpcio channel."""

    def __init__(self, config: OtlpConfig, stub: Callable = MetricsServiceStub) -> None:
        self.config = config
        url = urllib.parse.urlsplit(config.endpoint if "://" in config.endpoint else "http://" + config.endpoint)
        target = url.netloc or url.path
        secure = url.scheme == "https" if config.insecure is None else not config.insecure
        options = [("grpc.primary_user_agent", "edge-gateway")]
        if secure:
            def read(path: str | None) -> bytes | None:
                return open(path, "rb").read() if path else None

            credentials = grpc.ssl_channel_credentials(
                read(config.certificate), read(config.client_key), read(config.client_certificate))
            self._channel = grpc.secure_channel(target, credentials, options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._stub = stub(self._channel)
        path = SERVICES.get(stub)
        if path is not None:  # requests may come serialised already (gateway/convert/otlpwire.py): send their bytes
            self._stub.Export = self._channel.unary_unary(path[0], request_serializer=_serialized,
                                                          response_deserializer=path[1].FromString)
        self._metadata = list(config.headers.items())
        self._compression = grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression

    def send(self, request: ExportMetricsServiceRequest) -> Outcome:
        try:
            response = self._stub.Export(request, timeout=self.config.timeout_s, metadata=self._metadata,
                                         compression=self._compression)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            return Outcome(False, code in RETRYABLE_GRPC, "grpc_" + code.name.lower())
        partial = response.partial_success  # metrics count data points, logs log records
        return Outcome(True, rejected_points=getattr(partial, "rejected_data_points", None)
                       or getattr(partial, "rejected_log_records", 0))

    def close(self) -> None:
        self._channel.close()


def _serialized(request) -> bytes:
    return request.SerializeToString()


SERVICES = {  # stub -> (method path, response type), for the requests' own serialisation
    MetricsServiceStub: ("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                         ExportMetricsServiceResponse),
    LogsServiceStub: ("/opentelemetry.proto.collector.logs.v1.LogsService/Export", ExportLogsServiceResponse),
}


# ---------------------------------------------------------------- OTLP JSON lines


class FileExporter:
    """One OTLP/JSON request (metrics or logs) per line, to a file (appended) or stdout ("-").

    OTLP/JSON as the OTLP specification encodes it: proto3 JSON with lowerCamelCase keys, enums as
    their integer values (`"aggregationTemporality":2`), 64-bit integers as decimal strings.
    """

    def __init__(self, path: str = "-", stream: TextIO | None = None) -> None:
        self._own = stream is None and path != "-"
        self._stream = stream or (sys.stdout if path == "-" else open(path, "a", encoding="utf-8"))
        self._lock = threading.Lock()

    def send(self, request: ExportMetricsServiceRequest) -> Outcome:
        message = request.message() if hasattr(request, "message") else request  # otlpwire.Encoded: parsed
        line = json.dumps(json_format.MessageToDict(message, use_integers_for_enums=True), separators=(",", ":"))
        try:
            with self._lock:
                self._stream.write(line + "\n")
                self._stream.flush()
        except OSError:
            return Outcome(False, True, "write")
        except ValueError:  # closed: the gateway is stopping
            return Outcome(False, False, "closed")
        return OK

    def sharing(self) -> FileExporter:
        """Another exporter writing to the same stream, under the same lock, that does not close it."""
        other = FileExporter(stream=self._stream)
        other._lock = self._lock
        return other

    def close(self) -> None:
        if self._own:
            with self._lock:
                self._stream.close()


# ---------------------------------------------------------------- retry policy


@dataclass
class RetryPolicy:
    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +-20 %
    max_elapsed_s: float | None = None  # None: retry until stopped (at-least-once)

    def delay(self, attempt: int) -> float:
        base = min(self.max_s, self.initial_s * self.multiplier ** attempt)
        return base * (1 + random.uniform(-self.jitter, self.jitter))


SETTLED = Outcome(False, False, "settled")  # `refresh` found nothing left to send


def send_with_retry(exporter: Exporter, request: ExportMetricsServiceRequest, policy: RetryPolicy,
                    stop: threading.Event, on_retry: Callable[[Outcome, float], None] | None = None,
                    refresh: Callable[[], ExportMetricsServiceRequest | None] | None = None) -> Outcome:
    """Send until success, a non-retryable answer, `policy.max_elapsed_s`, or `stop` is set.

    A stop returns the last retryable outcome: the caller then neither acks nor drops. Before each
    retry `refresh()` may give the request to send instead (what is still to be sent), or None:
    nothing is (SETTLED).
    """
    started = time.monotonic()
    attempt = 0
    while True:
        outcome = exporter.send(request)
        if outcome.ok or not outcome.retryable or stop.is_set():
            return outcome
        delay = policy.delay(attempt)
        if outcome.retry_after is not None:
            delay = max(outcome.retry_after, 0.0)
        if policy.max_elapsed_s is not None and time.monotonic() - started + delay > policy.max_elapsed_s:
            return Outcome(False, False, "retries_exhausted")
        if on_retry is not None:
            on_retry(outcome, delay)
        if stop.wait(delay):
            return outcome
        attempt += 1
        if refresh is not None:
            request = refresh()
            if request is None:
                return SETTLED
