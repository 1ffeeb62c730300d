"""edge_agent.transport.umqtt: exact bytes against a fake socket, on CPython and on the real MicroPython;
then against a real mosquitto: QoS 1 and PUBACK, subscribe, last will, broker restart with retransmit, TLS.

The fake-socket tests (`test_bytes_*`) use nothing but the module and plain asserts, so the same functions
run under `micropython` (see `run_bytes_tests` and `test_bytes_under_micropython`).
"""

import errno
import sys

from edge_agent.clock import mono_ms
from edge_agent.transport import umqtt_connect
from edge_agent.transport.umqtt import Transport
from edge_agent.transport.umqtt_connect import packet

try:  # CPython only: MicroPython runs just the fake-socket tests
    import os
    import shutil
    import signal
    import subprocess
    import time

    import pytest

    from testbed.mosquitto import MOSQUITTO, start_mosquitto, stop
except ImportError:

    class pytest:  # noqa: N801 - MicroPython: stands in for the fixture decorator
        fixture = staticmethod(lambda f: f)

    MOSQUITTO = None


def sent(sock):
    """What the client wrote since the last call."""
    out = bytes(sock.out)
    sock.out = bytearray()
    return out


class FakeSocket:
    """Feeds `data` to the client and records what it writes."""

    def __init__(self, data=b""):
        self.data = bytearray(data)
        self.out = bytearray()
        self.writes = []  # the size of every write
        self.fail_at = None  # the write (index into writes) that raises MemoryError
        self.closed = False

    def readinto(self, buf, n):
        n = min(n, len(self.data))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def sendall(self, data):
        if self.fail_at == len(self.writes):
            raise MemoryError("fake")
        self.writes.append(len(data))
        self.out.extend(data)

    def close(self):
        self.closed = True


class FakePoller:
    def register(self, sock, events):
        self.sock = sock

    def unregister(self, sock):
        pass

    def poll(self, ms):
        return [(self.sock, 1)] if self.sock.data else []


def attached(data=b"", **options):
    client = Transport("localhost", client_id="dev1", **options)
    sock = FakeSocket(data)
    umqtt_connect.attach(client, sock, FakePoller())
    return client, sock


def ago(ms):
    return mono_ms() - ms


# ---------------------------------------------------------------- packets, byte for byte


def test_bytes_connect_with_will_and_credentials():
    client = Transport("h", client_id="dev1", keepalive=60, username="u", password="p", will=("s", b"off", 1, True))
    expected = (b"\x10\x1e" + b"\x00\x04MQTT\x04" + b"\xee" + b"\x00\x3c" + b"\x00\x04dev1"
                + b"\x00\x01s" + b"\x00\x03off" + b"\x00\x01u" + b"\x00\x01p")
    assert bytes(umqtt_connect.connect_packet(client)) == expected


def test_bytes_connect_minimal():
    client = Transport("h", client_id="c", keepalive=0, clean_session=False)
    assert bytes(umqtt_connect.connect_packet(client)) == b"\x10\x0d\x00\x04MQTT\x04\x00\x00\x00\x00\x01c"
    client = Transport("h", client_id="c", keepalive=300, will=("w", b"", 0, False))
    assert bytes(umqtt_connect.connect_packet(client)) == b"\x10\x12\x00\x04MQTT\x04\x06\x01\x2c\x00\x01c\x00\x01w\x00\x00"


def test_bytes_password_needs_username():
    try:
        Transport("h", client_id="c", password="p")
    except ValueError:
        return
    raise AssertionError("no ValueError")


def test_bytes_publish_qos0_and_qos1():
    client, sock = attached()
    assert client.publish("a/b", b"hi", qos=0) == 1
    assert sent(sock) == b"\x30\x07\x00\x03a/bhi"
    assert client.acked(1)
    token = client.publish("a/b", b"hi", qos=1, retain=True)
    assert sent(sock) == b"\x33\x09\x00\x03a/b\x00\x01hi"
    assert not client.acked(token)
    client.publish("a/b", "str payload", qos=1)
    assert sent(sock) == b"\x32\x12\x00\x03a/b\x00\x02str payload"


def test_bytes_publish_in_pieces():
    # a payload given as a list of pieces is written after the header piece by piece, never joined
    client, sock = attached()
    pieces = [b"ab", bytearray(b"cd"), memoryview(b"xef")[1:]]
    token = client.publish("t", pieces, qos=1, retain=True)
    assert sent(sock) == b"\x33\x0b\x00\x01t\x00\x01abcdef"
    assert sock.writes == [7, 2, 2, 2]
    assert not client.acked(token)
    # QoS 1 keeps the pieces until the PUBACK: the retransmit sends them again with DUP set
    sock.writes = []
    client._inflight[1][1] = ago(30000)
    client.poll(0)
    assert sent(sock) == b"\x3b\x0b\x00\x01t\x00\x01abcdef" and sock.writes == [7, 2, 2, 2]
    sock.data.extend(b"\x40\x02\x00\x01")
    client.poll(0)
    assert client.acked(token) and not client._inflight
    # QoS 0, and a remaining length past one byte (203 = 0xcb 0x01)
    sock.writes = []
    assert client.publish("t", [b"x" * 100, b"", b"y" * 100], qos=0) is not None
    assert sent(sock) == b"\x30\xcb\x01\x00\x01t" + b"x" * 100 + b"y" * 100
    assert sock.writes == [6, 100, 0, 100]


def test_bytes_a_birth_is_written_as_it_is_encoded():
    # StreamedBirth (transport.streams): the encoded birth's bytes, in CHUNK-byte writes after
    # the header, and the same again on a retransmit; what waits for the PUBACK is not the encoded birth
    from edge_agent.model import Series, SeriesTable, family
    from edge_wire import GAUGE
    from edge_wire.batch import CHUNK
    from edge_wire.birth import StreamedBirth, encode_birth

    table = SeriesTable()
    gauge = family("g", GAUGE, "1")
    for i in range(80):
        table.intern(Series.of(gauge, {"i": str(i)}))
    info = {"device": "d", "boot_id": "b", "boot_time_ms": 1, "collectors": {}}
    whole = encode_birth(info, table)
    birth = StreamedBirth(info, table)
    assert len(birth) == len(whole) > 2 * CHUNK
    table.intern(Series.of(gauge, {"i": "late"}))  # met after the birth was made: not in it
    client, sock = attached()
    token = client.publish("t", birth, qos=1, retain=True)
    n = len(whole) + 5  # topic length and "t", packet id
    head = bytes([0x33, (n & 0x7F) | 0x80, n >> 7, 0, 1]) + b"t" + b"\x00\x01"
    assert n < 1 << 14 and sent(sock) == head + whole
    pieces = [CHUNK] * (len(whole) // CHUNK)
    if len(whole) % CHUNK:
        pieces.append(len(whole) % CHUNK)
    assert sock.writes == [len(head)] + pieces
    sock.writes = []
    client._inflight[1][1] = ago(30000)
    client.poll(0)
    assert sent(sock) == bytes([0x3B]) + head[1:] + whole
    sock.data.extend(b"\x40\x02\x00\x01")
    client.poll(0)
    assert client.acked(token)


def test_bytes_large_payload_is_not_copied():
    # bytes above SMALL go as their own write after the header; small ones in the packet (one write)
    client, sock = attached()
    payload = b"z" * 200
    client.publish("a/b", payload, qos=1)
    assert sent(sock) == b"\x32\xcf\x01\x00\x03a/b\x00\x01" + payload
    assert sock.writes == [10, 200] and client._inflight[1][3] is payload
    sock.writes = []
    client.publish("a/b", b"hi", qos=1)
    assert sock.writes == [11]


def test_bytes_memory_error_between_pieces_drops_the_connection():
    # half a packet must never stay on the wire: the client closes, the message stays in flight
    client, sock = attached()
    sock.fail_at = 1
    assert client.publish("t", [b"ab", b"cd"], qos=1) == 1
    assert sock.closed and not client.connected and list(client._inflight) == [1]
    assert client.last_error == repr(OSError(errno.ENOMEM))
    transport = Transport("h", 1, client_id="c")
    sock = FakeSocket()
    umqtt_connect.attach(transport, sock, FakePoller())
    sock.fail_at = 2
    token = transport.publish("t", [b"ab", b"cd"], qos=1)
    assert token == 1 and not transport.connected and not transport.acked(token)
    assert transport.publish("t", [b"ab"], qos=0) is None  # not connected


def test_bytes_close_after_a_failed_attach():
    # MemoryError while attaching leaves a socket without a poller: closing it must still work
    client = Transport("h", client_id="c")
    sock = FakeSocket()
    client.sock = sock
    client.close()
    assert sock.closed and not client.connected


def test_bytes_subscribe_ping_disconnect():
    client, sock = attached(keepalive=10)
    assert client.subscribe("c", qos=1) == 1
    assert sent(sock) == b"\x82\x06\x00\x01\x00\x01c\x01"
    client.subscribe("dev/+/cmd", qos=2)  # QoS 2 is not supported: asks for 1
    assert sent(sock) == b"\x82\x0e\x00\x02\x00\x09dev/+/cmd\x01"
    client._last_tx = ago(10000)  # idle for the keepalive: PINGREQ
    client.poll(0)
    assert sent(sock) == b"\xc0\x00"
    client.stop()
    assert sent(sock) == b"\xe0\x00" and sock.closed and not client.connected


def test_bytes_remaining_length_boundaries():
    cases = [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"),
             (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f")]
    for n, encoded in cases:
        if n > 20000 and sys.implementation.name == "micropython":
            continue  # the same code path; spare the small heap
        buf, i = packet(0x30, n)
        assert bytes(buf[:i]) == b"\x30" + encoded, n
        assert len(buf) == i + n
    try:
        packet(0x30, 268435456)
    except ValueError:
        pass
    else:
        raise AssertionError("no ValueError")
    for n in (127, 128, 16383, 16384):  # a whole PUBLISH at the boundary, read back by the client
        client, sock = attached()
        payload = b"x" * (n - 3)
        client.publish("t", payload, qos=0)
        assert bytes(sock.out[1:len(sock.out) - n]) == dict(cases)[n]
        got = []
        reader, _ = attached(bytes(sock.out), rx_size=16384)
        reader.on_message = lambda topic, data, got=got: got.append((topic, data))
        reader.poll(0)
        assert got == [("t", payload)], n


def test_bytes_puback_clears_the_window():
    client, sock = attached(max_inflight=2)
    first = client.publish("t", b"1")
    second = client.publish("t", b"2")
    assert client.publish("t", b"3") is None  # window full
    sock.data.extend(b"\x40\x02\x00\x01")
    client.poll(0)
    assert client.acked(first) and not client.acked(second)
    assert client.publish("t", b"3") is not None


def test_bytes_retransmit_sets_dup():
    client, sock = attached(retry_s=10)
    client.publish("t", b"x")
    sent(sock)
    client._inflight[1][1] = ago(11000)
    client.poll(0)
    assert sent(sock) == b"\x3a\x06\x00\x01t\x00\x01x"


def test_bytes_incoming_publish_is_delivered_then_acked():
    got = []
    client, sock = attached(b"\x32\x0a\x00\x03c/d\x12\x34cmd" + b"\x30\x04\x00\x01ez")
    client.on_message = lambda topic, data: got.append((topic, data, bytes(sock.out)))
    client.poll(0)
    assert got == [("c/d", b"cmd", b""), ("e", b"z", b"\x40\x02\x12\x34")]
    assert bytes(sock.out) == b"\x40\x02\x12\x34"


def test_bytes_oversized_publish_is_skipped_and_acked():
    got = []
    body = b"\x00\x01t\x00\x07" + b"y" * 100
    client, sock = attached(b"\x32" + bytes([len(body)]) + body + b"\x30\x04\x00\x01tz", rx_size=32)
    client.on_message = lambda topic, data: got.append((topic, data))
    client.poll(0)
    assert client.dropped == 1 and got == [("t", b"z")]
    assert bytes(sock.out) == b"\x40\x02\x00\x07"


def test_bytes_keepalive_ping_and_dead_connection():
    client, sock = attached(keepalive=10)
    client._last_tx = ago(9000)
    client.poll(0)
    assert sent(sock) == b""
    client._last_tx = ago(10000)
    client.poll(0)
    assert sent(sock) == b"\xc0\x00"
    sock.data.extend(b"\xd0\x00")
    client.poll(0)
    assert client._ping_at is None
    client._ping_at = ago(5000)  # a PINGREQ unanswered for half the keepalive: the connection is dropped
    client.poll(0)
    assert not client.connected and "PINGRESP" in client.last_error


def test_bytes_broken_streams_raise_oserror():
    for data in (b"", b"\x40", b"\x40\x02\x00", b"\x50\x02\x00\x01", b"\x30\xff\xff\xff\xff\x01"):
        client, sock = attached(data)
        try:
            client._read_packet()
        except OSError:
            continue
        raise AssertionError("no OSError for %r" % data)


def test_bytes_empty_credentials_are_none():
    client = Transport("h", 1, client_id="c", keepalive=0, username="", password="")
    assert bytes(umqtt_connect.connect_packet(client)) == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01c"


def test_bytes_not_connected():
    client = Transport("localhost", 1)
    assert not client.connected
    assert client.publish("t", b"x") is None and client.subscribe("t") is None


def test_bytes_failed_attempts_back_off():
    # refused at once (nothing listens on port 1): the delay doubles from reconnect[0], minus up to half
    transport = Transport("127.0.0.1", 1, client_id="c", reconnect=(1, 3))
    transport.start(None, None)
    for delay in (1000, 2000, 3000, 3000):
        transport.down_at = ago(transport.retry_in_ms)  # the next attempt is due
        transport.poll(0)
        assert not transport.connected and transport.last_error and transport.backoff_ms == delay
        assert delay // 2 <= transport.retry_in_ms <= delay
    if sys.implementation.name == "micropython":  # the connect code is released after every attempt
        assert "edge_agent.transport.umqtt_connect" not in sys.modules


def run_bytes_tests():
    names = sorted(name for name in globals() if name.startswith("test_bytes_"))
    for name in names:
        globals()[name]()
    print("%d passed" % len(names))


# ---------------------------------------------------------------- the same tests under MicroPython

ROOT = __file__.rsplit("/tests/", 1)[0] if "/tests/" in __file__ else "."
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython") if MOSQUITTO else None


def run_micropython(script, timeout=60):
    if not MICROPYTHON or not os.path.exists(MICROPYTHON):
        pytest.skip("no micropython binary beside the interpreter")
    prelude = "import sys\nsys.path.insert(0, %r)\n" % ROOT
    proc = subprocess.run([MICROPYTHON, "-c", prelude + script], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_micropython_runs_the_byte_tests():
    count = len([name for name in globals() if name.startswith("test_bytes_")])
    out = run_micropython("sys.path.insert(0, %r)\nimport test_umqtt\ntest_umqtt.run_bytes_tests()" % (ROOT + "/tests/device"))
    assert out.strip() == "%d passed" % count


def test_same_arguments_as_the_paho_adapter():
    import inspect

    from edge_agent.transport.paho import PahoTransport

    ours = list(inspect.signature(Transport.__init__).parameters)
    theirs = list(inspect.signature(PahoTransport.__init__).parameters)
    assert ours[:len(theirs)] == theirs


# ---------------------------------------------------------------- against a real mosquitto


@pytest.fixture
def broker(tmp_path):
    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed")
    proc, port = start_mosquitto(tmp_path)
    yield port
    stop(proc)


def pump(clients, until, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for client in clients:
            client.poll(0.02)
        if until():
            return
    raise AssertionError("timed out")


def make(port, name, topic=None, **options):
    client = Transport("127.0.0.1", port, client_id=name, **options)
    client.messages = []
    client.subscribed = topic is None

    def on_connect():
        if topic:
            client.subscribe(topic)
            client.subscribed = True

    client.start(on_connect, lambda t, p: client.messages.append((t, p)))
    return client


def test_publish_qos1_acked_and_received(broker):
    sub = make(broker, "sub", "dev/+/data")
    pub = make(broker, "pub")
    pump([sub], lambda: sub.connected)
    sub.poll(0.2)  # SUBACK
    tokens = [pub.publish("dev/a/data", b"batch-%d" % i) for i in range(3)]
    assert tokens == [None, None, None]  # not connected yet
    pump([pub], lambda: pub.connected)
    tokens = [pub.publish("dev/a/data", b"batch-%d" % i) for i in range(3)] + [pub.publish("dev/b/data", b"q0", 0)]
    pump([pub, sub], lambda: all(pub.acked(t) for t in tokens) and len(sub.messages) == 4)
    assert sub.messages == [("dev/a/data", b"batch-0"), ("dev/a/data", b"batch-1"), ("dev/a/data", b"batch-2"),
                            ("dev/b/data", b"q0")]
    pub.stop()
    sub.stop()


def test_last_will_when_the_socket_dies(broker):
    watcher = make(broker, "watcher", "dev/a/state")
    pump([watcher], lambda: watcher.connected)
    watcher.poll(0.2)
    dev = make(broker, "dev-a", will=("dev/a/state", b"offline", 1, True))
    pump([dev], lambda: dev.connected)
    dev.publish("dev/a/state", b"online", retain=True)
    pump([watcher, dev], lambda: watcher.messages)
    dev.sock.close()  # no DISCONNECT: the broker must publish the will
    pump([watcher], lambda: len(watcher.messages) == 2)
    assert watcher.messages == [("dev/a/state", b"online"), ("dev/a/state", b"offline")]
    watcher.stop()


def test_clean_stop_sends_no_will(broker):
    watcher = make(broker, "watcher", "dev/a/state")
    dev = make(broker, "dev-a", will=("dev/a/state", b"offline", 1, False))
    pump([watcher, dev], lambda: watcher.connected and dev.connected)
    watcher.poll(0.2)
    dev.stop()
    watcher.poll(0.5)
    assert watcher.messages == []
    watcher.stop()


def test_dead_broker_detected_then_reconnect_and_retransmit(tmp_path):
    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed")
    proc, port = start_mosquitto(tmp_path)
    options = {"keepalive": 1, "timeout_s": 0.5, "reconnect": (0.1, 0.4)}
    dev = make(port, "dev-a", **options)
    sub = make(port, "sub", "dev/a/data", **options)
    try:
        pump([dev, sub], lambda: dev.connected and sub.subscribed)
        sub.poll(0.2)
        os.kill(proc.pid, signal.SIGSTOP)  # the broker hangs: nothing is acked, pings go unanswered
        token = dev.publish("dev/a/data", b"in-flight")
        assert token is not None
        pump([dev], lambda: not dev.connected, timeout=5)
        assert "PINGRESP" in dev.last_error or "timed out" in dev.last_error, dev.last_error
        assert not dev.acked(token)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        dev.poll(0.5)  # refused while the broker is gone: backs off
        assert not dev.connected and dev.backoff_ms > 0
        proc, port = start_mosquitto(tmp_path, port=port)
        pump([sub], lambda: sub.connected and sub.subscribed)  # the subscriber first, so it sees the resend
        sub.poll(0.3)
        pump([dev, sub], lambda: dev.acked(token) and sub.messages)
        assert sub.messages == [("dev/a/data", b"in-flight")]
        assert dev.reconnects >= 2
    finally:
        for client in (dev, sub):
            client.stop()
        stop(proc)


UMQTT_SCRIPT = """
from edge_agent.transport.umqtt import Transport
import sys
import time
got = []
tls = %(tls)r
t = Transport("127.0.0.1", %(port)d, client_id="mpy", keepalive=5, will=("mpy/state", b"offline", 1, True), tls=tls)
def on_connect():
    t.subscribe("mpy/cmd")
    t.publish("mpy/cmd", b"hello")
t.start(on_connect, lambda topic, payload: got.append((topic, payload)))
token = None
for i in range(100):
    t.poll(0.05)
    if got and token is None:
        token = t.publish("mpy/data", bytes(range(256)) * 8)
    if token and t.acked(token):
        break
loaded = [name for name in sys.modules if name.endswith("umqtt_connect")]  # released after connecting
print(got, t.acked(token), t.last_error, loaded)
t.stop()
print([name for name in sys.modules if name.endswith("umqtt_connect")])
"""


def test_micropython_against_mosquitto(broker):
    out = run_micropython(UMQTT_SCRIPT % {"port": broker, "tls": None})
    assert out.split() == ["[('mpy/cmd',", "b'hello')]", "True", "None", "[]", "[]"]


@pytest.fixture
def tls_broker(tmp_path):
    if not os.path.exists(MOSQUITTO) or not shutil.which("openssl"):
        pytest.skip("needs mosquitto and openssl")
    d = str(tmp_path)

    def openssl(*args):
        subprocess.run(("openssl",) + args, check=True, capture_output=True, cwd=d)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=dev-a",
            "-keyout", "dev.key", "-out", "dev.csr")
    openssl("x509", "-req", "-in", "dev.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", "dev.crt")
    conf = "user root\n" if os.geteuid() == 0 else ""  # else the broker cannot read keys in a private tmp_path
    conf += "cafile %s/ca.crt\ncertfile %s/server.crt\nkeyfile %s/server.key\nrequire_certificate true\n" % (d, d, d)
    proc, port = start_mosquitto(tmp_path, extra_conf=conf)
    yield port, {"ca": d + "/ca.crt", "cert": d + "/dev.crt", "key": d + "/dev.key"}
    stop(proc)


def test_mutual_tls_cpython_and_micropython(tls_broker):
    port, tls = tls_broker
    client = make(port, "tls-py", "tls/cmd", tls=tls)
    pump([client], lambda: client.connected and client.subscribed)
    client.poll(0.2)
    token = client.publish("tls/cmd", b"over tls")
    pump([client], lambda: client.acked(token) and client.messages)
    assert client.messages == [("tls/cmd", b"over tls")]
    client.stop()
    out = run_micropython(UMQTT_SCRIPT % {"port": port, "tls": tls})
    assert out.split() == ["[('mpy/cmd',", "b'hello')]", "True", "None", "[]", "[]"]


def test_tls_rejects_an_unknown_ca(tls_broker):
    port, tls = tls_broker
    client = make(port, "tls-bad", tls={"cert": tls["cert"], "key": tls["key"]})  # system CAs only
    client.poll(0.3)
    assert not client.connected and "CERTIFICATE_VERIFY_FAILED" in client.last_error


UNKNOWN_CA_SCRIPT = """
from edge_agent.transport.umqtt import Transport
t = Transport("127.0.0.1", %(port)d, client_id="mpy-bad", tls=%(tls)r, reconnect=(0.1, 0.2))
t.start(None, None)
errors = []
for i in range(40):
    t.poll(0.05)
    if t.last_error and t.last_error not in errors:
        errors.append(t.last_error)
print(t.connected, t.errors >= 2, errors)
"""


def test_micropython_tls_verification_failure_is_a_failed_attempt(tls_broker, tmp_path):
    # mbedtls raises ValueError for a certificate that fails verification: it used to end the agent
    port, tls = tls_broker
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=another-ca", "-keyout", "ca.key", "-out", "ca.crt"],
                   check=True, capture_output=True, cwd=str(other))
    out = run_micropython(UNKNOWN_CA_SCRIPT % {"port": port, "tls": dict(tls, ca=str(other / "ca.crt"))})
    assert out.startswith("False True ["), out
    assert "OSError" in out and "TLS: " in out and "Traceback" not in out, out
