"""MQTT transport over paho-mqtt 2.x (CPython), behind the agent's Transport contract.

A token (the message id) stays valid across reconnects: paho keeps unacknowledged QoS 1
messages and sends them again (DUP) when the connection comes back.

paho runs its network loop in a thread of its own; connection and message events are queued here
and delivered by `poll()` in the agent's thread, so the agent core never needs a lock. Connection
problems are kept as the counters edge_agent.transport.linkstate reads (`errors`, `last_error`,
`retry_in_ms`, `reconnects`); the delays between attempts are linkstate's (edge_wire.paho.Client).
"""

import collections
import threading

import paho.mqtt.client as mqtt

from edge_wire.paho import RECONNECT_S, Backoff, Client, tls_context


class PahoTransport:
    def __init__(self, host, port, client_id, keepalive=30, username="", password="", tls=None,
                 will=None, reconnect=RECONNECT_S):
        """`tls`: None, or a dict (ca, cert, key, insecure, or a ready `context`); a file that cannot be
        used raises ValueError naming it. `reconnect`: (first, longest) delay between attempts."""
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.client_id = client_id
        self.client = Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             clean_session=True, host=host, port=port, tls=tls is not None,
                             backoff=Backoff(reconnect[0], reconnect[1]))
        if username:
            self.client.username_pw_set(username, password or None)
        if tls is not None:
            self.client.tls_set_context(tls.get("context") or tls_context(
                tls.get("ca"), tls.get("cert"), tls.get("key"), tls.get("insecure")))
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain)
        self.client.max_inflight_messages_set(20)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_publish = self._published
        self.client.on_trouble = self._trouble
        self.connected = False
        self.stopping = False
        self.reconnects = 0  # connections made
        self.errors = 0  # connection attempts that failed
        self.last_error = None  # why the latest attempt failed or the connection broke
        self.retry_in_ms = 0  # the wait before the next attempt
        self.events = collections.deque()
        self.wakeup = threading.Condition()
        self.acked_mids = {}  # mid -> None, insertion-ordered; capped (see _published)
        self.on_connect = None
        self.on_message = None

    # paho's thread -------------------------------------------------------------------------

    def _push(self, event):
        with self.wakeup:
            self.events.append(event)
            self.wakeup.notify()

    def _connected(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            client.refused(reason_code)
            return
        client.accepted()
        self._push(("connect", None, None))

    def _disconnected(self, client, userdata, flags, reason_code, properties):
        if not self.stopping:
            client.ended(flags, reason_code)
        self._push(("disconnect", None, None))

    def _trouble(self, kind, text, retry_s):
        self._push((kind, text, retry_s))

    def _message(self, client, userdata, message):
        self._push(("message", message.topic, message.payload))

    def _published(self, client, userdata, mid, reason_code, properties):
        with self.wakeup:
            self.acked_mids[mid] = None
            if len(self.acked_mids) > 4096:  # acks nobody asks about (births, state): forget the oldest
                del self.acked_mids[next(iter(self.acked_mids))]

    # the agent's thread -------------------------------------------------------------------

    def start(self, on_connect, on_message):
        self.on_connect = on_connect
        self.on_message = on_message
        self.client.connect_async(self.host, self.port, self.keepalive)
        self.client.loop_start()

    def publish(self, topic, payload, qos=1, retain=False):
        if not self.connected:
            return None
        if isinstance(payload, list):  # pieces (umqtt's chunked form): paho takes one buffer
            payload = b"".join(payload)
        info = self.client.publish(topic, payload, qos, retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS or (qos and info.rc == mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: the connection dropped before we heard of it; paho keeps a QoS 1 message
            # and sends it on the next connection, so it is in flight all the same (were it not
            # reported so, the outbox could count it lost, or send it twice)
            return info.mid
        return None

    def acked(self, token):
        with self.wakeup:
            if token in self.acked_mids:
                del self.acked_mids[token]
                return True
        return False

    def subscribe(self, topic, qos=1):
        if self.connected:
            self.client.subscribe(topic, qos)

    def poll(self, timeout_s):
        with self.wakeup:
            if not self.events and timeout_s > 0:
                self.wakeup.wait(timeout_s)
            events = list(self.events)
            self.events.clear()
        for kind, topic, payload in events:
            if kind == "connect":
                self.connected = True
                self.reconnects += 1
                if self.on_connect:
                    self.on_connect()
            elif kind == "disconnect":
                self.connected = False
            elif kind == "message":
                if self.on_message:
                    self.on_message(topic, payload)
            else:  # "failed" (an attempt) or "broke" (a connection): topic is why, payload the next wait
                self.last_error, self.retry_in_ms = topic, int(payload * 1000)
                if kind == "failed":
                    self.errors += 1

    def stop(self):
        self.stopping = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
        self.connected = False
