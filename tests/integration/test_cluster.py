"""Beyond one broker: a 3-node RabbitMQ cluster, gateway replicas and a simulated fleet, with failures.

Real processes only: three RabbitMQ 3.10 nodes started by the test (testbed/rabbitmq.py: their own
epmd, ports and data directories), two `edge-gateway run --amqp ...` replicas consuming the
replicated data queue and exporting OTLP/HTTP to a real receiver, and `edge-fleet-sim` devices
(the agent's protocol and receipts) publishing over MQTT to the nodes' MQTT plugin, each trying the
next node when its own goes (as behind a load balancer). Faults, while data flows: SIGKILL of a
broker node, SIGKILL of a gateway replica, then both restarted. Every batch the devices made must
reach the receiver, with all its samples, and the worst delay from a sample's batch to its export
is reported (FIGURES line) and bounded. Exactly once, except in the one window no broker closes
(docs/scaling.md): a batch a process exported in the moment before it was killed, whose receipt
and acknowledgement died with it, is exported again by the survivor. Such a repeat is allowed only
when its first export arrived within KILL_WINDOW_S before a kill, at most MAX_KILL_REPEATS of
them, and is counted in the FIGURES line; any other repeat fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fleetsim.check import Tally, compare
from testbed.mosquitto import free_port, stop, wait_for
from testbed.otlp_receiver import OtlpReceiver
from testbed.rabbitmq import Cluster

BIN = os.path.dirname(sys.executable)
KILL_WINDOW_S = 2.0  # an export in flight, its receipt and ack not yet out, when a process was killed
MAX_KILL_REPEATS = 3
pytestmark = pytest.mark.slow


def metric(port: int, name: str) -> float:
    import urllib.request

    try:
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2).read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0


def test_broker_node_and_gateway_replica_killed_and_restarted_every_sample_once(tmp_path):
    cluster = Cluster(tmp_path, nodes=3)
    receiver = OtlpReceiver()
    gateways: dict[str, tuple[subprocess.Popen | None, int, list[str]]] = {}
    sim = None
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")

    def start_gateway(name: str, urls: list[str]) -> None:
        port = gateways[name][1] if name in gateways else free_port()
        argv = [BIN + "/edge-gateway", "run", "--client-id", "cl-" + name, "--share-group", "cl",
                "--metrics-port", str(port), "--log-format", "json", "--state-dir", str(tmp_path / ("state-" + name))]
        for url in urls:
            argv += ["--amqp", url]
        proc = subprocess.Popen(argv, env=env, stdout=open(tmp_path / ("%s.log" % name), "ab"),
                                stderr=subprocess.STDOUT)
        gateways[name] = (proc, port, urls)
        wait_for(lambda: metric(port, "edge_gateway_mqtt_connected") == 1, 60, "gateway %s connected" % name)

    try:
        started = time.monotonic()
        cluster.start()
        cluster_s = time.monotonic() - started
        urls = [n.amqp_url for n in cluster.nodes]
        start_gateway("a", urls)  # connects to node 0 first
        start_gateway("b", urls[1:] + urls[:1])  # to node 1
        brokers = []
        for node in cluster.nodes:
            brokers += ["--broker", node.mqtt_url]
        report = tmp_path / "report.json"
        sim = subprocess.Popen([BIN + "/edge-fleet-sim", "--devices", "30", *brokers, "--batch", "1", "--ticks", "2",
                                "--duration", "36", "--ramp", "2", "--drain", "90", "--report", str(report)],
                               stdout=subprocess.PIPE, text=True)
        t0 = time.monotonic()

        def at(second: float) -> None:
            time.sleep(max(0.0, t0 + second - time.monotonic()))

        at(8)
        exported_before = len(receiver.requests)
        kills = [time.time()]
        cluster.kill(0)  # the node gateway a and a third of the devices are connected to
        at(14)
        kills.append(time.time())
        gateways["a"][0].send_signal(signal.SIGKILL)  # gateway a, now on another node
        gateways["a"][0].wait(10)
        at(20)
        cluster.start_node(0)
        at(26)
        start_gateway("a", urls)
        out, _ = sim.communicate(timeout=200)
        summary = json.loads(out.strip().splitlines()[-1])
        time.sleep(1)
        for name in gateways:
            stop(gateways[name][0], 15)
        with open(report) as f:
            batches = json.load(f)["batches"]
        tally = Tally()
        arrival: dict[tuple[str, int], float] = {}
        with receiver.lock:
            requests = list(zip(receiver.arrivals, receiver.requests, strict=True))
        for arrived, request in requests:
            for key in tally.add(request)[1]:
                arrival.setdefault(key, arrived)
        check = compare(batches, tally)
        repeated = sorted((device, last) for device, seen in tally.batches.items() for last, n in seen.items() if n > 1)
        at_a_kill = [key for key in repeated if any(kill - KILL_WINDOW_S <= arrival[key] <= kill + 0.5 for kill in kills)]
        made = {(b[0], b[5]): b[3] for b in batches}
        repeated_samples = sum(made.get(key, 0) * (tally.batches[key[0]][key[1]] - 1) for key in repeated)
        delays = sorted(arrival[(b[0], b[5])] - b[5] / 1000 for b in batches if (b[0], b[5]) in arrival)
        figures = dict(check, cluster_start_s=round(cluster_s, 1), devices=summary["devices"],
                       device_reconnects=summary["connects"] - summary["devices"], connect_failures=summary["connect_failures"],
                       resends=summary["sends"] - summary["batches"],
                       pending=summary["pending"], dropped=summary["dropped"], exported_before_kill=exported_before,
                       delay_p50_s=round(delays[len(delays) // 2], 2), delay_p99_s=round(delays[int(len(delays) * 0.99)], 2),
                       delay_max_s=round(delays[-1], 2), repeated_at_a_kill=len(at_a_kill))
        print("FIGURES " + json.dumps(figures))
        assert exported_before > 0, figures
        assert check["batches_made"] > 0 and summary["pending"] == 0 and summary["dropped"] == 0, figures
        assert check["batches_missing"] == 0 and check["batches_unknown"] == 0, figures
        assert repeated == at_a_kill and len(at_a_kill) <= MAX_KILL_REPEATS, (figures, repeated, kills)
        assert check["samples_received"] - repeated_samples == check["samples_made"], figures
        assert figures["device_reconnects"] > 0, "devices moved to another node"
        assert delays[-1] < 60, figures  # seconds: the failover, not a session expiry
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
            sim.wait()
        for proc, _, _ in gateways.values():
            if proc is not None:
                stop(proc, 5)
        cluster.stop()
        receiver.stop()
