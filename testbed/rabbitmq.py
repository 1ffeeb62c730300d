"""A real RabbitMQ cluster for tests: nodes on loopback, started as this test's own processes.

`Cluster(tmp_path, nodes=3).start()` starts its own epmd (a free port, loopback only) and N RabbitMQ
3.10 nodes (Debian's rabbitmq-server, run from its sbin script as this user), each with its own data
directory, ports, Erlang cookie (HOME) and config: AMQP, the MQTT plugin (anonymous, as the tests'
mosquitto), a cluster formed by classic peer discovery. Nothing touches a system service or the
machine's default ports. `kill(i)` is SIGKILL to the node's process group, `start_node(i)` brings it
back with its data (it rejoins), `stop()` ends everything this object started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import time

from testbed.mosquitto import free_port

SBIN = "/usr/lib/rabbitmq/bin"
SERVER = os.path.join(SBIN, "rabbitmq-server")
CTL = os.path.join(SBIN, "rabbitmqctl")
EPMD = shutil.which("epmd") or "/usr/bin/epmd"


def available() -> bool:
    return os.path.exists(SERVER) and os.path.exists(EPMD)


def mqtt_accepts(port: int) -> bool:
    """True once the node's MQTT listener accepts a session (CONNACK 0).

    `await_startup` returns before the MQTT plugin's client-id tracking is ready on a loaded machine;
    a device refused then moves to the next node, and a test that kills "the node a third of the
    devices are on" would kill an empty one.
    """
    client_id = b"testbed-probe"
    body = struct.pack("!H", 4) + b"MQTT" + bytes([4, 0x02]) + struct.pack("!H", 10)  # 3.1.1, clean session
    body += struct.pack("!H", len(client_id)) + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            connack = sock.recv(4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return len(connack) == 4 and connack[0] == 0x20 and connack[3] == 0


class Node:
    def __init__(self, cluster: Cluster, index: int) -> None:
        self.index = index
        self.name = "edge%s-%d@localhost" % (cluster.tag, index)
        self.amqp_port, self.mqtt_port, self.dist_port = free_port(), free_port(), free_port()
        self.home = os.path.join(cluster.root, "node%d" % index)
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    @property
    def amqp_url(self) -> str:
        return "amqp://guest:guest@127.0.0.1:%d/%%2F" % self.amqp_port

    @property
    def mqtt_url(self) -> str:
        return "mqtt://127.0.0.1:%d" % self.mqtt_port


class Cluster:
    def __init__(self, tmp_path, nodes: int = 3) -> None:
        self.tag = secrets.token_hex(3)
        self.root = os.path.join(str(tmp_path), "rabbitmq")
        self.epmd_port = free_port()
        self.cookie = secrets.token_hex(16)
        self.nodes = [Node(self, i) for i in range(nodes)]
        self.epmd: subprocess.Popen | None = None
        for node in self.nodes:
            self._configure(node)

    def _configure(self, node: Node) -> None:
        os.makedirs(node.home, exist_ok=True)
        peers = "".join("cluster_formation.classic_config.nodes.%d = %s\n" % (n.index + 1, n.name) for n in self.nodes)
        with open(os.path.join(node.home, "rabbitmq.conf"), "w") as f:
            f.write("listeners.tcp.default = 127.0.0.1:%d\n" % node.amqp_port
                    + "mqtt.listeners.tcp.default = 127.0.0.1:%d\n" % node.mqtt_port
                    + "mqtt.allow_anonymous = true\nloopback_users = none\n"
                    + "disk_free_limit.absolute = 50MB\nvm_memory_high_watermark.relative = 0.2\n"
                    + "cluster_formation.peer_discovery_backend = classic_config\n" + peers)
        with open(os.path.join(node.home, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_mqtt].\n")
        cookie = os.path.join(node.home, ".erlang.cookie")
        if not os.path.exists(cookie):
            with open(cookie, "w") as f:
                f.write(self.cookie)
            os.chmod(cookie, 0o400)
        open(os.path.join(node.home, "rabbitmq-env.conf"), "a").close()
        node.env = dict(
            os.environ, HOME=node.home, ERL_EPMD_PORT=str(self.epmd_port), ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=node.name, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port), RABBITMQ_MNESIA_BASE=os.path.join(node.home, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(node.home, "log"),
            RABBITMQ_CONFIG_FILE=os.path.join(node.home, "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(node.home, "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=os.path.join(node.home, "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(node.home, "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=os.path.join(node.home, "plugins"),
            RABBITMQ_PID_FILE=os.path.join(node.home, "pid"),
            RABBITMQ_CTL_ERL_ARGS="-setcookie %s" % self.cookie,
        )

    # ------------------------------------------------------------ processes

    def start(self, timeout: float = 120) -> Cluster:
        self.epmd = subprocess.Popen([EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # One node at a time: started together, the nodes race to form the MQTT plugin's client-id
        # (Raft) cluster, and a node left out of it refuses every MQTT connection until restarted.
        for node in self.nodes:
            self.start_node(node.index, timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.running(0)) == len(self.nodes):
                return self
            time.sleep(1)
        raise RuntimeError("the cluster did not form: %s" % self.running(0))

    def start_node(self, index: int, wait: bool = True, timeout: float = 120) -> None:
        node = self.nodes[index]
        log = open(os.path.join(node.home, "server.log"), "ab")
        node.proc = subprocess.Popen([SERVER], env=node.env, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_node(index, timeout)

    def wait_node(self, index: int, timeout: float = 120) -> None:
        node = self.nodes[index]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError("RabbitMQ node %s exited (%s), see %s" % (node.name, node.proc.returncode, node.home))
            if self.ctl(index, "await_startup", "--timeout", "2").returncode == 0 and mqtt_accepts(node.mqtt_port):
                return
            time.sleep(0.5)
        raise RuntimeError("RabbitMQ node %s did not start, see %s" % (node.name, node.home))

    def ctl(self, index: int, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        node = self.nodes[index]
        try:
            return subprocess.run([CTL, "-n", node.name, "-q", *args], env=node.env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, 1, "", "timeout")

    def running(self, index: int) -> list[str]:
        done = self.ctl(index, "cluster_status", "--formatter", "json")
        try:
            return json.loads(done.stdout).get("running_nodes", [])
        except ValueError:
            return []

    def kill(self, index: int) -> None:
        """SIGKILL to the node (its process group: the script, the Erlang VM and its helpers)."""
        proc = self.nodes[index].proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                os.killpg(node.proc.pid, signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(node.proc.pid, signal.SIGKILL)
                    node.proc.wait(10)
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.terminate()
            self.epmd.wait(5)
