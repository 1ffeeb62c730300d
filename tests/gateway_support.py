"""Helpers for the gateway tests: real births and batches built with edge_wire."""

from __future__ import annotations

from edge_agent.model import Series, SeriesTable
from edge_wire import COUNTER, GAUGE, HISTOGRAM
from edge_wire.batch import BatchBuilder
from edge_wire.birth import boot_tag, encode_birth

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
