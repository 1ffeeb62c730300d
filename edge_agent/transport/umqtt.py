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
  header as it is given (bytes, or a list of pieces such as edge_wire.batch.Chunks makes), never copied into
  one buffer, so sending a large message needs no large contiguous allocation. A QoS 1 message keeps
  its header and payload (the pieces) until its PUBACK. A payload may also be an object that writes
  itself as it is encoded (`write_to(write)`, with `len()` its size; `streams`): the agent's birth
  (edge_wire.birth.StreamedBirth), so that what waits for its PUBACK is not the encoded birth. Incoming packets are read into one reused
  buffer.
- Built for a small heap (bytecode loaded from .mpy lives in the heap on MicroPython's unix port):
  what only a connection attempt needs (socket, TLS and certificates, CONNECT, SUBSCRIBE, the
  reconnect delays) and DISCONNECT are in umqtt_connect, imported for the attempt (or the stop) and
  released afterwards. This module keeps the live connection: publish and PUBACK, incoming
  messages, keepalive, retransmission.

Protocol failures raise OSError, as socket failures do: the connection is unusable afterwards
(`poll` closes it and `last_error` says why).
"""

import errno

from edge_agent.clock import mono_ms, sleep_s


class Transport:
    """The agent's transport (docs/architecture.md): an MQTT client that reconnects by itself with
    exponential backoff and jitter.

    Takes the same arguments as the paho adapter (edge_agent/transport/paho.py), so either can be
    handed to the agent; `reconnect` is (first, longest) delay in seconds.
    """

    chunked = True  # publish takes a payload as a list of pieces (the agent then encodes into edge_wire.batch.Chunks)
    streams = True  # ... or as an object it writes as it encodes it (`write_to`, edge_wire.birth.StreamedBirth)

    def __init__(self, host, port=1883, client_id="edge-agent", keepalive=60, username=None, password=None,
                 tls=None, will=None, reconnect=(1, 16), clean_session=True, max_inflight=16, rx_size=2048,
                 timeout_s=5, retry_s=20):
        if password and not username:
            raise ValueError("a password needs a username")  # MQTT 3.1.1
        # what umqtt_connect needs; strings are encoded there ("" username or password: none)
        self.host = host
        self.port = port
        self.client_id = client_id
        self.username = username
        self.password = password
        self.will = will  # (topic, payload, qos, retain) or None
        self.tls = tls  # None, or a dict: ca, cert, key, insecure, server_hostname
        self.tls_context = None  # made once, by umqtt_connect.context
        self.clean_session = clean_session
        self.timeout_s = timeout_s
        self.reconnect = reconnect
        self.keepalive = keepalive
        self.max_inflight = max_inflight
        self.retry_ms = int(retry_s * 1000)
        self.on_connect = None
        self.on_message = None
        self.sock = None
        self.connected = False
        self.running = False
        self.dropped = 0  # incoming packets too large for rx_size
        self.reconnects = 0
        self.errors = 0  # connections (and connection attempts) that failed; last_error says why
        self.last_error = None
        self.backoff_ms = 0  # the latest reconnect delay (umqtt_connect doubles it after a failure)
        self.retry_in_ms = 0  # when the connection is down, the next attempt, counted from down_at
        self.down_at = mono_ms()
        self._rx = bytearray(rx_size)
        self._poller = None
        self._inflight = {}  # packet id -> [token, last send ms, header, payload]
        self._pid = 0
        self._token = 0

    def start(self, on_connect, on_message):
        """Register the callbacks; the first `poll` connects."""
        self.on_connect = on_connect
        self.on_message = on_message
        self.running = True

    def stop(self):
        """Say DISCONNECT (the broker then discards the will), close, and connect no more.

        Resident, not in umqtt_connect: a stop may come when the heap has no room to load a module."""
        self.running = False
        try:
            if self.sock is not None:
                self._send(b"\xe0\x00")
        except OSError:
            pass
        self.close()

    def close(self, error=None):
        """Drop the socket without DISCONNECT (the broker then publishes the will).

        Given the error that broke the connection (or a connection attempt), also start counting
        down to the next attempt (`retry_in_ms`, chosen by umqtt_connect)."""
        sock, poller = self.sock, self._poller
        self.sock = self._poller = None
        self.connected = False
        if poller is not None:  # None when attaching it failed (MemoryError)
            try:
                poller.unregister(self._polled)  # the socket, or the one under TLS (umqtt_connect.attach)
            except (OSError, KeyError, ValueError):
                pass
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        if error is not None:
            self.errors += 1
            self.last_error = repr(error)
            self.down_at = mono_ms()

    # ------------------------------------------------------------ sending

    def _send(self, data, payload=None):
        """Write one packet: `data`, then `payload` when given (bytes, or a list of pieces).

        A MemoryError between two writes would leave half a packet on the wire: the connection is
        closed instead and the caller sees an OSError (a QoS 1 message goes again after reconnecting).
        """
        stream = getattr(payload, "write_to", None)  # encoded as it is written (edge_wire.birth.StreamedBirth)
        pieces = payload if isinstance(payload, list) else () if payload is None or stream else [payload]
        i = -1  # -1: data, then the pieces
        try:
            while i < len(pieces):
                piece = pieces[i] if i >= 0 else data
                i += 1
                n = self._write(piece)
                if n is not None and n < len(piece):  # MicroPython's write returns short on a timeout
                    raise OSError(errno.ETIMEDOUT)
            if stream is not None:
                stream(self._write)
        except MemoryError:
            self.close()
            raise OSError(errno.ENOMEM)
        self._last_tx = mono_ms()

    def next_pid(self):
        """The next packet id not in flight (PUBLISH QoS 1 here, SUBSCRIBE in umqtt_connect)."""
        pid = self._pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self._inflight:
                break
        self._pid = pid
        return pid

    def publish(self, topic, payload, qos=1, retain=False):
        """Send a message; returns a token for `acked`, or None when not connected or the window is full.

        `payload` is bytes, str, or a list of byte pieces (bytes, bytearray, memoryview) sent one
        after the other as one message; the pieces must not change until the message is acked.
        A QoS 1 message whose sending fails stays in flight (it has a token) and goes again after
        reconnecting."""
        if self.sock is None or (qos and len(self._inflight) >= self.max_inflight):
            return None
        if isinstance(topic, str):
            topic = topic.encode()
        if isinstance(payload, str):
            payload = payload.encode()
        if isinstance(payload, list):
            size = 0
            for piece in payload:
                size += len(piece)
        else:
            size = len(payload)
        head = 2 + len(topic) + 2 * qos  # the variable header
        small = size <= 128 and isinstance(payload, (bytes, bytearray, memoryview))  # copied in: one write
        n = head + size  # the remaining length, 7 bits a byte in the fixed header
        if qos not in (0, 1) or n > 268435455:
            raise ValueError("QoS 2, or a packet over 256 MB")
        i = 2  # the fixed header's size
        while n >> 7 * (i - 1):
            i += 1
        buf = bytearray(i + (n if small else head))
        buf[0] = 0x30 | (qos << 1) | (1 if retain else 0)  # PUBLISH
        for k in range(1, i):
            buf[k] = (n >> (7 * k - 7)) & 0x7F | (0x80 if k < i - 1 else 0)
        n = len(topic)
        buf[i] = n >> 8
        buf[i + 1] = n & 0xFF
        i += 2 + n
        buf[i - n:i] = topic
        if small:
            buf[i + 2 * qos:] = payload
            payload = None
        self._token += 1
        if qos:
            pid = self.next_pid()
            buf[i] = pid >> 8
            buf[i + 1] = pid & 0xFF
            self._inflight[pid] = [self._token, mono_ms(), buf, payload]
        try:
            self._send(buf, payload)
        except OSError as exc:
            self.close(exc)
            return self._token if qos else None
        return self._token

    def acked(self, token):
        """True once the message of `token` needs nothing more (PUBACK seen, or QoS 0 sent)."""
        for entry in self._inflight.values():
            if entry[0] == token:
                return False
        return True

    def subscribe(self, topic, qos=1):
        """Send SUBSCRIBE (QoS 2 asks for 1); returns its packet id, or None when not connected."""
        if self.sock is None:
            return None
        import edge_agent.transport.umqtt_connect

        return edge_agent.transport.umqtt_connect.subscribe(self, topic, qos)

    # ------------------------------------------------------------ the live connection

    def poll(self, timeout_s):
        """Do socket I/O for up to timeout_s, connecting when it is time to; callbacks run here."""
        end = mono_ms() + int(timeout_s * 1000)
        budget = 64  # packets handled after the deadline, so a flood cannot hold the caller
        while budget:
            now = mono_ms()
            left = max(0, end - now)
            if self.sock is None:
                due = self.down_at + self.retry_in_ms - now
                if self.running and due <= 0:
                    # connects (or schedules the next attempt) and calls on_connect; the module
                    # releases itself when done
                    import edge_agent.transport.umqtt_connect

                    edge_agent.transport.umqtt_connect.connect(self)
                    continue
                wait = left if not self.running or due > left else due
                sleep_s(wait / 1000)
                if wait == left:
                    return
                continue
            try:
                wait = left
                ka = self.keepalive * 1000
                if ka:  # PINGREQ when idle that long; no PINGRESP in half of it: the connection is dead
                    if self._ping_at is None:
                        due = ka - (now - min(self._last_tx, self._last_rx))
                        if due <= 0:
                            self._send(b"\xc0\x00")  # PINGREQ
                            self._ping_at = now
                    if self._ping_at is not None:
                        due = max(ka // 2, 1000) - (now - self._ping_at)
                        if due <= 0:
                            raise OSError("no PINGRESP")
                    wait = min(wait, due)
                for entry in self._inflight.values():  # unacknowledged for retry_ms: again, DUP set
                    due = self.retry_ms - (now - entry[1])
                    if due <= 0:
                        entry[2][0] |= 0x08
                        self._send(entry[2], entry[3])
                        entry[1] = now
                        due = self.retry_ms
                    wait = min(wait, due)
                if (self._pending and self._pending()) or self._poller.poll(wait):
                    self._read_packet()
                    if not left:
                        budget -= 1
                elif wait == left:
                    return
            except OSError as exc:
                self.close(exc)

    def _recv(self, buf, n):
        """Read exactly n bytes into buf (blocking, bounded by the socket timeout)."""
        got = self._recv_into(buf, n)
        while got and got < n:  # a short read: rare, so the memoryview is made only here
            more = self._recv_into(memoryview(buf)[got:], n - got)
            if not more:
                break
            got += more
        if not got or got < n:
            raise OSError(errno.ECONNRESET)  # closed by the broker

    def _read_packet(self):
        """Read one packet and act on it: PUBLISH (delivered, then acked if QoS 1), PUBACK, SUBACK,
        PINGRESP. A refused subscription (SUBACK 0x80) is not retried. Another packet, or one that
        does not parse, raises OSError "bad packet" with its first byte."""
        rx = self._rx
        self._recv(rx, 1)
        kind = rx[0]
        n = shift = 0
        while True:  # the remaining length, one byte at a time
            self._recv(rx, 1)
            n |= (rx[0] & 0x7F) << shift
            if not rx[0] & 0x80:
                break
            shift += 7
            if shift > 21:  # more than 4 bytes
                raise OSError("bad packet 0x%02x" % kind)
        head = min(n, len(rx))
        if head:
            self._recv(rx, head)
        self._last_rx = mono_ms()
        op = kind & 0xF0
        if op == 0x40 and n == 2:  # PUBACK
            self._inflight.pop((rx[0] << 8) | rx[1], None)
            return
        if op == 0xD0:  # PINGRESP
            self._ping_at = None
            return
        if op == 0x90 and n >= 3:  # SUBACK
            return
        qos = (kind >> 1) & 3  # a PUBLISH, if anything
        tlen = (rx[0] << 8) | rx[1]
        p = 2 + tlen + (2 if qos else 0)  # where its payload starts
        if op != 0x30 or qos > 1 or p > head:  # p > head: as well a topic longer than the receive buffer
            raise OSError("bad packet 0x%02x" % kind)
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
                    raise OSError("bad packet 0x%02x" % kind)
                self.on_message(topic, bytes(mv[p:n]))
        finally:
            if qos:  # acknowledged once handled, even when the handler failed: no redelivery loop
                self._send(bytes((0x40, 2, pid >> 8, pid & 0xFF)))
