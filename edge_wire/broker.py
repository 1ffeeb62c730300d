"""Where the broker is: the one parser of broker URLs, for the agent (config, on devices too) and the
gateway and the fleet simulator (their --broker flags).

    mqtt://host:port   mqtts://host:port (TLS)   [ipv6]:port in brackets   tcp:// and ssl:// alike
    host[:port] alone is mqtt://; ports default to 1883, 8883 with TLS

Credentials are refused in the URL (ValueError naming the problem): a broker URL is logged and shown
in process lists, so a user name and a password go in their own settings. MicroPython-compatible (no
urllib); a device loads it with its configuration at start.
"""


def parse_broker(url):
    """(host, port, tls) of a broker URL; ValueError saying what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "mqtt", url
    if scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError("the scheme must be mqtt:// or mqtts://, not %s://" % scheme[:16])
    tls = scheme in ("mqtts", "ssl")
    rest = rest.rstrip("/")
    if "@" in rest:  # credentials belong in username/password, never in a URL that gets logged
        raise ValueError("credentials in the URL (give a user name and a password their own settings)")
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
        raise ValueError("the port is not a number")
    if not 0 < port < 65536:
        raise ValueError("the port must be 1 to 65535")
    return host, port, tls


def parse_flag(url, flag="--broker"):
    """`parse_broker` for a command-line flag (the gateway's, the simulator's): the ValueError names the
    flag and the URL, never credentials found in it."""
    try:
        return parse_broker(url)
    except ValueError as exc:
        shown = repr(url) if "@" not in url else "a URL with credentials"
        raise ValueError("%s: %s is not mqtt://host:port or mqtts://host:port (%s)" % (flag, shown, exc))
