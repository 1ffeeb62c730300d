"""RabbitMQ intake: devices speak MQTT to a RabbitMQ cluster; gateways consume a replicated queue over AMQP.

For fleets beyond one broker (docs/scaling.md). Devices are unchanged: they connect to any node's
MQTT plugin (through a load balancer or a DNS name), which routes each publish to the `amq.topic`
exchange with the topic's `/` as `.` (`edge/pi-1/data` -> `edge.pi-1.data`) and sends the PUBACK
once the queues it reached have it (a quorum queue: a majority of its nodes). The gateways are
competing consumers over AMQP 0-9-1 (pika):

- data: one quorum queue, `<prefix>.data`, replicated on the cluster's nodes (Raft), bound to
  `<prefix>.#.data`, shared by every gateway. Each message is acked (`basic_ack`) only once its
  batch is settled, at most `--queue-size` unacked per gateway (`basic_qos`). When a node dies the
  queue goes on on the others (a new leader); when a gateway dies, what it held unacked goes back
  to the queue and on to the other gateways;
- meta: one quorum queue per gateway, `<prefix>.meta.<client id>`, bound to births, states, command
  acks and receipts (`<prefix>.#.birth|state|ack|delivery`): every gateway needs every dictionary,
  and the queue keeps what comes while its gateway is away (it expires `--session-expiry` seconds
  after its gateway was last connected). Acked as soon as handled;
- receipts go to `amq.topic` as `<prefix>.<device>.delivery` (the MQTT plugin hands them to the
  device), with the headers `share-group` and `gateway`: another gateway of the group reads them on
  its meta queue and does not export again what this one exported (the device may send a batch again
  when its receipt was lost, and it can reach any gateway). A redelivered data message (its gateway
  died) is handled after REDELIVERED_GRACE_S, so that the dead gateway's receipts, published before
  its acks but travelling through another queue, are read first. A receipt that could not go out
  (the connection broke between the export and its receipt) is kept (PENDING_RECEIPTS at most) and
  published first thing on the next connection, before any message is consumed: the batch's
  message is not acked either and goes to another gateway, which must learn it was exported.

pika's BlockingConnection is not thread-safe: the exporter threads' acks and receipts are handed to
the connection's thread (`add_callback_threadsafe`). A connection that breaks is opened again on the
next node given (`--amqp` several times), with backoff; a delivery tag of the old connection is
never acked on the new one (the message comes again, and dedupe and receipts settle it).

RabbitMQ 3.10's MQTT plugin maps `.` in topics to `/` on the way to MQTT subscribers: device ids
with a dot do not get their receipts there (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import pika
import pika.exceptions

from gateway.app import Gateway
from gateway.ops.metrics import GatewayMetrics

log = logging.getLogger("gateway.amqp")

REDELIVERED_GRACE_S = 1.0
TRANSIENT_META_EXPIRY_S = 60  # the meta queue of a gateway whose client id is new at each start
PENDING_RECEIPTS = 10000  # receipts kept while disconnected; beyond, the oldest go (a device sends again)
KINDS = ("birth", "state", "ack", "delivery")


def add_options(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("RabbitMQ (instead of --broker: devices on its MQTT plugin, gateways over AMQP)")
    group.add_argument("--amqp", action="append", metavar="URL",
                       help="amqp://user:password@host:5672/vhost of a RabbitMQ node; repeat for each node of "
                       "a cluster (the gateway uses the next one when its node goes)")
    group.add_argument("--amqp-queue", metavar="NAME", help="the shared data queue (default: <prefix>.data)")


@dataclass
class AmqpConfig:
    urls: list[str]
    client_id: str
    prefix: str = "edge"
    queue: str | None = None
    prefetch: int = 64
    session_expiry_s: int = 3600
    share_group: str = "amqp"
    backoff: tuple[float, float] = (0.5, 15.0)
    parameters: list[pika.URLParameters] = field(default_factory=list)

    def __post_init__(self) -> None:
        for url in self.urls:
            if not url.startswith(("amqp://", "amqps://")):
                raise ValueError("--amqp: %r is not amqp://host:port" % url)
            params = pika.URLParameters(url)
            params.heartbeat = 30
            params.blocked_connection_timeout = 60
            params.connection_attempts = 1
            params.socket_timeout = 5
            self.parameters.append(params)


def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class AmqpIntake:
    """The intake interface of gateway.ingest.mqtt.MqttIntake (start, stop, connected, publish_receipt,
    publish_status, config.client_id) over RabbitMQ."""

    def __init__(self, config: AmqpConfig, gateway: Gateway, metrics: GatewayMetrics) -> None:
        self.config = config
        self.gateway = gateway
        self.metrics = metrics
        self.prefix = config.prefix.strip("/").replace("/", ".")
        self.data_queue = config.queue or self.prefix + ".data"
        self.meta_queue = "%s.meta.%s" % (self.prefix, config.client_id)
        self.connected = False
        self._down_since: float | None = time.monotonic()  # /healthz: unreachable for how long
        self._up_at = 0.0
        self._last_error = ""
        self._connection: pika.BlockingConnection | None = None
        self._channel = None
        self._generation = 0  # a new one per connection: older delivery tags are not acked on it
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amqp", daemon=True)
        self._node = 0  # the first node given, then the next one each time a connection fails
        self._headers = {"share-group": config.share_group, "gateway": config.client_id}
        # receipts not yet on the wire, by serial: a connection that breaks drops its queued callbacks
        self._pending: dict[int, tuple[str, bytes]] = {}
        self._pending_lock = threading.Lock()
        self._serial = 0

    # ------------------------------------------------------------ the intake interface

    def start(self) -> AmqpIntake:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(lambda: None)  # wake its loop
            except Exception:  # noqa: BLE001 - already closed
                pass
        self._thread.join(10)

    def unreachable_s(self) -> float:
        """Seconds since the connection was last up (since the start if it never was); 0 when up."""
        down = self._down_since
        return time.monotonic() - down if down is not None and not self.connected else 0.0

    def last_error(self) -> str:
        return self._last_error

    def ever_connected(self) -> bool:
        return self._up_at > 0

    def publish_status(self, device: str, doc: dict) -> bool:
        return False  # RabbitMQ keeps retained messages per node: the fleet status is MQTT brokers' (docs/scaling.md)

    def publish_receipt(self, device: str, payload: bytes) -> bool:
        """Published on the connection's thread; one the connection did not carry goes on the next."""
        with self._pending_lock:
            self._serial += 1
            serial = self._serial
            self._pending[serial] = (device, payload)
            while len(self._pending) > PENDING_RECEIPTS:  # the oldest go: their devices send again
                del self._pending[next(iter(self._pending))]

        def work(channel) -> None:
            with self._pending_lock:
                receipt = self._pending.pop(serial, None)
            if receipt is not None:  # else already published by _publish_pending
                self._publish_receipt(channel, *receipt)

        self._call(work)
        return True  # published now or on the next connection

    def _publish_receipt(self, channel, device: str, payload: bytes) -> None:
        channel.basic_publish("amq.topic", "%s.%s.delivery" % (self.prefix, device), payload,
                              pika.BasicProperties(headers=self._headers))

    def _publish_pending(self, channel) -> None:
        """The receipts a broken connection did not carry, before consuming anything on the new one."""
        with self._pending_lock:
            pending, self._pending = list(self._pending.values()), {}
        for device, payload in pending:
            self._publish_receipt(channel, device, payload)
        if pending:
            log.info("receipts published after reconnecting", extra={"fields": {
                "event": "amqp_receipts_resent", "receipts": len(pending)}})

    # ------------------------------------------------------------ connection thread

    def _call(self, work: Callable[[object], None]) -> bool:
        """Run `work(channel)` on the connection's thread; False when not connected."""
        connection, channel, generation = self._connection, self._channel, self._generation
        if connection is None or channel is None or not self.connected:
            return False

        def run() -> None:
            if self._generation == generation and channel.is_open:
                work(channel)

        if threading.current_thread() is self._thread:
            run()
            return True
        try:
            connection.add_callback_threadsafe(run)
        except (pika.exceptions.AMQPError, RuntimeError, OSError):
            return False
        return True

    def _run(self) -> None:
        delay = self.config.backoff[0]
        while not self._stopping.is_set():
            params = self.config.parameters[self._node % len(self.config.parameters)]
            url = redact(self.config.urls[self._node % len(self.config.urls)])
            try:
                self._serve(params, url)
                delay = self.config.backoff[0]
            except (pika.exceptions.AMQPError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
                self._last_error = "%s: %s" % (url, reason[:200])
                if self.connected:
                    log.warning("disconnected from the broker", extra={"fields": {
                        "event": "amqp_disconnected", "broker": url, "reason": reason[:200]}})
                else:
                    log.warning("cannot connect to the broker", extra={"fields": {
                        "event": "amqp_unreachable", "broker": url, "reason": reason[:200]}})
            finally:
                self._closed()
            if self._stopping.is_set():
                return
            self._node += 1
            self._stopping.wait(delay * random.uniform(0.5, 1.0))
            delay = min(self.config.backoff[1], delay * 2)

    def _closed(self) -> None:
        if self.connected:
            self._down_since = time.monotonic()
        self.connected = False
        self.metrics.connected.set(0)
        self._channel = None
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError):
                pass

    def _serve(self, params: pika.URLParameters, url: str) -> None:
        connection = pika.BlockingConnection(params)
        channel = connection.channel()
        self._declare(channel)
        channel.basic_qos(prefetch_count=self.config.prefetch)
        self._generation += 1
        self._connection, self._channel = connection, channel
        generation = self._generation
        channel.basic_consume(self.meta_queue, lambda ch, m, p, b: self._on_meta(ch, m, p, b))
        channel.basic_consume(self.data_queue, lambda ch, m, p, b: self._on_data(ch, m, b, generation))
        self.connected = True
        self._up_at = time.monotonic()
        self._down_since = None
        self._publish_pending(channel)  # before this thread dispatches any message of the new connection
        self.metrics.connected.set(1)
        log.info("connected to the broker", extra={"fields": {
            "event": "amqp_connected", "broker": url, "client_id": self.config.client_id,
            "queues": "%s %s" % (self.data_queue, self.meta_queue)}})
        while not self._stopping.is_set():
            connection.process_data_events(time_limit=0.5)

    def _declare(self, channel) -> None:
        quorum = {"x-queue-type": "quorum"}
        channel.queue_declare(self.data_queue, durable=True, arguments=quorum)
        channel.queue_bind(self.data_queue, "amq.topic", self.prefix + ".#.data")
        channel.queue_declare(self.meta_queue, durable=True,
                              arguments=dict(quorum, **{"x-expires": self.config.session_expiry_s * 1000}))
        for kind in KINDS:
            channel.queue_bind(self.meta_queue, "amq.topic", "%s.#.%s" % (self.prefix, kind))

    # ------------------------------------------------------------ messages

    def _split(self, routing_key: str) -> tuple[str, str]:
        """`<prefix>.<device>.<kind>` -> (device, kind); the device may hold dots (the MQTT plugin's `/`)."""
        head = self.prefix + "."
        if not routing_key.startswith(head):
            return "", ""
        device, _, kind = routing_key[len(head):].rpartition(".")
        return device, kind

    def _on_meta(self, channel, method, properties, body: bytes) -> None:
        device, kind = self._split(method.routing_key)
        try:
            if kind == "birth":
                self.gateway.on_birth(device, body)
            elif kind == "state":
                self.gateway.on_state(device, body)
            elif kind == "ack":
                self.gateway.on_ack(device, body)
            elif kind == "delivery":
                headers = properties.headers or {}
                if headers.get("share-group") == self.config.share_group and headers.get("gateway") != \
                        self.config.client_id:
                    self.gateway.on_receipt(device, body)
        except Exception:  # never let one message stop the intake
            log.exception("message handling failed", extra={"fields": {"event": "internal_error",
                                                                        "routing_key": method.routing_key}})
        channel.basic_ack(method.delivery_tag)

    def _on_data(self, channel, method, body: bytes, generation: int) -> None:
        device, kind = self._split(method.routing_key)
        tag = method.delivery_tag

        def ack() -> None:
            self._call(lambda ch: ch.basic_ack(tag)) if self._generation == generation else None

        def handle() -> None:
            try:
                self.gateway.on_data(device, body, ack)
            except Exception:
                log.exception("message handling failed", extra={"fields": {"event": "internal_error",
                                                                            "routing_key": method.routing_key}})
                ack()

        if kind != "data" or not device:
            ack()
        elif method.redelivered:  # a dead gateway's: its receipts first (see the module's notes)
            self._connection.call_later(REDELIVERED_GRACE_S, handle)
        else:
            handle()


def intake(args: argparse.Namespace, gateway: Gateway, metrics: GatewayMetrics, client_id: str,
           persistent: bool = True) -> AmqpIntake:
    """A stable client id (--client-id, --state-dir) keeps its meta queue for --session-expiry s after it
    left; a per-process one (gateway/ops/identity.py) lets it go a minute after, as its MQTT session would."""
    config = AmqpConfig(urls=args.amqp, client_id=client_id, prefix=args.topic_prefix, queue=args.amqp_queue,
                        prefetch=args.queue_size,
                        session_expiry_s=args.session_expiry if persistent else TRANSIENT_META_EXPIRY_S,
                        share_group=args.share_group or "amqp")
    return AmqpIntake(config, gateway, metrics)
