"""What the broker's retained messages say about the fleet: births, online state, gateway status.

Shared by `edge-gateway tune` (who should answer a command) and `edge-gateway devices` (the
table). Connects with the same broker options as `run`, subscribes, and gathers retained
messages until the flow goes quiet.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field

import msgpack
import paho.mqtt.client as paho

from edge_wire.paho import describe
from gateway.ingest.mqtt import BrokerConfig


@dataclass
class Device:
    name: str
    state: str = "unknown"
    group: str = ""
    agent: str = ""
    sampling: dict = field(default_factory=dict)
    interval_ms: int | None = None
    collectors: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)  # published by gateways: last_seen, lag_ms, ...


def connect(config: BrokerConfig, topics: list[str], timeout_s: float = 10.0) -> tuple[paho.Client, queue.Queue]:
    """A connected client subscribed to `topics`; messages arrive as (topic, payload) on the queue.

    ConnectionError says in one line why there is none (unreachable, refused, TLS, no answer)."""
    inbox: queue.Queue = queue.Queue()
    ready = threading.Event()
    refused: list[str] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=paho.MQTTv5)
    if config.tls_context is not None:
        client.tls_set_context(config.tls_context)
    elif config.tls or config.ca:
        client.tls_set(ca_certs=config.ca, certfile=config.cert, keyfile=config.key)
    if config.username is not None:
        client.username_pw_set(config.username, config.password)

    def on_connect(c: paho.Client, userdata: object, flags: object, reason: paho.ReasonCode, props: object) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            ready.set()
            return
        c.subscribe([(t, 1) for t in topics])

    def on_subscribe(c: paho.Client, userdata: object, mid: int, codes: list, props: object) -> None:
        ready.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = lambda c, u, m: inbox.put((m.topic, m.payload))
    try:
        client.connect(config.host, config.port, 30)
    except OSError as exc:
        raise ConnectionError(describe(exc, config.host, config.port, config.tls or bool(config.ca))) from None
    client.loop_start()
    if not ready.wait(timeout_s) or refused:
        client.loop_stop()
        if refused:
            raise ConnectionError("the broker at %s:%d refused the connection: %s" % (config.host, config.port, refused[0]))
        raise ConnectionError("no answer from the broker at %s:%d within %g s%s" % (
            config.host, config.port, timeout_s, "" if config.tls else " (is it a TLS port? then use mqtts://)"))
    return client, inbox


def gather(inbox: queue.Queue, prefix: str, quiet_s: float = 0.5, limit_s: float = 5.0) -> dict[str, Device]:
    """Read retained messages until none arrived for `quiet_s` (at most `limit_s`)."""
    devices: dict[str, Device] = {}
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            topic, payload = inbox.get(timeout=quiet_s)
        except queue.Empty:
            break
        note(devices, prefix, topic, payload)
    return devices


def note(devices: dict[str, Device], prefix: str, topic: str, payload: bytes) -> None:
    parts = topic[len(prefix) + 1:].split("/")
    if len(parts) == 2 and parts[0] == "_status":
        name, kind = parts[1], "status"
    elif len(parts) == 2 and not parts[0].startswith("_"):
        name, kind = parts
    else:
        return
    device = devices.setdefault(name, Device(name))
    try:
        if kind == "state":
            device.state = payload.decode(errors="replace") or "unknown"
        elif kind == "birth":
            birth = msgpack.unpackb(payload, strict_map_key=False)
            device.group = str(birth.get("group", ""))
            device.agent = str(birth.get("agent", ""))
            device.sampling = birth.get("sampling") or {}
            device.interval_ms = birth.get("interval_ms")
            device.collectors = birth.get("collectors") or {}
        elif kind == "status":
            device.status = json.loads(payload)
    except (ValueError, TypeError, AttributeError, msgpack.ExtraData):
        pass  # a damaged retained message leaves the fields it would have set empty
