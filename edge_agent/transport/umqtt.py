"""A small MQTT 3.1.1 client over `socket` and `select`, for MicroPython and CPython alike.

Trade-offs, stated first:
- QoS 0 and 1 only; QoS 2 is not supported, to keep the code small.
- No threads: all socket I/O happens inside `poll()`, and the callbacks run in the caller's thread.
- Reads happen only when `select.poll` says the socket is readable; a packet is then read whole with
  blocking reads bounded by the socket timeout. Writes are blocking and bounded by the same timeout.
- At most `max_inflight` unacknowledged QoS 1 messages: `publish` returns None when the window is
  full, as it does when not connected; the caller keeps the message and tries again later.
- Unacknowledged messages are sent again (DUP flag set) after `retry_s` and after every reconnect.
- An incoming packet larger than `rx_size` is skipped (and acknowledged if QoS 1) and counted in
  `dropped`, so one huge message cannot exhaust a small heap.
- Packets are built into one bytearray, except a PUBLISH payload: it is written after the packet's
  header as it is given (bytes, or a list of pieces such as wire.Chunks makes), never copied into
  one buffer, so sending a large message needs no large contiguous allocation. A QoS 1 message keeps
  its header and payload (the pieces) until its PUBACK. Incoming packets are read into one reused
  buffer.

Two layers, in the manner of micropython-lib's umqtt.simple and umqtt.robust:
  MQTTClient   the protocol: connect, publish, subscribe, ping and servicing a live connection
  Transport    the agent's Transport contract on top of it (docs/architecture.md): start, poll,
               stop, reconnect with exponential backoff and jitter
"""

import os
import select
import socket
import time

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython

    def ticks_ms():
        return time.monotonic_ns() // 1000000

    def ticks_diff(a, b):
        return a - b


CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
MAX_REMAINING = 268435455
SMALL = 128  # a payload up to this size is copied into the packet: one write


class MQTTError(OSError):
    """A protocol failure; the connection is unusable afterwards, like after any OSError."""


def _bytes(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def _der(path):
    """MicroPython's mbedtls takes DER only: the first PEM block of a file, decoded (or the file as is)."""
    from binascii import a2b_base64

    with open(path, "rb") as f:
        data = f.read()
    start = data.find(b"-----BEGIN")
    if start < 0:
        return data
    start = data.index(b"\n", start) + 1
    return a2b_base64(data[start:data.index(b"-----END", start)].replace(b"\n", b""))


def packet(first, remaining, room=None):
    """A bytearray for one packet with its fixed header written; returns (buf, index after it).

    The buffer holds `room` bytes after the fixed header (default: all `remaining` of them)."""
    if remaining > MAX_REMAINING:
        raise ValueError("MQTT packet too large")
    size = 1 if remaining < 0x80 else 2 if remaining < 0x4000 else 3 if remaining < 0x200000 else 4
    buf = bytearray(1 + size + (remaining if room is None else room))
    buf[0] = first
    i = 1
    while True:
        b = remaining & 0x7F
        remaining >>= 7
        buf[i] = b | 0x80 if remaining else b
        i += 1
        if not remaining:
            return buf, i


def put_str(buf, i, data):
    n = len(data)
    buf[i] = n >> 8
    buf[i + 1] = n & 0xFF
    buf[i + 2:i + 2 + n] = data
    return i + 2 + n


class MQTTClient:
    chunked = True  # publish takes a payload as a list of pieces (the agent then encodes into wire.Chunks)

    def __init__(self, client_id, host, port=1883, keepalive=60, username=None, password=None, will=None,
                 tls=None, clean_session=True, max_inflight=16, rx_size=2048, timeout_s=5, retry_s=20):
        if password and not username:
            raise ValueError("MQTT 3.1.1 needs a username to send a password")
        self.client_id = _bytes(client_id)
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.username = _bytes(username) if username else None  # "" is none, as in the config file
        self.password = _bytes(password) if password else None
        self.will = None if will is None else (_bytes(will[0]), _bytes(will[1]), will[2], bool(will[3]))
        self.tls = tls  # None, or a dict: ca, cert, key, insecure, server_hostname
        self.clean_session = clean_session
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self.retry_ms = int(retry_s * 1000)
        self.on_connect = None
        self.on_message = None
        self.sock = None
        self.dropped = 0  # incoming packets too large for rx_size
        self.sub_failures = 0  # SUBACK return code 0x80
        self._rx = bytearray(rx_size)
        self._one = bytearray(1)
        self._poller = None
        self._inflight = {}  # packet id -> [token, last send ms, packet]
        self._pid = 0
        self._token = 0
        self._ping_at = None
        self._last_tx = self._last_rx = ticks_ms()

    @property
    def connected(self):
        return self.sock is not None

    # ------------------------------------------------------------ connection

    def connect(self):
        """Open the connection and wait for CONNACK; returns the session-present flag."""
        self.close()
        ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
        sock = socket.socket(ai[0], socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout_s)
            sock.connect(ai[-1])
            if self.tls is not None:
                sock = self._wrap(sock)
            self._attach(sock)
            self._send(self._connect_packet())
            rx = self._rx
            self._recv(rx, 4)
            if rx[0] != CONNACK or rx[1] != 2:
                raise MQTTError("expected CONNACK, got 0x%02x" % rx[0])
            if rx[3]:
                raise MQTTError("connection refused, return code %d" % rx[3])
        except BaseException:
            self.close()
            sock.close()
            raise
        self._ping_at = None
        self._last_rx = ticks_ms()
        for pid in self._inflight:  # the broker may not have them: send again
            self._resend(self._inflight[pid])
        return rx[2] & 1

    def _wrap(self, sock):
        import ssl

        tls = self.tls
        hostname = tls.get("server_hostname", self.host)
        if not hasattr(ssl, "SSLContext"):  # older MicroPython ports
            return ssl.wrap_socket(sock, server_hostname=hostname)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cpython = hasattr(ctx, "load_default_certs")
        if tls.get("insecure"):
            if cpython:
                ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.verify_mode = ssl.CERT_REQUIRED  # MicroPython's client default is CERT_NONE
            if tls.get("ca"):
                ctx.load_verify_locations(cafile=tls["ca"]) if cpython else ctx.load_verify_locations(
                    cadata=_der(tls["ca"]))
            elif cpython:
                ctx.load_default_certs()
        if tls.get("cert"):
            if cpython:
                ctx.load_cert_chain(tls["cert"], tls.get("key"))
            else:
                ctx.load_cert_chain(_der(tls["cert"]), _der(tls.get("key") or tls["cert"]))
        return ctx.wrap_socket(sock, server_hostname=hostname)

    def _attach(self, sock, poller=None):
        self.sock = sock
        self._recv_into = getattr(sock, "readinto", None) or sock.recv_into
        self._write = getattr(sock, "sendall", None) or sock.write
        self._pending = getattr(sock, "pending", None)  # bytes TLS has decrypted but not handed out
        self._poller = poller or select.poll()
        self._poller.register(sock, select.POLLIN)

    def close(self):
        """Drop the socket without DISCONNECT (the broker then publishes the will)."""
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        poller, self._poller = self._poller, None
        if poller is not None:  # None when attaching it failed (MemoryError)
            try:
                poller.unregister(sock)
            except (OSError, KeyError, ValueError):
                pass
        try:
            sock.close()
        except OSError:
            pass

    def disconnect(self):
        """Say DISCONNECT (the will is discarded) and close."""
        if self.sock is not None:
            try:
                self._send(b"\xe0\x00")
            except OSError:
                pass
        self.close()

    def _connect_packet(self):
        cid, will, user, pw = self.client_id, self.will, self.username, self.password
        flags = 0x02 if self.clean_session else 0
        n = 12 + len(cid)
        if will:
            n += 4 + len(will[0]) + len(will[1])
            flags |= 0x04 | (will[2] << 3) | (will[3] << 5)
        if user is not None:
            n += 2 + len(user)
            flags |= 0x80
        if pw is not None:
            n += 2 + len(pw)
            flags |= 0x40
        buf, i = packet(CONNECT, n)
        buf[i:i + 7] = b"\x00\x04MQTT\x04"
        buf[i + 7] = flags
        buf[i + 8] = self.keepalive >> 8
        buf[i + 9] = self.keepalive & 0xFF
        i = put_str(buf, i + 10, cid)
        if will:
            i = put_str(buf, put_str(buf, i, will[0]), will[1])
        if user is not None:
            i = put_str(buf, i, user)
        if pw is not None:
            put_str(buf, i, pw)
        return buf

    # ------------------------------------------------------------ sending

    def _send(self, data):
        n = self._write(data)
        if n is not None and n < len(data):  # MicroPython's write returns short on a timeout
            raise MQTTError("write timed out")
        self._last_tx = ticks_ms()

    def _send_message(self, head, payload):
        """Write a packet given as its head and the payload that follows it (None, bytes or pieces).

        A MemoryError between two writes would leave half a packet on the wire: the connection is
        closed instead (the caller sees an MQTTError; a QoS 1 message goes again after reconnecting).
        """
        try:
            self._send(head)
            if isinstance(payload, list):
                for piece in payload:
                    self._send(piece)
            elif payload is not None:
                self._send(payload)
        except MemoryError:
            self.close()
            raise MQTTError("out of memory while sending")

    def publish(self, topic, payload, qos=1, retain=False):
        """Send a message; returns a token for `acked`, or None when not connected or the window is full.

        `payload` is bytes, str, or a list of byte pieces (bytes, bytearray, memoryview) sent one
        after the other as one message; the pieces must not change until the message is acked."""
        if self.sock is None or (qos and len(self._inflight) >= self.max_inflight):
            return None
        if qos not in (0, 1):
            raise ValueError("QoS 2 is not supported")
        topic = _bytes(topic)
        if isinstance(payload, str):
            payload = payload.encode()
        if isinstance(payload, list):
            size = 0
            for piece in payload:
                size += len(piece)
        else:
            size = len(payload)
        head = 2 + len(topic) + 2 * qos
        small = size <= SMALL and not isinstance(payload, list)
        buf, i = packet(PUBLISH | (qos << 1) | (1 if retain else 0), head + size, head + size if small else head)
        i = put_str(buf, i, topic)
        if small:
            buf[i + 2 * qos:] = payload
            payload = None
        pid = self._next_pid() if qos else 0
        if qos:
            buf[i] = pid >> 8
            buf[i + 1] = pid & 0xFF
            self._inflight[pid] = [self._token + 1, ticks_ms(), buf, payload]
        self._token += 1
        self._send_message(buf, payload)
        return self._token

    def acked(self, token):
        """True once the message of `token` needs nothing more (PUBACK seen, or QoS 0 sent)."""
        for entry in self._inflight.values():
            if entry[0] == token:
                return False
        return True

    def subscribe(self, topic, qos=1):
        """Send SUBSCRIBE; returns its packet id, or None when not connected."""
        if self.sock is None:
            return None
        topic = _bytes(topic)
        buf, i = packet(SUBSCRIBE, 5 + len(topic))
        pid = self._next_pid()
        buf[i] = pid >> 8
        buf[i + 1] = pid & 0xFF
        buf[put_str(buf, i + 2, topic)] = min(qos, 1)
        self._send(buf)
        return pid

    def ping(self):
        self._send(b"\xc0\x00")
        self._ping_at = ticks_ms()

    def _next_pid(self):
        pid = self._pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self._inflight:
                self._pid = pid
                return pid

    def _resend(self, entry):
        entry[2][0] |= 0x08  # DUP
        self._send_message(entry[2], entry[3])
        entry[1] = ticks_ms()

    # ------------------------------------------------------------ receiving

    def _recv(self, buf, n):
        """Read exactly n bytes into buf (blocking, bounded by the socket timeout)."""
        got = self._recv_into(buf, n)
        while got and got < n:  # a short read: rare, so the memoryview is made only here
            more = self._recv_into(memoryview(buf)[got:], n - got)
            if not more:
                break
            got += more
        if not got or got < n:
            raise MQTTError("connection closed by the broker")

    def _read_packet(self):
        one, rx = self._one, self._rx
        self._recv(one, 1)
        kind = one[0]
        n = shift = 0
        while True:
            self._recv(one, 1)
            n |= (one[0] & 0x7F) << shift
            if not one[0] & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("malformed remaining length")
        head = min(n, len(rx))
        if head:
            self._recv(rx, head)
        self._last_rx = ticks_ms()
        op = kind & 0xF0
        if op == PUBLISH:
            self._on_publish(kind, n, head)
        elif op == PUBACK and n == 2:
            self._inflight.pop((rx[0] << 8) | rx[1], None)
        elif op == SUBACK and n >= 3:
            if rx[2] & 0x80:
                self.sub_failures += 1
        elif op == PINGRESP:
            self._ping_at = None
        else:
            raise MQTTError("unexpected packet 0x%02x" % kind)

    def _on_publish(self, kind, n, head):
        rx = self._rx
        qos = (kind >> 1) & 3
        tlen = (rx[0] << 8) | rx[1]
        p = 2 + tlen + (2 if qos else 0)
        if qos > 1 or p > n:
            raise MQTTError("bad PUBLISH")
        if p > head:
            raise MQTTError("PUBLISH topic longer than the receive buffer")
        pid = (rx[p - 2] << 8) | rx[p - 1] if qos else 0
        try:
            if n > head:  # too large for the buffer: skip the rest of it
                left = n - head
                while left:
                    k = min(left, len(rx))
                    self._recv(rx, k)
                    left -= k
                self.dropped += 1
            elif self.on_message is not None:
                mv = memoryview(rx)
                try:
                    topic = str(mv[2:2 + tlen], "utf-8")
                except UnicodeError:
                    raise MQTTError("PUBLISH topic is not UTF-8")
                self.on_message(topic, bytes(mv[p:n]))
        finally:
            if qos:  # acknowledged once handled, even when the handler failed: no redelivery loop
                self._send(bytes((PUBACK, 2, pid >> 8, pid & 0xFF)))

    def _service(self):
        """Keepalive and retransmission; returns the ms until it needs to run again."""
        now = ticks_ms()
        wait = 3600000
        if self.keepalive:
            ka = self.keepalive * 1000
            if self._ping_at is not None:
                wait = max(ka // 2, 1000) - ticks_diff(now, self._ping_at)
                if wait <= 0:
                    raise MQTTError("no PINGRESP: connection is dead")
            else:
                wait = ka - max(ticks_diff(now, self._last_tx), ticks_diff(now, self._last_rx))
                if wait <= 0:
                    self.ping()
                    wait = max(ka // 2, 1000)
        for pid in self._inflight:
            entry = self._inflight[pid]
            left = self.retry_ms - ticks_diff(now, entry[1])
            if left <= 0:
                self._resend(entry)
                left = self.retry_ms
            wait = min(wait, left)
        return wait

    def wait_msg(self, timeout_ms):
        """Service the live connection for up to timeout_ms; raises OSError when it breaks."""
        start = ticks_ms()
        budget = 64  # packets handled after the deadline, so a flood cannot hold the caller
        while self.sock is not None and budget:
            wait = self._service()
            left = max(0, timeout_ms - ticks_diff(ticks_ms(), start))
            if wait > left:
                wait = left
            if (self._pending and self._pending()) or self._poller.poll(wait):
                self._read_packet()
                if not left:
                    budget -= 1
            elif wait == left:
                return


class Transport(MQTTClient):
    """The agent's transport: MQTTClient plus reconnection with exponential backoff and jitter.

    Takes the same arguments as the paho adapter (edge_agent/transport/paho.py), so either can be
    handed to the agent; `reconnect` is (first, longest) delay in seconds.
    """

    def __init__(self, host, port=1883, client_id="edge-agent", keepalive=60, username=None, password=None,
                 tls=None, will=None, reconnect=(1, 60), **options):
        MQTTClient.__init__(self, client_id, host, port, keepalive, username, password, will, tls, **options)
        self.backoff_min_ms = int(reconnect[0] * 1000)
        self.backoff_max_ms = int(reconnect[1] * 1000)
        self.backoff_ms = 0  # 0: try at once
        self.retry_in_ms = 0
        self.down_at = ticks_ms()
        self.reconnects = 0
        self.last_error = None
        self.running = False

    def start(self, on_connect, on_message):
        """Register the callbacks; the first `poll` connects."""
        self.on_connect = on_connect
        self.on_message = on_message
        self.running = True

    def stop(self):
        self.running = False
        self.disconnect()

    def _lost(self, exc):
        self.close()
        self.last_error = repr(exc)
        self.down_at = ticks_ms()
        delay = min(max(2 * self.backoff_ms, self.backoff_min_ms), self.backoff_max_ms)
        self.backoff_ms = delay
        self.retry_in_ms = delay // 2 + (delay // 2) * os.urandom(1)[0] // 255

    def poll(self, timeout_s):
        """Do socket I/O for up to timeout_s, connecting when it is time to; callbacks run here."""
        timeout_ms = int(timeout_s * 1000)
        start = ticks_ms()
        while True:
            left = timeout_ms - ticks_diff(ticks_ms(), start)
            if self.sock is None:
                due = self.retry_in_ms - ticks_diff(ticks_ms(), self.down_at) if self.backoff_ms else 0
                if self.running and due <= 0:
                    try:
                        self.connect()
                    except OSError as exc:
                        self._lost(exc)
                        continue
                    self.reconnects += 1
                    self.backoff_ms = 0
                    if self.on_connect is not None:
                        self.on_connect()
                    continue
                wait = left if not self.running or due > left else due
                if wait > 0:
                    time.sleep(wait / 1000)
                if wait == left:
                    return
                continue
            try:
                self.wait_msg(max(0, left))
            except OSError as exc:
                self._lost(exc)
                continue
            return

    def publish(self, topic, payload, qos=1, retain=False):
        try:
            return MQTTClient.publish(self, topic, payload, qos, retain)
        except OSError as exc:  # a QoS 1 message stays in flight and goes again after reconnecting
            token = self._token
            self._lost(exc)
            return token if qos else None

    def subscribe(self, topic, qos=1):
        try:
            return MQTTClient.subscribe(self, topic, qos)
        except OSError as exc:
            self._lost(exc)
            return None
