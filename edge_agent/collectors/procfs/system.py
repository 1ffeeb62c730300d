"""Uptime, boot id and boot time, from /proc/uptime, /proc/sys/kernel/random/boot_id, /proc/stat;
and who the host is (`read_host`: host name, /etc/machine-id, the OS from /etc/os-release).

Metrics (see docs/architecture.md):

    system.uptime   gauge  s  scale 0.01  -

The boot id and boot time are not samples: the agent puts them in the batch header and the birth
message, so the collector offers them as `boot_id()` and `boot_time()` (read from the same root).

Options: none.

Example output for "215.06 368.04":

    system.uptime   21506
"""

from edge_agent.collectors.procfs.load import hundredths
from edge_agent.model import Series, family
from edge_wire import GAUGE


def parse_uptime(text):
    """'215.06 368.04' -> 21506: seconds since boot in hundredths."""
    tokens = text.split()
    if not tokens:
        raise ValueError("uptime: empty")
    return hundredths(tokens[0])


def read_boot_id(root="/proc"):
    """The kernel's random boot id ('c0a1…-…'), from sys/kernel/random/boot_id under `root`.

    Raises OSError when the file is missing (kernels without CONFIG_PROC_SYSCTL)."""
    with open(root + "/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def read_boot_time(root="/proc"):
    """Boot time in seconds since the epoch: the btime line of `root`/stat; OSError without one."""
    with open(root + "/stat") as f:
        text = f.read()
    for line in text.split("\n"):
        if line.startswith("btime "):
            return int(line[6:])
    raise OSError("stat: no btime line")


def read_boot(root="/proc"):
    """(boot id, boot time in ms) for the birth message; ("unknown", 0) where the kernel lacks them."""
    try:
        boot_id = read_boot_id(root)
    except OSError:
        boot_id = "unknown"
    try:
        boot_time_ms = read_boot_time(root) * 1000
    except (OSError, ValueError):
        boot_time_ms = 0
    return boot_id, boot_time_ms


def _first_line(path):
    try:
        with open(path) as f:
            return f.read().strip().split("\n")[0].strip()
    except OSError:
        return ""


def parse_os_release(text):
    """os-release(5) text -> its PRETTY_NAME ("Debian GNU/Linux 12 (bookworm)"), else NAME VERSION."""
    fields = {}
    for line in text.split("\n"):
        eq = line.find("=")
        if eq > 0 and line[0] != "#":
            value = line[eq + 1 :].strip()
            if len(value) > 1 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            fields[line[:eq].strip()] = value
    if fields.get("PRETTY_NAME"):
        return fields["PRETTY_NAME"]
    return (fields.get("NAME", "") + " " + fields.get("VERSION", "")).strip()


def read_host(root="/proc", etc="/etc"):
    """{"host", "host_id", "os_description"} for the birth: the kernel's host name, the machine id
    (/etc/machine-id, as OpenTelemetry's host.id on Linux) and the OS with its kernel, e.g.
    "Debian GNU/Linux 12 (bookworm) (Linux 6.1.0-18-amd64)"; "" where a file is missing."""
    text = ""
    for path in (etc + "/os-release", "/usr/lib/os-release"):
        try:
            with open(path) as f:
                text = f.read()
            break
        except OSError:
            pass
    name = parse_os_release(text) or "Linux"
    kernel = _first_line(root + "/sys/kernel/osrelease")
    return {
        "host": _first_line(root + "/sys/kernel/hostname"),
        "host_id": _first_line(etc + "/machine-id") or _first_line("/var/lib/dbus/machine-id"),
        "os_description": name + (" (Linux " + kernel + ")" if kernel else ""),
    }


class SystemCollector:
    """The system collector (uptime), with the boot readers on the same root."""

    name = "system"
    source = "procfs"

    def __init__(self, root="/proc"):
        self.root = root
        self.uptime = Series.of(family("system.uptime", GAUGE, "s", 0.01, "procfs"))

    def collect(self):
        with open(self.root + "/uptime") as f:
            return [(self.uptime, parse_uptime(f.read()))]

    def boot_id(self):
        return read_boot_id(self.root)

    def boot_time(self):
        return read_boot_time(self.root)

    def close(self):
        pass
