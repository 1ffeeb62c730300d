"""What `edge-gateway run --state-dir` costs per export request: append-only log vs whole-state rewrite.

    .venv/bin/python bench/gateway_state.py [--dir DIR] [--requests 200]

Per accepted export request the gateway must make its dedupe state durable before the MQTT acks.
Two ways, measured with the gateway's own code (`gateway.decode.state`, `gateway.decode.dedupe.SeqTracker`) for
fleets of 1 to 100000 (device, boot) streams and requests of 1 and 32 batches:

- log:      `GatewayState.record` — one JSON line per request, flush + fsync (what the gateway does;
            compaction into a snapshot runs when the log outgrows the snapshot, measured apart);
- rewrite:  `SeqTracker.snapshot()` serialised and written tmp + fsync + rename + directory fsync
            per request (the alternative).

Wall time per request (fsync is I/O, not CPU). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.decode.dedupe import SeqTracker  # noqa: E402
from gateway.decode.state import GatewayState, write_atomic  # noqa: E402

BASE = 459_000_000_000


def tracker_with(streams: int) -> SeqTracker:
    t = SeqTracker(max_streams=max(streams, 1))
    for i in range(streams):
        for s in range(BASE, BASE + 5):
            t.mark("device-%06d" % i, i, s)
    return t


def per_request_ms(fn, requests: int) -> float:
    start = time.perf_counter()
    for i in range(requests):
        fn(i)
    return (time.perf_counter() - start) / requests * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="directory on the disk to measure (default: a temporary one)")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="gw-state-", dir=args.dir)
    rows = []
    for streams in (1, 100, 10000, 100000):
        tracker = tracker_with(streams)
        for batches in (1, 32):
            directory = os.path.join(root, "s%d-b%d" % (streams, batches))
            state = GatewayState(directory)
            state.compact(tracker)
            compact_ms = per_request_ms(lambda _i, s=state, t=tracker: s.compact(t), 3)

            def log(i: int, state: GatewayState = state, tracker: SeqTracker = tracker, batches: int = batches) -> None:
                keys = [("device-000000", 0, BASE + 1000 + i * batches + b) for b in range(batches)]
                for key in keys:
                    tracker.mark(*key)
                state.record(keys, tracker)

            def rewrite(i: int, directory: str = directory, tracker: SeqTracker = tracker) -> None:
                write_atomic(os.path.join(directory, "rewrite.json"),
                             json.dumps(tracker.snapshot(), separators=(",", ":")).encode())

            log_ms = per_request_ms(log, args.requests)
            rewrite_ms = per_request_ms(rewrite, min(args.requests, 20 if streams >= 10000 else args.requests))
            size = os.path.getsize(os.path.join(directory, "dedupe.snapshot"))
            state.close()
            rows.append({"streams": streams, "batches_per_request": batches, "log_ms": round(log_ms, 3),
                         "rewrite_ms": round(rewrite_ms, 3), "compaction_ms": round(compact_ms, 1),
                         "snapshot_bytes": size})
    print("%8s %8s %12s %14s %14s %14s" % ("streams", "batches", "log ms/req", "rewrite ms/req", "compaction ms",
                                           "snapshot bytes"))
    for r in rows:
        print("%8d %8d %12.3f %14.3f %14.1f %14d" % (r["streams"], r["batches_per_request"], r["log_ms"],
                                                     r["rewrite_ms"], r["compaction_ms"], r["snapshot_bytes"]))
    print(json.dumps({"gateway_state": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
