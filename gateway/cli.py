"""`edge-gateway`: the command line. `run` serves; more subcommands plug in through `register`.

A module providing a subcommand exposes `register(subparsers)`, which adds its parser and sets
`func` (called with the parsed arguments, returning an exit code). Modules listed in
`OPTIONAL_COMMANDS` are picked up when they exist.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import urllib.parse

from gateway import __version__, exporters, logs
from gateway.app import Gateway
from gateway.decode import Dictionaries
from gateway.dedupe import SeqTracker
from gateway.events import DeviceEvents
from gateway.export import RetryPolicy
from gateway.http import StatusServer
from gateway.metrics import GatewayMetrics
from gateway.mqtt import BrokerConfig, MqttIntake, parse_broker
from gateway.pipeline import ExportPipeline
from gateway.state import GatewayState, StateError

OPTIONAL_COMMANDS = ("gateway.tune", "gateway.devices")
log = logging.getLogger("gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-gateway", description="Edge telemetry gateway: MQTT in; OTLP and "
                                     "Prometheus remote write out.")
    parser.add_argument("--version", action="version", version="edge-gateway " + __version__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(subparsers)
    for name in OPTIONAL_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    """The MQTT connection flags, shared by every subcommand that talks to the broker."""
    group = parser.add_argument_group("broker")
    group.add_argument("--broker", default="mqtt://localhost:1883", help="mqtt://host:port or mqtts://host:port")
    group.add_argument("--topic-prefix", default="edge", help="topic prefix (default: edge)")
    group.add_argument("--client-id", help="MQTT client id; keep it stable so the session resumes")
    group.add_argument("--ca", help="CA certificate file (enables TLS)")
    group.add_argument("--cert", help="client certificate file")
    group.add_argument("--key", help="client private key file")
    group.add_argument("--username", help="MQTT user name")
    group.add_argument("--password", default=os.environ.get("EDGE_GATEWAY_MQTT_PASSWORD"),
                       help="MQTT password (default: $EDGE_GATEWAY_MQTT_PASSWORD)")


def broker_config(args: argparse.Namespace, client_id: str) -> BrokerConfig:
    host, port, tls = parse_broker(args.broker)
    parts = urllib.parse.urlsplit(args.broker if "://" in args.broker else "mqtt://" + args.broker)
    username = args.username if args.username is not None else parts.username
    password = args.password if args.password is not None else parts.password
    return BrokerConfig(host=host, port=port, tls=tls, ca=args.ca, cert=args.cert, key=args.key,
                        username=username, password=password, client_id=args.client_id or client_id)


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="receive batches and export them as OTLP",
                                description="Receive device batches over MQTT and export them as OTLP. "
                                "The exporter follows OTEL_EXPORTER_OTLP_* (grpc or http/protobuf); "
                                "without them, or with --output, it writes OTLP JSON lines; "
                                "--prometheus-remote-write adds (or, alone, is) a Prometheus exporter.")
    add_broker_options(run)
    run.add_argument("--share-group", help="receive data through $share/GROUP/… to split load between replicas")
    run.add_argument("--session-expiry", type=int, default=3600, metavar="S",
                     help="seconds the broker keeps the session (and unacked data) after a disconnect; with "
                     "--share-group only the births' session: a replica's data session ends with it")
    run.add_argument("--metrics-port", type=int, default=9464, help="port of /metrics and /healthz (0: any free port)")
    run.add_argument("--metrics-host", default="127.0.0.1", help="address to serve /metrics on")
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument("--output", metavar="FILE|-", help="write OTLP JSON lines to FILE or stdout, ignoring OTEL_*")
    run.add_argument("--queue-size", type=int, default=64, help="batches between MQTT and the exporter")
    run.add_argument("--max-batches", type=int, default=32, help="device batches per export request")
    run.add_argument("--max-payload", type=int, default=65536, help="largest accepted MQTT payload in bytes")
    run.add_argument("--max-new-series", type=int, default=1000, metavar="N",
                     help="new series a device may announce per minute after its first birth (0: no limit)")
    run.add_argument("--birth-wait", type=float, default=10.0, metavar="S",
                     help="how long a batch waits for its device's birth before it is rejected")
    run.add_argument("--dedupe", action=argparse.BooleanOptionalAction, default=True,
                     help="drop batches whose (device, boot, seq) was already exported (default: on)")
    run.add_argument("--state-dir", metavar="DIR",
                     help="keep the dedupe state and the births here, so a crash neither exports a batch twice "
                     "nor forgets a dictionary (one gateway per directory)")
    run.add_argument("--receipts", action=argparse.BooleanOptionalAction, default=True,
                     help="tell each device what was exported (<prefix>/<device>/delivery), so it keeps and sends "
                     "again what was not (default: on; with several independent gateways on the same devices, "
                     "on for one of them only)")
    run.add_argument("--workers", type=int, default=1, help="exporter threads")
    run.add_argument("--late-after", type=float, default=60.0, metavar="S",
                     help="a sample exported more than S seconds after it was measured counts as late")
    exporters.add_options(run)
    run.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    logs.setup(args.log_format)
    try:
        exporter, logs_exporter, described = exporters.choose(args)
        broker = broker_config(args, "edge-gateway-%s" % socket.gethostname())
    except (ValueError, OSError) as exc:  # configuration problems: one clear line, no traceback
        print("edge-gateway: %s" % exc, file=sys.stderr)
        return 2
    broker.session_expiry_s = args.session_expiry
    broker.receive_maximum = args.queue_size
    try:
        state = GatewayState(args.state_dir) if args.state_dir else None
    except (StateError, OSError) as exc:
        print("edge-gateway: --state-dir: %s" % exc, file=sys.stderr)
        return 2
    dictionaries = Dictionaries(max_payload=args.max_payload, max_new_series=args.max_new_series)
    pipeline: ExportPipeline | None = None
    metrics = GatewayMetrics(queue_depth=lambda: pipeline.depth() if pipeline else 0,
                             devices=lambda: len(dictionaries.devices()))
    pipeline = ExportPipeline(exporter, metrics, queue_size=args.queue_size, max_batches=args.max_batches,
                              retry=RetryPolicy(), workers=args.workers)
    # with a share group each replica sees only part of a device's sequence: its gaps mean nothing
    dedupe = SeqTracker(gaps=args.share_group is None) if args.dedupe else None
    gateway = Gateway(dictionaries, pipeline, metrics, dedupe, args.birth_wait, state, receipts=args.receipts)
    gateway.late_after_s = args.late_after
    events = None
    if logs_exporter is not None:
        events = gateway.events = DeviceEvents(logs_exporter, dictionaries.latest, metrics, RetryPolicy())
    births, replayed = gateway.restore()
    intake = MqttIntake(broker, gateway, metrics, args.topic_prefix, args.share_group)
    gateway.publish_status = intake.publish_status
    gateway.publish_receipt = intake.publish_receipt
    status = StatusServer(metrics.render, lambda: (pipeline.healthy(), {
        "mqtt_connected": intake.connected, "queue_depth": pipeline.depth(),
        "devices": len(dictionaries.devices()), "waiting_for_birth": gateway.parked()}),
        args.metrics_host, args.metrics_port)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    pipeline.start()
    if events is not None:
        events.start()
    status.start()
    intake.start()
    log.info("gateway started", extra={"fields": {
        "event": "started", "broker": logs.redact(args.broker), "exporter": described, "metrics_port": status.port,
        "client_id": intake.config.client_id, "dedupe": dedupe is not None, "state_dir": args.state_dir or "",
        "births_restored": births, "batches_replayed": replayed, "receipts": args.receipts}})
    while not stop.wait(1.0):
        gateway.expire()
    log.info("gateway stopping", extra={"fields": {"event": "stopping"}})
    pipeline.stop(timeout=5.0)  # flush while still connected, so the acks reach the broker
    intake.stop()
    if events is not None:
        events.stop(timeout=2.0)  # a file it shares with the metrics is closed after it (close() is idempotent)
        logs_exporter.close()
    status.stop()
    if state is not None:
        state.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
