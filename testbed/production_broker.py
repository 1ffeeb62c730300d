"""The production broker for tests: deploy/mosquitto's config and ACL as shipped, with certificates
from its gen-certs.sh, on two free loopback ports (devices' listener, services' listener).

`start(tmp, devices, edit=None, acl_extra="") -> Broker`; `edit(conf_text) -> conf_text` may change
the config (a control that puts back what was wrong); `acl_extra` is added to the shipped ACL (what
provisioning adds, such as a device's group). `takeovers(broker)` counts the sessions the broker took
from a connected client for another with the same client id, from its log.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testbed.mosquitto import free_port, run_broker, stop

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "mosquitto"
TAKEOVER = "already connected, closing old connection"  # mosquitto 2.0's log line for a session taken


@dataclass
class Broker:
    proc: subprocess.Popen
    device_port: int
    service_port: int
    certs: Path
    log: Path
    conf: str  # the configuration it runs

    def stop(self) -> None:
        stop(self.proc)

    def client_tls(self, name: str) -> list[str]:
        """The TLS flags of `edge-agent run` / `edge-gateway` for the certificate `name`."""
        return ["--ca", str(self.certs / "ca.crt"), "--cert", str(self.certs / (name + ".crt")),
                "--key", str(self.certs / (name + ".key"))]


def start(tmp: Path, devices=("dev-a", "dev-b"), edit=None, acl_extra: str = "") -> Broker:
    certs = tmp / "certs"
    subprocess.run([str(DEPLOY / "gen-certs.sh"), str(certs), *devices], check=True, capture_output=True)
    device_port, service_port = free_port(), free_port()
    acl = tmp / "acl"
    acl.write_text((DEPLOY / "acl").read_text() + acl_extra)
    conf = (DEPLOY / "mosquitto.conf").read_text()
    for shipped, ours in (("/etc/mosquitto/certs", str(certs)), ("/etc/mosquitto/edge.acl", str(acl)),
                          ("listener 8883", "listener %d 127.0.0.1" % device_port),
                          ("listener 8884", "listener %d 127.0.0.1" % service_port),
                          ("persistence true", "persistence false"),
                          ("persistence_location /var/lib/mosquitto/", "")):
        assert shipped in conf, shipped
        conf = conf.replace(shipped, ours)
    if edit is not None:
        conf = edit(conf)
    if os.geteuid() == 0:
        conf += "\n# tests run as root with keys in a private temp dir\nuser root\n"
    (tmp / "mosquitto.conf").write_text(conf)
    log = tmp / "mosquitto.log"
    proc = run_broker(str(tmp / "mosquitto.conf"), service_port, str(log))
    return Broker(proc, device_port, service_port, certs, log, conf)


def takeovers(broker: Broker) -> list[str]:
    """The broker's log lines that say it closed a connected client's session for another one."""
    return [line for line in broker.log.read_text(errors="replace").splitlines() if TAKEOVER in line]
