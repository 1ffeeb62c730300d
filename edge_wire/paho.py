"""What the agent's and the gateway's paho clients share (host-only: CPython and paho-mqtt).

- a connection problem said in one line that names the host, port or file (`describe`);
- TLS set up front: a missing or unreadable file is named at start, not at the first attempt
  (`tls_context`), and passwords read from the environment or a file (`readable_secret`);
- the reconnect delays applied to paho's own reconnect loop (`Backoff`, `Client`), each failed
  attempt and broken connection reported with its cause and delay;
- a --broker flag parsed by edge_wire.broker's parser, the one the agent's config uses (`parse_flag`),
  and the user name and password a gateway's URL may carry (`url_credentials`).

Here rather than in either package: the agent (transport/paho.py) and the gateway (ingest, ops) both
connect through it, and the gateway must not import the agent.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable

import paho.mqtt.client as mqtt

from edge_wire.broker import parse_broker

RECONNECT_S = (1, 16)  # (first, longest) delay between connection attempts

# what an SSL error looks like when one side speaks TLS and the other does not
NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNEXPECTED_EOF_WHILE_READING", "PACKET_LENGTH_TOO_LONG",
           "UNKNOWN_PROTOCOL", "HTTP_REQUEST")


def describe(exc: BaseException, host: str, port: int, tls: bool) -> str:
    """Why a connection attempt to host:port failed, in one line."""
    where = "%s:%d" % (host, port)
    if isinstance(exc, socket.gaierror):
        return "cannot resolve host %s (%s)" % (host, exc.strerror or exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS: the broker's certificate at %s is not trusted (%s); check the CA file" % (
            where, exc.verify_message or exc.reason)
    if isinstance(exc, ssl.SSLError) or (tls and isinstance(exc, ConnectionResetError)):
        reason = getattr(exc, "reason", None) or (exc.strerror or str(exc)).lower()
        if reason in NOT_TLS or isinstance(exc, (ssl.SSLEOFError, ConnectionResetError)):
            return "TLS handshake with %s failed (%s): is it a TLS port? mqtts:// needs one (usually 8883)" % (
                where, reason)
        if "CERTIFICATE" in str(reason).upper() or "ALERT" in str(reason).upper():
            return "TLS handshake with %s failed (%s): the broker refused our client certificate" % (where, reason)
        return "TLS handshake with %s failed: %s" % (where, reason)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused by %s: is the broker running, on this port?" % where
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer from %s (timed out)" % where
    if isinstance(exc, OSError):
        return "cannot connect to %s: %s" % (where, exc.strerror or exc)
    return "cannot connect to %s: %s" % (where, exc)


def tls_context(ca: str | None, cert: str | None = None, key: str | None = None, insecure: bool = False,
                names: dict | None = None) -> ssl.SSLContext:
    """A client TLS context; ValueError naming the option and the file when one is missing or unusable.

    `names` maps "ca", "cert", "key" to what the user calls them (a flag, a config key)."""
    names = names or {"ca": "--ca", "cert": "--cert", "key": "--key"}
    for option, path in (("ca", ca), ("cert", cert), ("key", key)):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ValueError("%s %s: cannot read it (%s)" % (names[option], path, exc.strerror or exc))
    if key and not cert:
        raise ValueError("%s %s: needs %s (the client certificate) as well" % (names["key"], key, names["cert"]))
    try:
        context = ssl.create_default_context(cafile=ca or None)
    except ssl.SSLError as exc:
        raise ValueError("%s %s: not a PEM CA certificate (%s)" % (names["ca"], ca, exc.reason or exc))
    if cert:
        try:
            context.load_cert_chain(cert, key or None)
        except ssl.SSLError as exc:
            raise ValueError("%s %s / %s %s: not a PEM certificate and its private key (%s)" % (
                names["cert"], cert, names["key"], key or "(in the same file)", exc.reason or exc))
    if insecure:
        context.check_hostname = False
    return context


def readable_secret(value: str | None, path: str | None, name: str) -> str | None:
    """A password given directly (from the environment) or in a file (first line); ValueError names the file."""
    if path:
        try:
            with open(path) as f:
                return f.readline().rstrip("\r\n")
        except OSError as exc:
            raise ValueError("%s %s: cannot read it (%s)" % (name, path, exc.strerror or exc))
    return value


class Backoff:
    """Delays between connection attempts: the first attempt at once, then `first_s`, doubling after
    each failed attempt up to `longest_s`; a random part of up to half is taken off each, so a fleet
    that lost its broker does not come back all at once. A connection that was made starts the
    sequence again. So a broker that is back is reached within `longest_s` (plus the connect timeout).
    """

    def __init__(self, first_s=RECONNECT_S[0], longest_s=RECONNECT_S[1]):
        self.first_s = first_s
        self.longest_s = longest_s
        self.delay_s = 0

    def next_s(self):
        """The wait before the next attempt (after a failed one, or a connection that broke)."""
        self.delay_s = min(max(2 * self.delay_s, self.first_s), self.longest_s)
        return self.delay_s / 2 + self.delay_s / 2 * os.urandom(1)[0] / 255

    def reset(self):
        """A connection was made: the next failure waits `first_s` again."""
        self.delay_s = 0


class Client(mqtt.Client):
    """paho's client with our reconnect delays, and a report of every connection problem.

    paho's own loop (loop_start) reconnects; before each wait it asks here how long (`Backoff`).
    `on_trouble(kind, text, retry_s)` is called in paho's thread: kind "failed" (an attempt failed:
    refused, unreachable, TLS, or closed before the broker accepted it) or "broke" (a connection that
    was up went down). The owner's on_connect must call `accepted()` on success and `refused(reason)`
    on a refusal, and its on_disconnect `ended(flags, reason)` unless it is stopping.
    """

    def __init__(self, *args, host: str = "", port: int = 0, tls: bool = False,
                 backoff: Backoff | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.where = (host, port, tls)
        self.backoff = backoff or Backoff()
        self.on_trouble: Callable[[str, str, float], None] | None = None
        self.up = False  # the broker accepted the current connection
        self.told = False  # this connection's (attempt's) end was reported

    def reconnect(self) -> mqtt.MQTTErrorCode:  # paho's loop calls this for every attempt
        self.up = self.told = False
        try:
            return super().reconnect()
        except OSError as exc:
            self.trouble("failed", describe(exc, *self.where))
            raise

    def accepted(self) -> None:
        self.up = True
        self.backoff.reset()

    def refused(self, reason: object) -> None:
        self.trouble("failed", "the broker at %s:%d refused the connection: %s" % (self.where[0], self.where[1], reason))

    def ended(self, flags: mqtt.DisconnectFlags, reason: object) -> None:
        if self.told:
            return
        if self.up:
            text = "connection lost" if str(reason) == "Unspecified error" else str(reason)
            if flags.is_disconnect_packet_from_server:
                text = "the broker closed the connection: %s" % reason
            self.trouble("broke", text)
            return
        host, port, tls = self.where
        hint = "" if tls else " (is it a TLS port? then use mqtts://)"
        self.trouble("failed", "the broker at %s:%d closed the connection before accepting it%s" % (host, port, hint))

    def trouble(self, kind: str, text: str) -> None:
        self.told = True
        delay = self.backoff.next_s()
        self.reconnect_delay_set(delay, delay)  # paho waits exactly this before its next attempt
        if self.on_trouble is not None:
            self.on_trouble(kind, text, delay)


def url_credentials(url: str) -> tuple[str | None, str | None]:
    """(user name, password) given before the host in a broker URL, each None when absent."""
    head = url.partition("://")[2] or url
    head = head.split("/", 1)[0]
    if "@" not in head:
        return None, None
    user, sep, password = head.rpartition("@")[0].partition(":")
    return user, password if sep else None


def parse_flag(url: str, flag: str = "--broker", credentials: bool = False) -> tuple[str, int, bool]:
    """`edge_wire.broker.parse_broker` for a command-line flag (the gateway's, the simulator's): the ValueError names the
    flag and the URL, never credentials found in it."""
    try:
        return parse_broker(url, credentials)
    except ValueError as exc:
        shown = repr(url) if "@" not in url else "a URL with credentials"
        raise ValueError("%s: %s is not mqtt://host:port or mqtts://host:port (%s)" % (flag, shown, exc))



def process_client_id(prefix: str) -> str:
    """`<prefix>-<8 random hex>`: unique per process, so two processes never take each other's session."""
    return "%s-%s" % (prefix, os.urandom(4).hex())
