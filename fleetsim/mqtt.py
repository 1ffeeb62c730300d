"""A small asyncio MQTT 3.1.1 client: one TCP connection per simulated device, thousands per process.

What a device's agent does on the wire and nothing more: CONNECT with a clean session and a last
will, PUBLISH at QoS 0 or 1 (with PUBACK tracking), SUBSCRIBE, PINGREQ, and a reconnect with
backoff that tries the brokers it was given in turn (as a device behind a load balancer or a DNS
name with several addresses would land on another node). Its interface is the agent's transport
contract (docs/architecture.md): `publish(...)` returns a token, `acked(token)` says whether the
broker acknowledged it, `connected`, `subscribe`; `on_connect()` and `on_message(topic, payload)`
are called on the event loop.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = (
    0x10, 0x20, 0x30, 0x40, 0x82, 0x90, 0xC0, 0xD0, 0xE0)


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def packet(kind: int, body: bytes) -> bytes:
    return bytes((kind,)) + _length(len(body)) + body


class Client:
    def __init__(self, client_id: str, brokers: list[tuple[str, int]], keepalive: int = 60,
                 will: tuple[str, bytes, int, bool] | None = None, backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        self.client_id = client_id
        self.brokers = brokers
        self.keepalive = keepalive
        self.will = will
        self.backoff = backoff
        self.on_connect: Callable[[], None] = lambda: None
        self.on_message: Callable[[str, bytes], None] = lambda topic, payload: None
        self.on_puback: Callable[[], None] = lambda: None
        self.connected = False
        self.connects = 0  # successful connections
        self.failures = 0  # refused or broken attempts
        self._writer: asyncio.StreamWriter | None = None
        self._next_pid = 0
        self._next_token = 0
        self._inflight: dict[int, int] = {}  # packet id -> token, this connection
        self._acked: set[int] = set()
        self._broker = random.randrange(len(brokers))
        self._stopping = False

    # ------------------------------------------------------------ the transport contract

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int | None:
        writer = self._writer
        if not self.connected or writer is None:
            return None
        flags = PUBLISH | qos << 1 | (1 if retain else 0)
        if qos:
            self._next_pid = self._next_pid % 65535 + 1
            pid = self._next_pid
            self._next_token += 1
            self._inflight[pid] = self._next_token
            writer.write(packet(flags, _text(topic) + struct.pack("!H", pid) + payload))
            return self._next_token
        writer.write(packet(flags, _text(topic) + payload))
        return 0

    def acked(self, token: int) -> bool:
        if token in self._acked:
            self._acked.discard(token)
            return True
        return False

    def subscribe(self, topic: str, qos: int = 1) -> None:
        if self.connected and self._writer is not None:
            self._next_pid = self._next_pid % 65535 + 1
            self._writer.write(packet(SUBSCRIBE, struct.pack("!H", self._next_pid) + _text(topic) + bytes((qos,))))

    # ------------------------------------------------------------ connection

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff (trying the next broker) until `stop()`."""
        delay = self.backoff[0]
        while not self._stopping:
            host, port = self.brokers[self._broker % len(self.brokers)]
            try:
                await self._session(host, port)
                delay = self.backoff[0]
            except (OSError, asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError, ValueError):
                if not self._stopping:
                    self.failures += 1
            finally:
                self._drop()
            if self._stopping:
                return
            self._broker += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(self.backoff[1], delay * 2)

    def stop(self) -> None:
        self._stopping = True
        if self._writer is not None:
            try:
                if self.connected:
                    self._writer.write(packet(DISCONNECT, b""))
                self._writer.close()
            except (OSError, RuntimeError):
                pass

    def _drop(self) -> None:
        self.connected = False
        if self._writer is not None:
            try:
                self._writer.close()
            except (OSError, RuntimeError):
                pass
        self._writer = None
        self._inflight.clear()  # a clean session: unacknowledged messages are the caller's to send again

    async def _session(self, host: str, port: int) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        self._writer = writer
        flags = 0x02  # clean session
        payload = _text(self.client_id)
        if self.will:
            topic, message, qos, retain = self.will
            flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
            payload += _text(topic) + _text(message)
        writer.write(packet(CONNECT, _text("MQTT") + bytes((4, flags)) + struct.pack("!H", self.keepalive) + payload))
        kind, body = await asyncio.wait_for(self._read(reader), 10)
        if kind != CONNACK or len(body) < 2 or body[1] != 0:
            raise ConnectionError("connection refused (%s)" % (body[1] if len(body) > 1 else "?"))
        self.connected = True
        self.connects += 1
        self.on_connect()
        pinger = asyncio.ensure_future(self._ping(writer))
        try:
            while True:
                kind, body = await asyncio.wait_for(self._read(reader), self.keepalive * 1.5 + 5)
                if kind & 0xF0 == PUBLISH:
                    self._publish_in(kind, body, writer)
                elif kind == PUBACK:
                    token = self._inflight.pop(struct.unpack("!H", body[:2])[0], None)
                    if token is not None:
                        self._acked.add(token)
                        self.on_puback()
        finally:
            pinger.cancel()

    def _publish_in(self, kind: int, body: bytes, writer: asyncio.StreamWriter) -> None:
        size = struct.unpack("!H", body[:2])[0]
        topic = body[2:2 + size].decode("utf-8", "replace")
        rest = body[2 + size:]
        qos = kind >> 1 & 3
        if qos:
            writer.write(packet(PUBACK, rest[:2]))
            rest = rest[2:]
        self.on_message(topic, rest)

    async def _ping(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await asyncio.sleep(self.keepalive / 2)
            writer.write(packet(PINGREQ, b""))

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        kind = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ValueError("bad remaining length")
        return kind, await reader.readexactly(length) if length else b""
