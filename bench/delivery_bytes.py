"""Wire bytes of delivery receipts and of dictionary growth (issue 12), against the data they go with.

    .venv/bin/python bench/delivery_bytes.py [--seconds 30] [--growths 20] [--new-per-growth 2]

Records this machine's real stream with the agent's own /proc collectors for `--seconds` (1 s
interval), as `edge-agent run` batches it every 10 s, then counts, as MQTT puts them on the wire
(fixed header, topic, packet id for QoS 1, PUBACK):

- data: the batches, and one day of them at that rate;
- receipts: one per batch (`edge/<device>/delivery`, QoS 0: no packet id, no PUBACK), as the
  gateway sends them (`edge_wire.receipt.encode_receipt`);
- dictionary growth: the eBPF collectors add series over time (a drop reason, a TCP state seen for
  the first time). Today every growth sends the whole birth again (retained, QoS 1). An
  incremental birth would carry only the new series (same per-series encoding) plus the birth's
  header; it is estimated here as those bytes exactly. `--growths` events a day of
  `--new-per-growth` series each.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from edge_agent import config as configuration  # noqa: E402
from edge_agent import lifecycle  # noqa: E402
from edge_agent.agent import Agent  # noqa: E402
from edge_agent.collectors.procfs.registry import enabled_procfs  # noqa: E402
from edge_agent.model import Series  # noqa: E402
from edge_wire import COUNTER  # noqa: E402
from edge_wire.pack import packb  # noqa: E402
from edge_wire.receipt import EXPORTED, encode_receipt  # noqa: E402

DEVICE = "pi-0001"


class Offline:
    connected = False
    chunked = False

    def publish(self, *args):
        return None


def mqtt_publish_bytes(topic, payload, qos):
    """A PUBLISH packet's size (fixed header, topic, packet id) plus the PUBACK a QoS 1 one costs."""
    body = 2 + len(topic) + (2 if qos else 0) + len(payload)
    length_bytes = 1 if body < 128 else 2 if body < 16384 else 3
    return 1 + length_bytes + body + (4 if qos else 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--growths", type=int, default=20, help="dictionary growths a day")
    parser.add_argument("--new-per-growth", type=int, default=2, help="new series per growth")
    args = parser.parse_args()

    cfg = configuration.build({"device_id": DEVICE, "interval_s": 1.0, "batch_s": 10.0})
    collectors, effective = enabled_procfs(cfg["collectors"], "/proc")
    info = {"device": DEVICE, "boot_id": open("/proc/sys/kernel/random/boot_id").read().strip(),
            "boot_time_ms": 0, "agent": "0.1.0", "os": "linux", "platform": "cpython", "collectors": effective}
    agent = Agent(cfg, collectors, Offline(), info, log=lambda *a, **k: None)
    batches = []
    for tick in range(args.seconds):
        agent.sample([c.name for c in collectors])
        if (tick + 1) % 10 == 0:
            batches.append(agent.flush())
        time.sleep(1)
    samples = agent.stats["samples_kept"]
    data = sum(mqtt_publish_bytes("edge/%s/data" % DEVICE, b, 1) for b in batches)
    receipt = encode_receipt(agent.boot, [(agent.table.base, 1, EXPORTED)])
    receipts = len(batches) * mqtt_publish_bytes("edge/%s/delivery" % DEVICE, receipt, 0)
    per_day = 86400 / (args.seconds - args.seconds % 10)

    birth = lifecycle.birth_payload(agent)
    full_birth = mqtt_publish_bytes("edge/%s/birth" % DEVICE, birth, 1)
    new = []
    for i in range(args.new_per_growth):
        s = Series("system.network.dropped_reason", COUNTER, "{packet}", {"reason": "SKB_DROP_REASON_%d" % i}, 1,
                   None, "ebpf")
        s.id = len(agent.table) + i
        new.append(s)
    entries = b"".join(packb([s.id, s.name, s.unit, s.kind, s.attrs, s.scale, s.bounds, s.source]) for s in new)
    header = len(birth) - sum(len(packb([s.id, s.family[0], s.family[2], s.family[1], s.attrs, s.family[3], s.bounds,
                                          s.family[4]])) for s in agent.table.series)
    grown = mqtt_publish_bytes("edge/%s/birth" % DEVICE, b"x" * (len(birth) + len(entries)), 1)
    incremental = mqtt_publish_bytes("edge/%s/birth" % DEVICE, b"x" * (header + len(entries)), 1)
    figures = {
        "series": len(agent.table), "samples": samples, "batches": len(batches),
        "data_bytes_per_batch": round(data / len(batches)), "receipt_bytes": mqtt_publish_bytes(
            "edge/%s/delivery" % DEVICE, receipt, 0), "receipt_payload_bytes": len(receipt),
        "receipts_share_of_data": round(receipts / data, 4), "data_bytes_per_day": round(data * per_day),
        "birth_bytes": full_birth, "birth_header_bytes": header, "grown_birth_bytes": grown,
        "incremental_birth_bytes": incremental, "growths_per_day": args.growths,
        "new_series_per_growth": args.new_per_growth,
        "full_births_per_day_bytes": grown * args.growths, "incremental_births_per_day_bytes": incremental * args.growths,
    }
    figures["full_births_share_of_data"] = round(figures["full_births_per_day_bytes"] / figures["data_bytes_per_day"], 4)
    figures["incremental_births_share_of_data"] = round(
        figures["incremental_births_per_day_bytes"] / figures["data_bytes_per_day"], 4)
    for key, value in figures.items():
        print("%-36s %s" % (key, value))
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
