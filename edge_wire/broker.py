"""Where the broker is: the one parser of broker URLs, for the agent (config, on devices too) and the
gateway and the fleet simulator (their --broker flags).

    mqtt://host:port   mqtts://host:port (TLS)   [ipv6]:port in brackets   tcp:// and ssl:// alike
    host[:port] alone is mqtt://; ports default to 1883, 8883 with TLS
    user:password@ before the host only where the caller allows it (`credentials`)

The agent refuses credentials in its URL (its config and log lines show the URL; the user name and
password have their own settings); the gateway's --broker takes them (edge_wire.paho.url_credentials), and its
logs show the broker as scheme://host:port. MicroPython-compatible (no urllib); a device loads it
with its configuration at start, so what only hosts need (parsing a flag, reading credentials) is in
edge_wire/paho.py.
"""


def parse_broker(url, credentials=False):
    """(host, port, tls) of a broker URL; ValueError saying what is wrong with it. A user name and
    password before the host are skipped with `credentials`, refused without. The messages are short
    (a device interns every string of a module it loads, for good)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "mqtt", url
    if scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError("scheme must be mqtt or mqtts")
    tls = scheme in ("mqtts", "ssl")
    rest = rest.rstrip("/")
    if "@" in rest:
        if not credentials:  # they belong in username/password, never in a URL that gets logged
            raise ValueError("credentials in the URL")
        rest = rest.rpartition("@")[2]
    if rest.startswith("["):  # [ipv6]:port
        host, _, port = rest[1:].partition("]")
        port = port[1:] if port.startswith(":") else port
    elif ":" in rest:
        host, port = rest.rsplit(":", 1)
    else:
        host, port = rest, ""
    if not host or "/" in host or "?" in host:
        raise ValueError("no host")
    try:
        port = int(port) if port else (8883 if tls else 1883)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ValueError("bad port")
    return host, port, tls

