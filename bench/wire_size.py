"""Bytes per sample on the wire for the same real samples in every format the project could send.

    .venv/bin/python bench/wire_size.py [--seconds 60] [--interval 1] [--batch 10] [--device-id pi-0001]

Records this machine's real CPU, network, memory, load and system stream with the project's own
/proc collectors (`edge_agent.collectors.procfs.registry`), driven by the real `edge_agent.agent.Agent` (the
sampler `edge-agent run` builds, an offline transport: nothing is published, every batch stays in
the agent's outbox). Each batch the agent encodes is then also expressed, for the very same
samples, as:

- wire v1 with a deflated body: the agent's own `BatchBuilder.encode(compress=True)` on the same
  builder, same header (seq, dictionary epoch, ext);
- OTLP protobuf: the gateway's conversion (`gateway.decode.resolve.Dictionaries.resolve` then
  `gateway.convert.otlp.to_request`) of the batch, `ExportMetricsServiceRequest.SerializeToString()`, per
  batch, and gzip'ed (level 6, as OTLP exporters do);
- OTLP JSON: that request as the gateway's file exporter writes it (`MessageToDict`, compact);
- plain JSON: one object `{"name", "attrs", "ts", "value"}` per sample, a list per batch.

Also the birth message (sent once per connection, retained) amortised over one hour of samples.
Checks the issue's target: wire v1 plain at most 4 bytes per sample on average (PASS/FAIL).
Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from google.protobuf import json_format  # noqa: E402

from edge_agent import config as configuration  # noqa: E402
from edge_agent import lifecycle  # noqa: E402
from edge_agent.agent import Agent  # noqa: E402
from edge_agent.cli import main as cli  # noqa: E402 (device_info, build_sampler: what `edge-agent run` builds)
from edge_agent.collectors.procfs.registry import enabled_procfs  # noqa: E402
from edge_wire.decode import decode, parse_batch  # noqa: E402
from gateway.convert.otlp import to_request  # noqa: E402
from gateway.decode.resolve import Dictionaries  # noqa: E402

TARGET_BYTES_PER_SAMPLE = 4.0
GZIP_LEVEL = 6


class OfflineTransport:
    """Never connected: the agent batches and keeps everything in its outbox."""

    connected = False

    def start(self, on_connect, on_message):
        pass

    def publish(self, *args):
        return None

    def acked(self, token):
        return False

    def subscribe(self, topic, qos=1):
        pass

    def poll(self, timeout_s):
        time.sleep(timeout_s)

    def stop(self):
        pass


class RecordingAgent(Agent):
    """The real agent; each flush also hands the builder it encoded and the payload to `on_batch`."""

    on_batch = None

    def flush(self):
        builder = copy.deepcopy(self.builder)  # the agent clears and reuses its builder
        payload = Agent.flush(self)
        if payload is not None and self.on_batch is not None:
            self.on_batch(self, builder, payload)
        return payload


class Recorded:
    """One batch as the agent sent it, the birth resolving it, and the builder it came from."""

    def __init__(self, builder, payload, birth):
        self.builder = builder
        self.payload = payload
        self.birth = birth
        self.ticks = len(builder)
        self.samples = builder.samples


def make_agent(seconds_interval=1.0, batch_s=10.0, device_id="pi-0001", compress=False):
    """The agent `edge-agent run` would build from the embedded defaults, with an offline transport."""
    cfg = configuration.build({}, {"interval_s": float(seconds_interval), "batch_s": float(batch_s),
                                   "device_id": device_id, "compress": compress})
    collectors, effective = enabled_procfs(cfg["collectors"], cfg["proc_root"])  # -> procfs_collectors
    info = cli.device_info(cfg, effective)
    sampler = cli.build_sampler(cfg, [c.name for c in collectors])
    return RecordingAgent(cfg, collectors, OfflineTransport(), info, sampler=sampler, log=lambda *a, **k: None)


def record(seconds=60.0, interval=1.0, batch_s=10.0, device_id="pi-0001", progress=None):
    """Run the real agent loop until it has flushed ceil(seconds / batch_s) batches; return them.

    Returns (agent, [Recorded]). The agent's own timing decides ticks and flushes (`Agent.step`).
    """
    agent = make_agent(interval, batch_s, device_id)
    recorded = []
    births = {}

    def on_batch(agent, builder, payload):
        epoch = agent.table.epoch
        if epoch not in births:  # the dictionary grew (or the first batch): a birth goes out
            births[epoch] = lifecycle.birth_payload(agent)
        recorded.append(Recorded(builder, payload, births[epoch]))
        if progress:
            progress(len(recorded), builder, payload)

    agent.on_batch = on_batch
    wanted = max(1, int(-(-seconds // batch_s)))
    while len(recorded) < wanted:
        wait = agent.step()
        if len(recorded) >= wanted:
            break
        time.sleep(wait)
    for collector in agent.collectors.values():
        collector.close()
    return agent, recorded


def deflated_twin(rec: Recorded) -> bytes:
    """The same batch (same builder, header and ext) encoded with a deflated body."""
    obj = decode(rec.payload)
    ext = obj[8] if len(obj) == 9 else None
    return rec.builder.encode(obj[2], obj[3], obj[4], obj[5], True, ext)


def real_value(value, scale):
    if isinstance(scale, int) or float(scale).is_integer():
        return value * int(scale)
    inverse = round(1 / scale)
    if abs(1 / scale - inverse) < 1e-9 * inverse:
        return value / inverse
    return value * scale


def plain_json(resolved) -> bytes:
    """A straightforward JSON encoding: a list of {name, attrs, ts, value} per batch."""
    ticks = resolved.batch.ticks
    out = []
    for series, indexes, values in resolved.points:
        for i, value in zip(indexes, values, strict=True):
            out.append({"name": series.name, "attrs": series.attrs, "ts": ticks[i],
                        "value": real_value(value, series.scale)})
    return json.dumps(out, separators=(",", ":")).encode()


def measure(recorded):
    """Bytes of every format for every recorded batch; returns (totals, per_batch rows)."""
    dictionaries = Dictionaries()
    added = set()
    totals = dict.fromkeys(FORMATS, 0)
    rows = []
    for rec in recorded:
        obj = decode(rec.birth)
        device = obj["dev"]
        if (obj["bt"], obj["dict"]) not in added:
            dictionaries.add_birth(device, rec.birth)
            added.add((obj["bt"], obj["dict"]))
        resolved = dictionaries.resolve(device, rec.payload)
        assert resolved.samples() == rec.samples, (resolved.samples(), rec.samples)
        deflated = deflated_twin(rec)
        again = parse_batch(decode(deflated))
        assert again.sample_count() == rec.samples
        request = to_request([resolved])
        proto = request.SerializeToString()
        otlp_json = json.dumps(json_format.MessageToDict(request), separators=(",", ":")).encode()
        simple = plain_json(resolved)
        sizes = {
            "wire_v1_plain": len(rec.payload),
            "wire_v1_deflate": len(deflated),
            "otlp_proto": len(proto),
            "otlp_proto_gzip": len(gzip.compress(proto, GZIP_LEVEL)),
            "otlp_json": len(otlp_json),
            "otlp_json_gzip": len(gzip.compress(otlp_json, GZIP_LEVEL)),
            "json": len(simple),
            "json_gzip": len(gzip.compress(simple, GZIP_LEVEL)),
        }
        for key in sizes:
            totals[key] += sizes[key]
        rows.append((rec.ticks, rec.samples, sizes))
    return totals, rows


FORMATS = ("wire_v1_plain", "wire_v1_deflate", "otlp_proto", "otlp_proto_gzip", "otlp_json", "otlp_json_gzip",
           "json", "json_gzip")
LABELS = {
    "wire_v1_plain": "wire v1, plain",
    "wire_v1_deflate": "wire v1, deflated body",
    "otlp_proto": "OTLP protobuf",
    "otlp_proto_gzip": "OTLP protobuf, gzip",
    "otlp_json": "OTLP JSON",
    "otlp_json_gzip": "OTLP JSON, gzip",
    "json": "JSON {name,attrs,ts,value}",
    "json_gzip": "JSON {name,attrs,ts,value}, gzip",
}


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d CPUs, Linux %s, Python %s" % (model or platform.machine(), os.cpu_count() or 0,
                                                 platform.release(), platform.python_version())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the recorded stream (default 60)")
    parser.add_argument("--interval", type=float, default=1.0, help="sampling interval in seconds (default 1)")
    parser.add_argument("--batch", type=float, default=10.0, help="seconds per batch (default 10)")
    parser.add_argument("--device-id", default="pi-0001", help="device id in every header (default pi-0001)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    def progress(n, builder, payload):
        if not args.quiet:
            print("  batch %d: %d ticks, %d samples, %d bytes" % (n, len(builder), builder.samples, len(payload)),
                  file=sys.stderr, flush=True)

    started = time.time()
    agent, recorded = record(args.seconds, args.interval, args.batch, args.device_id, progress)
    totals, rows = measure(recorded)
    samples = sum(r.samples for r in recorded)
    ticks = sum(r.ticks for r in recorded)
    series = len(agent.table)
    birth = lifecycle.birth_payload(agent)
    samples_per_hour = samples / ticks * (3600.0 / args.interval)
    birth_per_sample = len(birth) / samples_per_hour
    per_sample = dict((k, totals[k] / samples) for k in FORMATS)
    plain = per_sample["wire_v1_plain"]
    verdict = "PASS" if plain <= TARGET_BYTES_PER_SAMPLE else "FAIL"

    print("wire size: %d batches, %d ticks, %d samples, %d series, %g s interval, %g s batches, device id %r"
          % (len(recorded), ticks, samples, series, args.interval, args.batch, args.device_id))
    print("machine: %s" % machine())
    print()
    print("| format | bytes/batch (mean) | bytes/sample | x wire v1 plain |")
    print("|---|---:|---:|---:|")
    for key in FORMATS:
        print("| %s | %.0f | %.2f | %.1f |" % (LABELS[key], totals[key] / len(recorded), per_sample[key],
                                              per_sample[key] / plain))
    print()
    print("birth message: %d bytes (%d series), once per connection; over one hour of samples "
          "(%.0f) = %.4f bytes/sample" % (len(birth), series, samples_per_hour, birth_per_sample))
    print("wire v1 plain incl. one birth per hour: %.3f bytes/sample" % (plain + birth_per_sample))
    print("target: wire v1 plain <= %.0f bytes/sample on average: %.3f -> %s"
          % (TARGET_BYTES_PER_SAMPLE, plain, verdict))
    figures = {
        "bench": "wire_size", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": args.seconds, "interval_s": args.interval, "batch_s": args.batch, "device_id": args.device_id,
        "batches": len(recorded), "ticks": ticks, "samples": samples, "series": series,
        "bytes": totals, "bytes_per_sample": dict((k, round(v, 3)) for k, v in per_sample.items()),
        "birth_bytes": len(birth), "birth_bytes_per_sample_1h": round(birth_per_sample, 5),
        "per_batch": [{"ticks": t, "samples": s, "bytes": sizes} for t, s, sizes in rows],
        "target_bytes_per_sample": TARGET_BYTES_PER_SAMPLE, "target": verdict, "machine": machine(),
    }
    print(json.dumps(figures, separators=(",", ":")))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
