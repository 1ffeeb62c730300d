"""The gateway against a real mosquitto: births, data, rejections, manual acks, sessions, shares."""

import threading
import time
import urllib.request

import paho.mqtt.client as paho
import pytest

from gateway.app import Gateway
from gateway.decode.resolve import Dictionaries
from gateway.export.exporter import HttpExporter, OtlpConfig
from gateway.export.pipeline import ExportPipeline
from gateway.ingest.mqtt import BrokerConfig, MqttIntake, parse_broker, split_topic
from gateway.ops.http import StatusServer
from gateway.ops.metrics import GatewayMetrics
from tests.support.gateway import FAST, batch, birth, make_table, steady


class Running:
    """One in-process gateway: decode, pipeline to an OTLP/HTTP receiver, MQTT intake, /metrics."""

    def __init__(self, port, receiver, client_id="gw-test", share_group=None, birth_wait_s=2.0, receive_maximum=64):
        self.dicts = Dictionaries()
        self.metrics = GatewayMetrics(devices=lambda: len(self.dicts.devices()))
        exporter = HttpExporter(OtlpConfig(endpoint=receiver.url + "/v1/metrics", timeout_s=5))
        self.pipeline = ExportPipeline(exporter, self.metrics, retry=FAST, linger_s=0.01).start()
        self.gateway = Gateway(self.dicts, self.pipeline, self.metrics, birth_wait_s=birth_wait_s)
        config = BrokerConfig(host="127.0.0.1", port=port, client_id=client_id, session_expiry_s=300,
                              receive_maximum=receive_maximum)
        self.intake = MqttIntake(config, self.gateway, self.metrics, "edge", share_group).start()
        self.status = StatusServer(self.metrics.render, lambda: (True, {}), port=0).start()
        self.stopping = threading.Event()
        threading.Thread(target=self._tick, daemon=True).start()
        assert wait_for(lambda: self.intake.connected, 5)

    def _tick(self):  # what the CLI's main loop does
        while not self.stopping.wait(0.1):
            self.gateway.expire()

    def stop(self):
        self.stopping.set()
        self.pipeline.stop(timeout=0.5)
        self.intake.stop()
        self.status.stop()

    def scrape(self):
        return urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.status.port, timeout=5).read().decode()


def publisher(port):
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish(client, topic, payload, retain=False):
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def exported_points(receiver):
    total = 0
    for _, _, request in receiver.requests:
        for rm in request.resource_metrics:
            for m in rm.scope_metrics[0].metrics:
                if m.name.startswith("edge."):
                    continue  # the gateway's delivery metrics, not device samples
                total += len(m.sum.data_points) + len(m.gauge.data_points) + len(m.histogram.data_points)
    return total


def test_topics_and_broker_urls():
    assert parse_broker("mqtt://10.0.0.1:1884") == ("10.0.0.1", 1884, False)
    assert parse_broker("mqtts://broker.example") == ("broker.example", 8883, True)
    assert parse_broker("localhost") == ("localhost", 1883, False)
    with pytest.raises(ValueError, match="--broker"):
        parse_broker("http://x:1")
    assert split_topic("edge", "edge/dev-1/data") == ("dev-1", "data")
    assert split_topic("a/b", "a/b/dev-1/birth") == ("dev-1", "birth")
    assert split_topic("edge", "other/dev-1/data") == ("", "")


def test_good_data_flows_and_malformed_payloads_are_counted(mosquitto_broker, receiver):
    gw = Running(mosquitto_broker, receiver)
    pub = publisher(mosquitto_broker)
    try:
        table, series = make_table()
        publish(pub, "edge/dev-1/birth", birth(table), retain=True)
        publish(pub, "edge/dev-1/data", batch(steady(series), seq=1))
        assert wait_for(lambda: exported_points(receiver) == 15)

        good = batch(steady(series), seq=2)
        stranger = make_table()[1]["rx"]
        stranger.id = 42
        bad = {
            "not_msgpack": b"\xc1garbage",
            "bad_header": b"\x93\x01\x02\x03",
        }
        publish(pub, "edge/dev-1/data", bad["not_msgpack"])
        publish(pub, "edge/dev-1/data", good[:-3])  # truncated
        publish(pub, "edge/dev-1/data", bad["bad_header"])  # wrong types
        publish(pub, "edge/dev-1/data", batch([(5, [(stranger, 1)])]))  # unknown series
        publish(pub, "edge/dev-1/data", batch(steady(series), epoch=9))  # unknown dictionary
        publish(pub, "edge/dev-1/data", b"\x90" * 70000)  # oversize
        publish(pub, "edge/dev-2/data", good)  # header says dev-1
        publish(pub, "edge/dev-1/data", good)
        assert wait_for(lambda: exported_points(receiver) == 30)
        rejected = gw.metrics.rejected
        # after the birth wait: released unexported (the device sends it again), not rejected
        assert wait_for(lambda: gw.metrics.released.value(reason="unknown_dict") == 1)
        assert rejected.value(reason="not_msgpack") == 2
        assert rejected.value(reason="bad_header") == 1
        assert rejected.value(reason="unknown_series") == 1
        assert rejected.value(reason="too_large") == 1
        assert rejected.value(reason="device_mismatch") == 1
        assert gw.metrics.received.value() == 9 and gw.metrics.decoded.value() == 2

        text = gw.scrape()
        assert "edge_gateway_batches_received_total 9" in text
        assert 'edge_gateway_batches_rejected_total{reason="not_msgpack"} 2' in text
        assert "edge_gateway_samples_exported_total 30" in text
        assert "edge_gateway_batches_exported_total 2" in text
        assert "edge_gateway_devices_seen 1" in text
        assert "edge_gateway_mqtt_connected 1" in text
        assert 'edge_gateway_lag_seconds_bucket{le="+Inf"} 2' in text
        assert "# TYPE edge_gateway_lag_seconds histogram" in text
    finally:
        pub.loop_stop()
        gw.stop()


def test_data_that_arrives_before_its_birth_waits_for_it(mosquitto_broker, receiver):
    gw = Running(mosquitto_broker, receiver, birth_wait_s=5)
    pub = publisher(mosquitto_broker)
    try:
        table, series = make_table()
        publish(pub, "edge/dev-1/data", batch(steady(series)))
        assert wait_for(lambda: gw.gateway.parked() == 1)
        publish(pub, "edge/dev-1/birth", birth(table), retain=True)
        assert wait_for(lambda: exported_points(receiver) == 15)
        assert gw.metrics.rejected.value(reason="unknown_dict") == 0
    finally:
        pub.loop_stop()
        gw.stop()


def test_unexported_data_is_not_acked_and_a_restarted_gateway_gets_it(mosquitto_broker, receiver):
    receiver.script = [(503, {})] * 10000  # the OTLP endpoint is down
    gw = Running(mosquitto_broker, receiver, client_id="gw-resume")
    pub = publisher(mosquitto_broker)
    table, series = make_table()
    publish(pub, "edge/dev-1/birth", birth(table), retain=True)
    publish(pub, "edge/dev-1/data", batch(steady(series), seq=7))
    assert wait_for(lambda: gw.metrics.retries.value() >= 2)
    gw.stop()  # mid-retry: the message stays unacked in the session
    publish(pub, "edge/dev-1/data", batch(steady(series), seq=8))  # queued for the offline session
    receiver.script = []  # the endpoint recovers
    receiver.requests.clear()
    gw = Running(mosquitto_broker, receiver, client_id="gw-resume")
    try:
        assert wait_for(lambda: exported_points(receiver) == 30)
        assert gw.metrics.exported_batches.value() == 2
    finally:
        pub.loop_stop()
        gw.stop()


def test_replicas_in_a_share_group_split_data_and_both_know_every_birth(mosquitto_broker, receiver):
    gws = [Running(mosquitto_broker, receiver, client_id="gw-%d" % i, share_group="g") for i in range(2)]
    pub = publisher(mosquitto_broker)
    try:
        table, series = make_table()
        for device in ("dev-1", "dev-2"):
            publish(pub, "edge/%s/birth" % device, birth(table, device), retain=True)
        assert wait_for(lambda: all(len(g.dicts.devices()) == 2 for g in gws))
        for seq in range(10):
            for device in ("dev-1", "dev-2"):
                publish(pub, "edge/%s/data" % device, batch(steady(series), device=device, seq=seq))
        assert wait_for(lambda: sum(g.metrics.exported_batches.value() for g in gws) == 20)
        time.sleep(0.2)
        assert exported_points(receiver) == 20 * 15  # each batch exactly once
        assert all(g.metrics.exported_batches.value() > 0 for g in gws)
    finally:
        pub.loop_stop()
        for g in gws:
            g.stop()


def test_a_restart_with_a_backlog_larger_than_the_window_loses_nothing(mosquitto_broker, receiver):
    pub = publisher(mosquitto_broker)
    table, series = make_table()
    publish(pub, "edge/dev-1/birth", birth(table), retain=True)
    gw = Running(mosquitto_broker, receiver, client_id="gw-backlog", receive_maximum=4)
    assert wait_for(lambda: gw.dicts.devices() == ["dev-1"])
    gw.stop()  # the sessions exist; now the gateway is down and the birth is only retained
    for seq in range(12):
        publish(pub, "edge/dev-1/data", batch(steady(series), seq=seq))
    gw = Running(mosquitto_broker, receiver, client_id="gw-backlog", receive_maximum=4)  # knows no births yet
    try:
        assert wait_for(lambda: gw.metrics.exported_batches.value() == 12)
        assert gw.metrics.rejected.value(reason="unknown_dict") == 0
    finally:
        pub.loop_stop()
        gw.stop()


def test_device_status_is_published_retained_for_the_fleet_view(mosquitto_broker, receiver):
    from gateway.ops.fleet import connect, gather

    gw = Running(mosquitto_broker, receiver)
    gw.gateway.publish_status = gw.intake.publish_status  # as cli.run_command wires it
    pub = publisher(mosquitto_broker)
    try:
        table, series = make_table()
        publish(pub, "edge/dev-1/birth", birth(table), retain=True)
        publish(pub, "edge/dev-1/data", batch(steady(series), seq=7))
        assert wait_for(lambda: exported_points(receiver) == 15)
        client, inbox = connect(BrokerConfig(host="127.0.0.1", port=mosquitto_broker, client_id="fleet-view"),
                                ["edge/_status/+"])
        try:
            fleet = gather(inbox, "edge")
        finally:
            client.loop_stop()
            client.disconnect()
        status = fleet["dev-1"].status
        assert status["seq"] == 7 and status["batches"] == 1 and status["samples"] == 15
        assert status["gateway"] == "gw-test" and status["lost"] == [0, 0] and status["gaps"] == 0
        assert status["last_seen"] == steady(series)[-1][0] / 1000
    finally:
        pub.loop_stop()
        gw.stop()
