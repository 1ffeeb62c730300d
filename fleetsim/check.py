"""What a receiver got against what the simulator made: every sample exactly once?

`Tally` reads OTLP export requests (opentelemetry-proto messages, or their bytes) and counts per
device the device's own points and the batches (the gateway adds one `edge.agent.lost.batches`
point per batch, at the batch's last tick: a batch exported twice shows as that point twice).
`compare(report, tally)` sets the simulator's report (fleetsim/cli.py `--report`) against it.
"""

from __future__ import annotations

from collections import Counter

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

GATEWAY_METRICS = ("edge.sampling.interval", "edge.agent.lost.batches", "edge.agent.lost.samples")


class Tally:
    def __init__(self) -> None:
        self.samples: Counter = Counter()  # device -> its points
        self.batches: dict[str, Counter] = {}  # device -> last tick (ms) -> times exported

    def add(self, request) -> tuple[int, list[tuple[str, int]]]:
        """Count one request; returns (device points in it, [(device, batch's last tick ms)])."""
        points, batches = 0, []
        if isinstance(request, (bytes, bytearray, memoryview)):
            message = ExportMetricsServiceRequest()
            message.ParseFromString(bytes(request))
            request = message
        for rm in request.resource_metrics:
            device = ""
            for kv in rm.resource.attributes:
                if kv.key == "service.instance.id":
                    device = kv.value.string_value
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind).data_points
                    if metric.name == "edge.agent.lost.batches":
                        seen = self.batches.setdefault(device, Counter())
                        for point in data:
                            last = point.time_unix_nano // 1_000_000
                            seen[last] += 1
                            batches.append((device, last))
                    elif metric.name not in GATEWAY_METRICS:
                        self.samples[device] += len(data)
                        points += len(data)
        return points, batches


def compare(batches: list, tally: Tally) -> dict:
    """`batches` as the report lists them: [device, boot, seq, samples, first_ms, last_ms, fate]."""
    made: dict[str, Counter] = {}
    samples: Counter = Counter()
    for device, _boot, _seq, count, _first, last, fate in batches:
        if fate == "dropped":
            continue
        made.setdefault(device, Counter())[last] += 1
        samples[device] += count
    missing = duplicated = extra = 0
    for device in set(made) | set(tally.batches):
        want, got = made.get(device, Counter()), tally.batches.get(device, Counter())
        for last in set(want) | set(got):
            missing += max(0, want[last] - got[last])
            duplicated += max(0, got[last] - want[last]) if want[last] else 0
            extra += got[last] if not want[last] else 0
    return {
        "batches_made": sum(sum(c.values()) for c in made.values()),
        "batches_received": sum(sum(c.values()) for c in tally.batches.values()),
        "batches_missing": missing, "batches_duplicated": duplicated, "batches_unknown": extra,
        "samples_made": sum(samples.values()), "samples_received": sum(tally.samples.values()),
        "devices_with_sample_mismatch": sum(1 for d in set(samples) | set(tally.samples) if samples[d] != tally.samples[d]),
    }
