"""Prometheus remote write: names by the OTel compatibility rules, the wire (protobuf + snappy, headers,
auth), refusals that do not take other data with them, and fan-out beside OTLP — against Debian's real
Prometheus where it can run, and a recording receiver where the test needs to see the request."""

from __future__ import annotations

import base64
import http.server
import threading
import time

import cramjam
import pytest

from gateway.convert.otlp import to_request
from gateway.convert.prompb import WriteRequest
from gateway.decode.resolve import Dictionaries
from gateway.export.exporter import HttpExporter, OtlpConfig, RetryPolicy, send_with_retry
from gateway.export.fanout import FanOut
from gateway.export.promwrite import RemoteWriteConfig, RemoteWriteExporter, _float, label_name, metric_name, secret
from testbed.otlp_receiver import OtlpReceiver
from tests.support.gateway import batch, birth, make_table, steady
from tests.support.prometheus import start_prometheus


def request_at(t0_ms, seq=1, device="dev-1"):
    table, series = make_table()
    dicts = Dictionaries()
    dicts.add_birth(device, birth(table, device))
    return to_request([dicts.resolve(device, batch(steady(series, t0=t0_ms), device=device, seq=seq))])


def test_names_follow_the_otel_prometheus_compatibility_rules():
    assert metric_name("system.cpu.time", "s", "counter") == "system_cpu_time_seconds_total"
    assert metric_name("system.network.io", "By", "counter") == "system_network_io_bytes_total"
    assert metric_name("system.network.packets", "{packets}", "counter") == "system_network_packets_total"
    assert metric_name("system.memory.usage", "By", "gauge") == "system_memory_usage_bytes"
    assert metric_name("system.cpu.utilization", "1", "gauge") == "system_cpu_utilization_ratio"
    assert metric_name("system.cpu.load_average.1m", "{thread}", "gauge") == "system_cpu_load_average_1m"
    assert metric_name("system.cpu.runqueue.latency", "s", "histogram") == "system_cpu_runqueue_latency_seconds"
    assert metric_name("http.total.requests", "{request}", "counter") == "http_requests_total"
    assert metric_name("net.rate", "By/s", "gauge") == "net_rate_bytes_per_second"
    assert metric_name("1st.thing", "ms", "gauge") == "_1st_thing_milliseconds"
    assert (label_name("service.version"), label_name("_x"), label_name("9lives")) == ("service_version", "key_x", "key_9lives")
    assert [_float(b) for b in (1e-06, 0.5, 1.0, 16.777216, float("inf"))] == ["0.000001", "0.5", "1", "16.777216", "+Inf"]


def test_prometheus_stores_what_the_gateway_writes(tmp_path):
    prom = start_prometheus(tmp_path)
    try:
        now = int(time.time() * 1000) - 10_000
        assert RemoteWriteExporter(RemoteWriteConfig(prom.write_url)).send(request_at(now)).ok
        q = prom.query
        assert q('system_network_io_bytes_total{job="edge-agent",instance="dev-1",device="eth0",direction="receive"}')
        assert prom.value("system_network_io_bytes_total", now / 1000 + 2) == 2000
        assert prom.value('system_memory_usage_bytes{state="used"}', now / 1000 + 2) == 4098 * 1024
        buckets = {r["metric"]["le"]: float(r["value"][1]) for r in q("test_latency_seconds_bucket")}
        assert buckets == {"0.01": 1, "0.1": 4, "1": 5, "+Inf": 5}  # cumulative, as Prometheus counts them
        info = q("target_info")[0]["metric"]
        assert info["job"] == "edge-agent" and info["instance"] == "dev-1" and info["host_name"] == "dev-1"
        assert "service_instance_id" not in info and info["service_version"] == "edge-agent 0.1.0"
        assert prom.value("edge_agent_lost_samples_total") == 0
    finally:
        prom.stop()


def test_a_refused_old_batch_does_not_take_the_new_ones_with_it(tmp_path):
    """Prometheus rolls a whole request back for one sample it will not take; the exporter finds it."""
    prom = start_prometheus(tmp_path)
    try:
        exporter = RemoteWriteExporter(RemoteWriteConfig(prom.write_url))
        now = int(time.time() * 1000) - 10_000
        assert exporter.send(request_at(now)).ok
        table, series = make_table()
        dicts = Dictionaries()
        for device in ("dev-1", "dev-2"):
            dicts.add_birth(device, birth(table, device))
        mixed = to_request([dicts.resolve("dev-1", batch(steady(series, t0=now - 3 * 3600_000), seq=2)),
                            dicts.resolve("dev-1", batch(steady(series, t0=now + 4000), seq=3)),
                            dicts.resolve("dev-2", batch(steady(series, t0=now + 4000), device="dev-2"))])
        outcome = exporter.send(mixed)
        assert outcome.ok and 0 < outcome.rejected_points < 40, outcome
        # dev-1's newer batch and dev-2's both landed
        assert prom.value('system_network_io_bytes_total{instance="dev-1"}', now / 1000 + 6.5) == 2000
        assert prom.value('system_network_io_bytes_total{instance="dev-2"}', now / 1000 + 6.5) == 2000
        old = exporter.send(request_at(now - 3 * 3600_000, seq=4))
        assert not old.ok and not old.retryable and old.reason == "refused"
    finally:
        prom.stop()


class Recorder:
    """A remote-write receiver that records requests and answers what `answer` says."""

    def __init__(self) -> None:
        self.requests, self.answer = [], lambda: 204
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = recorder.answer()
                write = WriteRequest()
                write.ParseFromString(bytes(cramjam.snappy.decompress_raw(body)))
                recorder.requests.append((self.headers, write))  # case-insensitive, as HTTP
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/api/v1/write" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_wire_headers_and_credentials_from_a_file(tmp_path):
    recorder = Recorder()
    try:
        token = tmp_path / "token"
        token.write_text("s3cret\n")
        config = RemoteWriteConfig(recorder.url, headers={"X-Scope-OrgID": "fleet-a"},
                                   bearer_token=secret(None, str(token), "token"))
        assert RemoteWriteExporter(config).send(request_at(1_700_000_100_000)).ok
        headers, write = recorder.requests[0]
        assert headers["Content-Encoding"] == "snappy" and headers["Content-Type"] == "application/x-protobuf"
        assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0" and headers["X-Scope-OrgID"] == "fleet-a"
        assert headers["Authorization"] == "Bearer s3cret"
        for ts in write.timeseries:
            names = [label.name for label in ts.labels]
            assert names == sorted(names) and "__name__" in names
            assert [s.timestamp for s in ts.samples] == sorted(s.timestamp for s in ts.samples)
        help_ = {m.metric_family_name: m.help for m in write.metadata}
        assert help_["system_cpu_time_seconds_total"] == "Total seconds each logical CPU spent on each mode."
        token.write_text("rotated")  # read at every request
        basic = RemoteWriteConfig(recorder.url, username="gw", password=secret("pw", None, "pw"))
        assert RemoteWriteExporter(basic).send(request_at(1_700_000_100_000)).ok
        assert recorder.requests[1][0]["Authorization"] == "Basic " + base64.b64encode(b"gw:pw").decode()
        recorder.answer = lambda: 503
        down = RemoteWriteExporter(config).send(request_at(1_700_000_100_000))
        assert not down.ok and down.retryable and recorder.requests[-1][0]["Authorization"] == "Bearer rotated"
        with pytest.raises(ValueError):
            secret("x", str(token), "--prometheus-password")
        with pytest.raises(ValueError):
            RemoteWriteExporter(RemoteWriteConfig("ftp://x"))
    finally:
        recorder.close()


def test_fan_out_acks_only_when_both_backends_have_it_and_resends_only_to_the_one_that_was_down():
    recorder, otlp = Recorder(), OtlpReceiver()
    try:
        answers = iter([503, 503])
        recorder.answer = lambda: next(answers, 204)
        fan = FanOut([HttpExporter(OtlpConfig(endpoint=otlp.url + "/v1/metrics", timeout_s=5)),
                      RemoteWriteExporter(RemoteWriteConfig(recorder.url))])
        outcome = send_with_retry(fan, request_at(1_700_000_100_000), RetryPolicy(initial_s=0.01), threading.Event())
        assert outcome.ok
        assert len(otlp.requests) == 1 and len(recorder.requests) == 3
    finally:
        recorder.close()
        otlp.stop()
