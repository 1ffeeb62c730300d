"""What umqtt's Transport needs only while (re)connecting: the socket, TLS and its certificates,
CONNECT and CONNACK, SUBSCRIBE (the agent subscribes from on_connect), the reconnect delays.

Transport.poll imports this module for a connection attempt; when the attempt and the on_connect
callback are over, the module releases itself (`release`): on MicroPython, forgotten by sys.modules
and its package, its code is collected (the names it interned stay). A subscribe outside an
attempt loads it for that one call. On CPython it stays loaded: releasing would save
nothing.
"""

import os
import select
import socket
import sys

from edge_agent.clock import mono_ms

connecting = False  # inside connect(): a subscribe from on_connect leaves the release to it (`release`)


def connect(transport):
    """One connection attempt of `transport` (umqtt.Transport): connect, CONNECT, CONNACK, send again what
    is in flight, then call on_connect. A failure (OSError) schedules the next attempt.

    Reconnect delays: the first is reconnect[0], each failed attempt doubles it up to reconnect[1],
    and a random part of up to half is taken off so that a fleet does not come back all at once.
    The delay after a success (reconnect[0]) is chosen now, for when the connection breaks."""
    global connecting
    connecting = True
    sock = None
    failed = False
    try:
        try:
            ai = socket.getaddrinfo(transport.host, transport.port, 0, socket.SOCK_STREAM)[0]
            sock = socket.socket(ai[0], socket.SOCK_STREAM)
            sock.settimeout(transport.timeout_s)
            sock.connect(ai[-1])
            raw = sock
            if transport.tls is not None:
                sock = wrap(transport, sock)
            attach(transport, sock, raw=raw)
            transport._send(connect_packet(transport))
            rx = transport._rx
            transport._recv(rx, 4)
            if rx[0] != 0x20 or rx[1] != 2:
                raise OSError("expected CONNACK, got 0x%02x" % rx[0])
            if rx[3]:
                raise OSError("connection refused, return code %d" % rx[3])
            transport._last_rx = mono_ms()
            for entry in transport._inflight.values():  # the broker may not have them: again, DUP set
                entry[2][0] |= 0x08
                transport._send(entry[2], entry[3])
                entry[1] = mono_ms()
        except BaseException as exc:
            failed = isinstance(exc, OSError)
            transport.close(exc if failed else None)
            if sock is not None:
                sock.close()
            if not failed:
                raise
        lo, hi = transport.reconnect
        delay = min(max(2 * transport.backoff_ms, int(lo * 1000)), int(hi * 1000)) if failed else int(lo * 1000)
        transport.backoff_ms = delay
        transport.retry_in_ms = delay // 2 + (delay // 2) * os.urandom(1)[0] // 255
        if failed:
            return
        transport.reconnects += 1
        if transport.on_connect is not None:
            transport.on_connect()
    finally:
        connecting = False
        release()


def attach(transport, sock, poller=None, raw=None):
    """Make `sock` the transport's connection (the tests hand in a fake socket and poller); `raw` is the
    socket under `sock` when that is a TLS socket."""
    transport.sock = sock
    transport.connected = True
    transport._recv_into = getattr(sock, "readinto", None) or sock.recv_into
    transport._write = getattr(sock, "sendall", None) or sock.write
    transport._pending = getattr(sock, "pending", None)  # bytes TLS has decrypted but not handed out
    transport._ping_at = None  # no PINGREQ unanswered
    transport._last_tx = transport._last_rx = mono_ms()
    transport._poller = poller or select.poll()
    transport._polled = sock
    if raw is not None and raw is not sock and transport._pending is None:
        # MicroPython's TLS socket has no file descriptor, so select.poll would ask it every
        # millisecond (30 ms of CPU a second on x86_64): wait on the socket under it instead, and ask
        # the TLS socket, without waiting, whether it already holds decrypted bytes
        decrypted = select.poll()
        decrypted.register(sock, select.POLLIN)
        transport._pending = lambda: decrypted.poll(0)
        transport._polled = raw
    transport._poller.register(transport._polled, select.POLLIN)


def wrap(transport, sock):
    """The TLS socket over `sock`, as transport.tls says: ca, cert, key, insecure, server_hostname.

    A failed handshake or certificate check raises OSError, as on CPython (ssl.SSLError): on
    MicroPython mbedtls raises ValueError (a server certificate that fails verification, a local
    certificate or key it cannot parse), which would otherwise end the agent instead of a retry."""
    tls = transport.tls
    try:
        ctx = context(transport)
        if ctx is None:  # older MicroPython ports: no SSLContext
            import ssl

            return ssl.wrap_socket(sock, server_hostname=tls.get("server_hostname", transport.host))
        return ctx.wrap_socket(sock, server_hostname=tls.get("server_hostname", transport.host))
    except ValueError as exc:
        raise OSError("TLS: %s" % exc)


def context(transport):
    """The transport's TLS context (certificates loaded), made once and kept for every connection.

    On MicroPython it is one block of ~3 KB (64-bit; ~1.7 KB on 32-bit) in the heap, which a small heap
    has in one piece at start-up but maybe not later: edge_agent.device.setup makes it then (a ValueError here is a
    certificate or key mbedtls cannot parse)."""
    ctx = getattr(transport, "tls_context", None)
    if ctx is not None:
        return ctx
    tls = transport.tls
    cpython = sys.implementation.name != "micropython"
    if cpython:
        import ssl
    else:
        try:
            import tls as ssl  # 1.23 and later: the C module (micropython-lib's `ssl` only wraps it)
        except ImportError:
            return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.get("insecure"):
        if cpython:
            ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED  # MicroPython's client default is CERT_NONE
        if tls.get("ca"):
            # MicroPython's tls takes the certificate itself (positional only), CPython's a file
            ctx.load_verify_locations(cafile=tls["ca"]) if cpython else ctx.load_verify_locations(der(tls["ca"]))
        elif cpython:
            ctx.load_default_certs()
    if tls.get("cert"):
        if cpython:
            ctx.load_cert_chain(tls["cert"], tls.get("key"))
        else:
            ctx.load_cert_chain(der(tls["cert"]), der(tls.get("key") or tls["cert"]))
    transport.tls_context = ctx
    return ctx


def der(path):
    """MicroPython's mbedtls takes DER only: the first PEM block of a file, decoded (or the file as is)."""
    from binascii import a2b_base64

    with open(path, "rb") as f:
        data = f.read()
    start = data.find(b"-----BEGIN")
    if start < 0:
        return data
    start = data.index(b"\n", start) + 1
    return a2b_base64(data[start:data.index(b"-----END", start)].replace(b"\n", b""))


def connect_packet(transport):
    """CONNECT: clean session, keepalive, client id, then the will, username and password if any."""
    fields = [transport.client_id]
    flags = 0x02 if transport.clean_session else 0
    will = transport.will
    if will:
        fields += will[0], will[1]
        flags |= 0x04 | (will[2] << 3) | ((1 if will[3] else 0) << 5)
    if transport.username:  # "" is none, as in the config file
        fields.append(transport.username)
        flags |= 0x80
    if transport.password:
        fields.append(transport.password)
        flags |= 0x40
    n = 10
    for k in range(len(fields)):
        if isinstance(fields[k], str):
            fields[k] = fields[k].encode()
        n += 2 + len(fields[k])
    buf, i = packet(0x10, n)
    buf[i:i + 7] = b"\x00\x04MQTT\x04"
    buf[i + 7] = flags
    buf[i + 8] = transport.keepalive >> 8
    buf[i + 9] = transport.keepalive & 0xFF
    i += 10
    for field in fields:  # each with its two-byte length
        n = len(field)
        buf[i] = n >> 8
        buf[i + 1] = n & 0xFF
        buf[i + 2:i + 2 + n] = field
        i += 2 + n
    return buf


def packet(first, remaining, room=None):
    """A bytearray for one packet with its fixed header written; returns (buf, index after it).

    The buffer holds `room` bytes after the fixed header (default: all `remaining` of them)."""
    if remaining > 268435455:
        raise ValueError("packet too large")
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


def subscribe(transport, topic, qos):
    """Transport.subscribe: SUBSCRIBE with the next free packet id; None when the connection broke."""
    try:
        if isinstance(topic, str):
            topic = topic.encode()
        n = len(topic)
        buf, i = packet(0x82, 5 + n)
        pid = transport.next_pid()
        buf[i:i + 4] = bytes((pid >> 8, pid & 0xFF, n >> 8, n & 0xFF))  # then the topic's length
        buf[i + 4:-1] = topic
        buf[-1] = min(qos, 1)
        transport._send(buf)
        return pid
    except OSError as exc:
        transport.close(exc)
        return None
    finally:
        release()


def release():
    """MicroPython: forget this module, so its code is collected once the running call returns;
    not during a connection attempt (connect releases it at its end)."""
    if connecting or sys.implementation.name != "micropython":
        return
    sys.modules.pop(__name__, None)
    parent, _, leaf = __name__.rpartition(".")
    try:
        delattr(sys.modules[parent], leaf)
    except (AttributeError, KeyError):  # KeyError on MicroPython when it is not there
        pass
