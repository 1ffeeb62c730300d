"""paho-mqtt 2.x adapter: subscribes, hands messages to the `Gateway` core, acks when it says so.

Two MQTT v5 connections, both QoS 1 with `manual_ack=True`:

- `<client-id>-meta`, a persistent session (clean_start=False plus a session expiry): births
  `<prefix>/+/birth` (never shared: every replica needs every dictionary), state
  `<prefix>/+/state` and command acks `<prefix>/+/ack` (device events), acked as soon as they are
  processed. It publishes the delivery receipts `<prefix>/<device>/delivery` (QoS 0, not retained;
  docs/wire-format.md). With a share group it also reads the other replicas' receipts (QoS 0, No
  Local, tagged with the group in an MQTT 5 user property, which MQTT 3.1.1 devices never receive):
  what another replica exported, this one does not export again;
- `<client-id>`: data `<prefix>/+/data`, through `$share/<group>/…` when a share group is given.
  A data message is acked only once its batch is settled (exported, or rejected as bad input).
  Receive Maximum caps the unacked messages the broker sends, which bounds the work in flight.
  Alone, its session is persistent, so a restarted gateway resumes what it had not acked. In a
  share group it is not: a dead replica's persistent session would keep receiving its share of
  the data (held until it comes back or its session expires); without one the broker sends to the
  live replicas only, and what the dead one held unexported the devices send again, for want of
  its receipt.

Births travel apart from data so that they are never stuck behind a window full of unacked data
batches that are themselves waiting for those births (a restart with a backlog would deadlock).

The session is persistent only with a stable client id (`BrokerConfig.persistent`: --client-id, or
the id kept in --state-dir, gateway/ops/identity.py); a per-process id starts clean and its session ends
with it, so a restart leaves no orphaned session queueing data on the broker.

Each link logs its story as the agent does (edge_agent/transport/linkstate.py): mqtt_connected,
mqtt_disconnected (the reason and the next delay), mqtt_error (a failed attempt: why, in one line,
and the next delay; edge_agent/edge_wire/paho.py), mqtt_flapping (the broker keeps closing
the connection right after accepting it: another client uses this client id). Delays between
attempts: 1 s doubling to 16 s, minus up to half at random.

The meta connection also publishes each device's status, retained, on `<prefix>/_status/<device>`
(QoS 0: a newer one follows; nothing piles up while disconnected).
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_wire.paho import Client, parse_flag
from gateway.app import Gateway
from gateway.ops.metrics import GatewayMetrics

log = logging.getLogger("gateway.mqtt")


@dataclass
class BrokerConfig:
    host: str = "localhost"
    port: int = 1883
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str = "edge-gateway"
    keepalive: int = 30
    session_expiry_s: int = 3600
    receive_maximum: int = 64
    persistent: bool = True  # the client id is stable: resume the session after a restart
    tls_context: ssl.SSLContext | None = None  # made up front (gateway.cli), so a bad file is named at start


def parse_broker(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of --broker (edge_wire.broker, the agent's parser too; user:password@ allowed,
    see gateway/options.py); ValueError naming the flag."""
    return parse_flag(url, "--broker", credentials=True)


def split_topic(prefix: str, topic: str) -> tuple[str, str]:
    """`<prefix>/<device>/<kind>` -> (device, kind); ("", "") for anything else."""
    head = prefix + "/"
    if not topic.startswith(head):
        return "", ""
    device, _, kind = topic[len(head):].partition("/")
    return (device, kind) if device and "/" not in kind else ("", "")


class MqttIntake:
    def __init__(self, config: BrokerConfig, gateway: Gateway, metrics: GatewayMetrics,
                 prefix: str = "edge", share_group: str | None = None) -> None:
        self.config = config
        self.gateway = gateway
        self.metrics = metrics
        self.prefix = prefix.strip("/")
        self.share_group = share_group
        data = "%s/+/data" % self.prefix
        meta = [("%s/+/birth" % self.prefix, 1, False), ("%s/+/state" % self.prefix, 1, False),
                ("%s/+/ack" % self.prefix, 1, False)]
        if share_group:
            meta.append(("%s/+/delivery" % self.prefix, 0, True))
        self.meta = _Link(self, config.client_id + "-meta", meta, 65535, persistent=True)
        self.data = _Link(self, config.client_id,
                          [("$share/%s/%s" % (share_group, data) if share_group else data, 1, False)],
                          config.receive_maximum, persistent=not share_group)
        self.topics = [t[0] for t in self.meta.topics + self.data.topics]
        self._receipt_props = None
        if share_group:
            self._receipt_props = Properties(PacketTypes.PUBLISH)
            self._receipt_props.UserProperty = ("share-group", share_group)

    @property
    def connected(self) -> bool:
        return self.meta.connected and self.data.connected

    def unreachable_s(self) -> float:
        """Seconds since both connections were last up (since the start if they never were); 0 when up."""
        down = [link.down_since for link in (self.meta, self.data) if link.down_since is not None]
        return time.monotonic() - min(down) if down else 0.0

    def last_error(self) -> str:
        return self.data.last_error or self.meta.last_error or ""

    def ever_connected(self) -> bool:
        return self.meta.up_at > 0 and self.data.up_at > 0

    def start(self) -> MqttIntake:
        self.meta.start()
        self.data.start()
        return self

    def stop(self) -> None:
        self.data.stop()
        self.meta.stop()

    def publish_status(self, device: str, doc: dict) -> bool:
        """Publish a device's status retained; False when the broker is not reachable right now."""
        if not self.meta.connected:
            return False
        payload = json.dumps(dict(doc, gateway=self.config.client_id), separators=(",", ":"))
        info = self.meta.client.publish("%s/_status/%s" % (self.prefix, device), payload, qos=0, retain=True)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def publish_receipt(self, device: str, payload: bytes) -> bool:
        """Publish a delivery receipt to a device (QoS 0: a lost one costs the device a resend)."""
        if not self.meta.connected:
            return False
        info = self.meta.client.publish("%s/%s/delivery" % (self.prefix, device), payload, qos=0,
                                        properties=self._receipt_props)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def _connection_changed(self) -> None:
        self.metrics.connected.set(1 if self.connected else 0)

    def dispatch(self, topic: str, payload: bytes, ack: Callable[[], None], group: str | None = None) -> None:
        device, kind = split_topic(self.prefix, topic)
        if kind == "data":
            self.gateway.on_data(device, payload, ack)
            return
        if kind == "delivery":
            if self.share_group and group == self.share_group:  # only our group's replicas count
                self.gateway.on_receipt(device, payload)
        elif kind == "birth":
            self.gateway.on_birth(device, payload)
        elif kind == "state":
            self.gateway.on_state(device, payload)
        elif kind == "ack":  # a command's outcome: a device event
            self.gateway.on_ack(device, payload)
        ack()


class _Link:
    """One paho client: connect (with a persistent session when the id is stable), subscribe in
    on_connect, dispatch; its connection's story in the log."""

    QUICK_DROP_S = 5.0  # a connection the broker closes sooner than this after accepting it...
    QUICK_DROPS = 3  # ...this many times in a row: another client takes it over (same client id)

    def __init__(self, intake: MqttIntake, client_id: str, topics: list[tuple[str, int, bool]],
                 receive_maximum: int, persistent: bool = True) -> None:
        self.intake = intake
        self.client_id = client_id
        self.topics = topics  # (filter, qos, no_local)
        self.persistent = persistent
        self.receive_maximum = receive_maximum
        self.connected = False
        self.stopping = False
        self.down_since: float | None = time.monotonic()  # None while connected
        self.up_at = 0.0
        self.last_error = ""
        self.attempts = 0  # failed attempts in a row
        self.quick = 0  # connections closed soon after they were made, in a row
        config = intake.config
        client = Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, manual_ack=True,
                        host=config.host, port=config.port, tls=bool(config.tls or config.ca or config.cert))
        if config.tls_context is not None:
            client.tls_set_context(config.tls_context)
        elif config.tls or config.ca or config.cert:
            client.tls_set(ca_certs=config.ca, certfile=config.cert, keyfile=config.key,
                           cert_reqs=ssl.CERT_REQUIRED)
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_trouble = self._on_trouble
        self.client = client

    def start(self) -> None:
        config = self.intake.config
        props = Properties(PacketTypes.CONNECT)
        persistent = self.persistent and config.persistent  # a share group's data link, a per-process id: clean
        if persistent:
            props.SessionExpiryInterval = config.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        self.client.connect_async(config.host, config.port, config.keepalive, clean_start=not persistent,
                                  properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        self.stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: paho.Client, userdata: object, flags: paho.ConnectFlags,
                    reason: paho.ReasonCode, properties: Properties | None) -> None:
        fields = {"client_id": self.client_id, "reason": str(reason)}
        if reason.is_failure:
            client.refused(reason)  # logged by _on_trouble, with the next delay
            return
        client.accepted()
        client.subscribe([(topic, SubscribeOptions(qos=qos, noLocal=no_local)) for topic, qos, no_local in self.topics])
        self.connected = True
        self.up_at = time.monotonic()
        down_s = self.up_at - self.down_since if self.down_since is not None else 0.0
        self.down_since = None
        self.attempts = 0
        self.intake._connection_changed()
        config = self.intake.config
        log.info("connected to the broker", extra={"fields": {
            "event": "mqtt_connected", "broker": "%s:%d" % (config.host, config.port), **fields,
            "session_present": bool(flags.session_present), "offline_s": round(down_s, 1),
            "topics": " ".join(t[0] for t in self.topics)}})

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: paho.DisconnectFlags,
                       reason: paho.ReasonCode, properties: Properties | None) -> None:
        was_up = self.connected
        self.connected = False
        if self.down_since is None:
            self.down_since = time.monotonic()
        self.intake._connection_changed()
        if self.stopping:
            if was_up:
                log.info("disconnected from the broker", extra={"fields": {
                    "event": "mqtt_disconnected", "client_id": self.client_id, "reason": "stopping"}})
            return
        client.ended(flags, reason)  # logged by _on_trouble, with the next delay
        if was_up:
            self.quick = self.quick + 1 if time.monotonic() - self.up_at < self.QUICK_DROP_S else 0
            if self.quick == self.QUICK_DROPS:
                log.error("the broker keeps closing this connection right after accepting it: another client "
                          "uses the same client id", extra={"fields": {
                              "event": "mqtt_flapping", "client_id": self.client_id, "drops": self.quick,
                              "hint": "give each gateway its own --client-id or --state-dir; with "
                              "use_username_as_clientid the broker forces the certificate's name on both "
                              "connections (docs/security.md)"}})

    def _on_trouble(self, kind: str, text: str, retry_s: float) -> None:
        """A failed attempt or a broken connection (edge_wire.paho.Client), with the delay before the next."""
        self.last_error = text
        fields = {"client_id": self.client_id, "retry_s": round(retry_s, 1)}
        if kind == "broke":
            log.warning("disconnected from the broker", extra={"fields": {
                "event": "mqtt_disconnected", **fields, "reason": text}})
            return
        self.attempts += 1
        log.warning("cannot connect to the broker", extra={"fields": {
            "event": "mqtt_error", **fields, "attempt": self.attempts, "error": text}})

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        mid, qos = message.mid, message.qos

        def ack() -> None:
            if qos:
                client.ack(mid, qos)

        group = None
        for name, value in getattr(getattr(message, "properties", None), "UserProperty", None) or ():
            if name == "share-group":
                group = value
        try:
            self.intake.dispatch(message.topic, message.payload, ack, group)
        except Exception:  # never let one message kill the network thread
            log.exception("message handling failed", extra={"fields": {"event": "internal_error", "topic": message.topic}})
            ack()
