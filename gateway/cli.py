"""`edge-gateway`: the command line. `run` serves; more subcommands plug in through `register`.

A module providing a subcommand exposes `register(subparsers)`, which adds its parser and sets
`func` (called with the parsed arguments, returning an exit code): `run` here, the operator's
subcommands in gateway/ops (tune, devices, keygen). What they share (help format, broker flags, the
one-line failure) is gateway/options.py, so they import it rather than this module.
"""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import signal
import sys
import threading

from gateway import __version__
from gateway.app import Gateway
from gateway.convert.events import DeviceEvents
from gateway.decode.dedupe import SeqTracker
from gateway.decode.resolve import Dictionaries
from gateway.decode.state import GatewayState, StateError
from gateway.export import configure
from gateway.export.exporter import RetryPolicy
from gateway.export.pipeline import ExportPipeline
from gateway.ingest import amqp
from gateway.ingest.mqtt import MqttIntake
from gateway.ops import devices, health, identity, keygen, logs, tune
from gateway.ops.http import StatusServer
from gateway.ops.metrics import GatewayMetrics
from gateway.options import HelpFormatter, add_broker_options, broker_config, broker_url, fail

log = logging.getLogger("gateway")


GC_THRESHOLD = 50_000  # container allocations between collections of the youngest generation (default 700)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-gateway", description="Edge telemetry gateway: MQTT in; OTLP and "
                                     "Prometheus remote write out.", formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version="edge-gateway " + __version__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(subparsers)
    for command in (tune, devices, keygen):
        command.register(subparsers)
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="receive batches and export them as OTLP", formatter_class=HelpFormatter,
                                description="Receive device batches over MQTT and export them as OTLP. "
                                "The exporter follows OTEL_EXPORTER_OTLP_* (grpc or http/protobuf); "
                                "without them, or with --output, it writes OTLP JSON lines; "
                                "--prometheus-remote-write adds (or, alone, is) a Prometheus exporter. With none of "
                                "them and a terminal on stdout, batches are only logged (no JSON on the screen).")
    add_broker_options(run)
    run.add_argument("--share-group", help="receive data through $share/GROUP/… to split load between replicas")
    run.add_argument("--session-expiry", type=int, default=3600, metavar="S",
                     help="seconds the broker keeps the session (and unacked data) after a disconnect, "
                     "with a stable client id (--client-id or --state-dir); with --share-group only the births' "
                     "session: a replica's data session ends with it")
    run.add_argument("--metrics-port", type=int, default=9464,
                     help="port of /metrics, /healthz and /readyz (0: any free port)")
    run.add_argument("--unhealthy-after", type=float, default=60.0, metavar="S",
                     help="/healthz answers 503 once the broker has been unreachable this long")
    run.add_argument("--metrics-host", default="127.0.0.1", help="address to serve /metrics on")
    run.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines as text or JSON")
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
    run.add_argument("--max-devices", type=int, default=100000, metavar="N",
                     help="devices whose dictionaries are kept; a new device's birth beyond it is refused "
                     "(one log line, edge_gateway_limit_reached_total{limit=\"devices\"})")
    run.add_argument("--forget-after", type=float, default=86400.0, metavar="S",
                     help="forget a device silent for S seconds: dictionaries, dedupe state, metrics "
                     "(0: never; a device that comes back is asked for its birth)")
    run.add_argument("--late-after", type=float, default=60.0, metavar="S",
                     help="a sample exported more than S seconds after it was measured counts as late")
    configure.add_options(run)
    amqp.add_options(run)
    run.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    logs.setup(args.log_format)
    try:
        exporter, logs_exporter, described = configure.choose(args)
        broker = broker_config(args, "")
    except (ValueError, OSError) as exc:  # configuration problems: one clear line, no traceback
        return fail("edge-gateway", exc)
    broker.session_expiry_s = args.session_expiry
    broker.receive_maximum = args.queue_size
    try:
        state = GatewayState(args.state_dir) if args.state_dir else None
        broker.client_id, broker.persistent = identity.client_id(args.client_id, args.state_dir)
    except StateError as exc:
        return fail("edge-gateway", "--state-dir: %s" % exc)
    except OSError as exc:
        return fail("edge-gateway", "--state-dir %s: cannot use it (%s)" % (args.state_dir, exc.strerror or exc))
    dictionaries = Dictionaries(max_payload=args.max_payload, max_new_series=args.max_new_series,
                                max_devices=args.max_devices)
    pipeline: ExportPipeline | None = None
    metrics = GatewayMetrics(queue_depth=lambda: pipeline.depth() if pipeline else 0,
                             devices=lambda: len(dictionaries.devices()))
    pipeline = ExportPipeline(exporter, metrics, queue_size=args.queue_size, max_batches=args.max_batches,
                              retry=RetryPolicy(), workers=args.workers)
    # with a share group each replica sees only part of a device's sequence: its gaps mean nothing
    shared = args.share_group is not None or bool(args.amqp)
    dedupe = SeqTracker(gaps=not shared, max_streams=2 * args.max_devices) if args.dedupe else None
    gateway = Gateway(dictionaries, pipeline, metrics, dedupe, args.birth_wait, state, receipts=args.receipts,
                      forget_after_s=args.forget_after)
    gateway.late_after_s = args.late_after
    events = None
    if logs_exporter is not None:
        events = gateway.events = DeviceEvents(logs_exporter, dictionaries.latest, metrics, RetryPolicy())
    births, replayed = gateway.restore()
    try:  # RabbitMQ over AMQP (gateway/ingest/amqp.py), or an MQTT broker
        intake = amqp.intake(args, gateway, metrics, broker.client_id, broker.persistent) if args.amqp else \
            MqttIntake(broker, gateway, metrics, args.topic_prefix, args.share_group)
    except ValueError as exc:
        return fail("edge-gateway", exc)
    where = " ".join(map(amqp.redact, args.amqp)) if args.amqp else logs.redact(args.broker)
    gateway.publish_status = intake.publish_status
    gateway.publish_receipt = intake.publish_receipt
    checks = health.Checks(pipeline, intake, args.unhealthy_after, lambda: {
        "queue_depth": pipeline.depth(), "devices": len(dictionaries.devices()), "waiting_for_birth": gateway.parked()})
    try:
        status = StatusServer(metrics.render, checks.health, args.metrics_host, args.metrics_port, ready=checks.ready)
    except OSError as exc:
        return fail("edge-gateway", "--metrics-port %d on %s: %s%s" % (
            args.metrics_port, args.metrics_host, exc.strerror or exc,
            " (another gateway? choose another port, or 0 for any free one)" if exc.errno == errno.EADDRINUSE else ""))

    # Each batch in flight is hundreds of small lists and tuples that live until it is exported, and a
    # fleet's state is millions more: with the default threshold (700) the cyclic collector ran every
    # couple of batches and walked them all, ~30 % of the CPU per batch (bench/gateway_memory.py
    # --time). The gateway's objects are freed by reference counting; cycles are rare (errors).
    gc.freeze()  # what start-up made (modules, state restored) is never scanned again
    gc.set_threshold(GC_THRESHOLD, 20, 100)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    pipeline.start()
    if events is not None:
        events.start()
    status.start()
    intake.start()
    log.info("gateway started", extra={"fields": {
        "event": "started", "broker": where, "exporter": described, "metrics_port": status.port,
        "client_id": broker.client_id, "session": "persistent" if broker.persistent else "ends with this process",
        "dedupe": dedupe is not None, "state_dir": args.state_dir or "",
        "births_restored": births, "batches_replayed": replayed, "receipts": args.receipts}})
    if described.startswith("none"):
        log.warning("no exporter: batches are decoded, logged and acknowledged, not exported", extra={"fields": {
            "event": "no_exporter", "hint": "set OTEL_EXPORTER_OTLP_ENDPOINT, --output FILE (- for stdout) "
                                            "or --prometheus-remote-write URL"}})
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
    if not intake.ever_connected():
        return fail("edge-gateway", "never connected to the broker at %s: %s" % (
            where if args.amqp else broker_url(broker), intake.last_error() or "no answer"), 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
