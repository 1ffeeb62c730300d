"""Which exporters `edge-gateway run` uses, from its flags and the environment.

Metrics go to every configured backend (a `FanOut` when there are two), and a batch is acked
only when each has settled it:

- OTLP when OTEL_EXPORTER_OTLP_[METRICS_]* is set (gRPC or HTTP), else OTLP JSON lines with
  `--output FILE|-`, else (no remote write either) JSON lines on stdout — unless stdout is a
  terminal: a person reading it wants the batch lines, not ~300 KB of JSON a batch, so nothing is
  exported then (`Discard`, said at start);
- Prometheus remote write with `--prometheus-remote-write URL`.

Device events (OTLP logs, gateway/convert/events.py) use the OTLP exporter of the logs signal
(OTEL_EXPORTER_OTLP_[LOGS_]*), or the JSON-lines file the metrics go to; with remote write alone
they are only the gateway's own log lines.

Secrets never need to be on the command line: the password and the bearer token are read from
EDGE_GATEWAY_PROMETHEUS_PASSWORD / EDGE_GATEWAY_PROMETHEUS_BEARER_TOKEN or from a file (read at
every request, so a rotated token is picked up); extra headers from EDGE_GATEWAY_PROMETHEUS_HEADERS
(`k=v,k2=v2`, percent-encoded like OTEL_EXPORTER_OTLP_HEADERS) and `--prometheus-header K=V`.
"""

from __future__ import annotations

import argparse
import os
import sys

from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub

from gateway.export.exporter import OK, Exporter, FileExporter, Outcome, config_from_env, make_exporter, parse_headers
from gateway.export.fanout import FanOut
from gateway.export.promwrite import RemoteWriteConfig, RemoteWriteExporter, secret
from gateway.ops.logs import redact


def add_options(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("Prometheus remote write (beside or instead of OTLP)")
    group.add_argument("--prometheus-remote-write", metavar="URL",
                       help="remote-write receiver, e.g. http://prometheus:9090/api/v1/write")
    group.add_argument("--prometheus-header", action="append", default=[], metavar="K=V",
                       help="extra HTTP header (repeatable; also $EDGE_GATEWAY_PROMETHEUS_HEADERS)")
    group.add_argument("--prometheus-username", help="basic auth user")
    group.add_argument("--prometheus-password",
                       help="basic auth password (default: $EDGE_GATEWAY_PROMETHEUS_PASSWORD)")
    group.add_argument("--prometheus-password-file", metavar="FILE", help="read the basic auth password from FILE")
    group.add_argument("--prometheus-bearer-token",
                       help="bearer token (default: $EDGE_GATEWAY_PROMETHEUS_BEARER_TOKEN)")
    group.add_argument("--prometheus-bearer-token-file", metavar="FILE", help="read the bearer token from FILE")
    group.add_argument("--prometheus-ca", metavar="FILE", help="CA certificate to verify an https receiver")
    group.add_argument("--prometheus-cert", metavar="FILE", help="client certificate (mutual TLS)")
    group.add_argument("--prometheus-key", metavar="FILE", help="client private key (mutual TLS)")
    group.add_argument("--prometheus-insecure-skip-verify", action="store_true",
                       help="do not verify the receiver's certificate (tests only)")
    group.add_argument("--prometheus-timeout", type=float, default=10.0, metavar="S", help="seconds per request")


def remote_write_config(args: argparse.Namespace) -> RemoteWriteConfig:
    headers = parse_headers(os.environ.get("EDGE_GATEWAY_PROMETHEUS_HEADERS", ""))
    for item in args.prometheus_header:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError("--prometheus-header: %r is not K=V" % item)
        headers[key.strip()] = value.strip()
    return RemoteWriteConfig(
        url=args.prometheus_remote_write, headers=headers, timeout_s=args.prometheus_timeout,
        username=args.prometheus_username,
        password=secret(args.prometheus_password or os.environ.get("EDGE_GATEWAY_PROMETHEUS_PASSWORD"),
                        args.prometheus_password_file, "--prometheus-password"),
        bearer_token=secret(args.prometheus_bearer_token or os.environ.get("EDGE_GATEWAY_PROMETHEUS_BEARER_TOKEN"),
                            args.prometheus_bearer_token_file, "--prometheus-bearer-token"),
        ca=args.prometheus_ca, cert=args.prometheus_cert, key=args.prometheus_key,
        insecure_skip_verify=args.prometheus_insecure_skip_verify)


def choose(args: argparse.Namespace) -> tuple[Exporter, Exporter | None, str]:
    """(metrics exporter, logs exporter or None, description for the start line)."""
    parts: list[tuple[str, Exporter]] = []
    logs: Exporter | None = None
    output = args.output
    if output is None:
        config = config_from_env()
        if config is not None:
            parts.append(("otlp %s %s" % (config.protocol, redact(config.endpoint)), make_exporter(config)))
            logs_config = config_from_env(signal="logs")
            logs = make_exporter(logs_config, LogsServiceStub)
        elif not args.prometheus_remote_write:
            if sys.stdout.isatty():
                return Discard(), None, "none"
            output = "-"
    if output is not None:
        try:
            logs = FileExporter(output)  # metrics and logs as lines of one file, as the Collector's file exporter
        except OSError as exc:
            raise ValueError("--output %s: cannot open it (%s)" % (output, exc.strerror or exc))
        parts.append(("file " + ("stdout" if output == "-" else output), logs.sharing()))
    if args.prometheus_remote_write:
        parts.append(("prometheus remote write " + redact(args.prometheus_remote_write),
                      RemoteWriteExporter(remote_write_config(args))))
    names = [name for name, _ in parts]
    exporter = parts[0][1] if len(parts) == 1 else FanOut([e for _, e in parts], names)
    return exporter, logs, " + ".join(names)


class Discard:
    """No exporter configured and a person at the terminal: batches are logged and acknowledged only."""

    def send(self, request: object) -> Outcome:
        return OK

    def close(self) -> None:
        pass
