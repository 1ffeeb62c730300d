"""Helpers for the gateway tests: real births and batches built with edge_wire, the gateway core's
callbacks (acks, receipts), a quick retry policy, and device data published to a real broker."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho

from edge_agent.model import Series, SeriesTable
from edge_wire import COUNTER, GAUGE, HISTOGRAM
from edge_wire.batch import BatchBuilder
from edge_wire.birth import boot_tag, encode_birth
from edge_wire.receipt import parse_receipt
from gateway.export.exporter import RetryPolicy

BOOT_ID = "4f3c2a10-1111-2222-3333-444455556666"
BOOT_TIME_MS = 1_700_000_000_000


def make_table(epoch: int = 0) -> tuple[SeriesTable, dict[str, Series]]:
    """A small dictionary: a byte counter, a CPU-time counter, a utilisation gauge, a memory gauge, a histogram."""
    table = SeriesTable(epoch)
    series = {
        "rx": Series("system.network.io", COUNTER, "By", {"device": "eth0", "direction": "receive"}, 1, None, "procfs"),
        "cpu": Series("system.cpu.time", COUNTER, "s", {"cpu": "total", "state": "user"}, 0.01, None, "procfs"),
        "util": Series("system.cpu.utilization", GAUGE, "1", {"cpu": "total"}, 0.0001, None, "procfs"),
        "mem": Series("system.memory.usage", GAUGE, "By", {"state": "used"}, 1024, None, "procfs"),
        "lat": Series("test.latency", HISTOGRAM, "s", {}, 0.001, [0.01, 0.1, 1], "ebpf"),
    }
    for s in series.values():
        table.intern(s)
    return table, series


def info(device: str = "dev-1", boot_id: str = BOOT_ID) -> dict:
    return {"device": device, "boot_id": boot_id, "boot_time_ms": BOOT_TIME_MS, "agent": "edge-agent 0.1.0",
            "os": "Linux", "platform": "linux-x86_64"}


def birth(table: SeriesTable, device: str = "dev-1", boot_id: str = BOOT_ID) -> bytes:
    return encode_birth(info(device, boot_id), table)


def batch(ticks: list[tuple[int, list[tuple[Series, object]]]], device: str = "dev-1", seq: int = 1,
          epoch: int = 0, boot_id: str = BOOT_ID, compress: bool = False, ext: dict | None = None) -> bytes:
    builder = BatchBuilder()
    for ts, samples in ticks:
        builder.add_tick(ts, samples)
    return builder.encode(device, boot_tag(boot_id), seq, epoch, compress, ext)


def steady(series: dict[str, Series], t0: int = BOOT_TIME_MS + 60_000, n: int = 3) -> list:
    """`n` one-second ticks of every series in `series`, counters rising."""
    ticks = []
    for i in range(n):
        ticks.append((t0 + 1000 * i, [
            (series["rx"], 1000 + 500 * i), (series["cpu"], 12345 + 100 * i), (series["util"], 2500 + i),
            (series["mem"], 4096 + i), (series["lat"], (3 + i, 250 + i, (1, 1 + i, 1, 0))),
        ]))
    return ticks


FAST = RetryPolicy(initial_s=0.01, max_s=0.05)  # the exporter's retries, quick enough for tests


class Acks:
    """The ack callback the gateway calls once a message is settled: counts the calls."""

    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.count += 1

    def wait(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.count == n


class Receipts(list):
    """What the gateway publishes to devices: (device, boot, [(first, count, kind), ...])."""

    def __call__(self, device, payload):
        boot, runs = parse_receipt(payload)
        self.append((device, boot, runs))
        return True

    def runs(self, kind=None):
        return [r for _, _, runs in list(self) for r in runs if kind is None or r[2] == kind]

    def wait(self, n, kind=None, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.runs(kind)) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.runs(kind)


def send_device_data(port, n=2):
    """A birth, `n` batches and one malformed payload from dev-1, published to the broker on `port`."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    table, series = make_table()
    client.publish("edge/dev-1/birth", birth(table), qos=1, retain=True).wait_for_publish(5)
    now = int(time.time() * 1000)
    for seq in range(n):
        client.publish("edge/dev-1/data", batch(steady(series, t0=now - 2000), seq=seq), qos=1).wait_for_publish(5)
    client.publish("edge/dev-1/data", b"\xc1", qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
