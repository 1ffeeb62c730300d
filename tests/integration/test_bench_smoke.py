"""Smoke test of bench/wire_size.py: a short real recording still meets the wire-size target.

One 5 s batch at a 1 s interval (six ticks) of this machine's real /proc stream, driven by the real
agent; the benchmark's last line is JSON. Batches of a single tick pay the header and the first
absolute value of every column for one sample each, so they are not what the 4-byte target is about.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import ROOT


def test_wire_size_smoke():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "wire_size.py"), "--seconds", "5", "--batch", "5", "--quiet"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    per_sample = figures["bytes_per_sample"]
    assert figures["samples"] > 0 and figures["batches"] == 1
    assert per_sample["wire_v1_plain"] <= 4
    assert per_sample["wire_v1_deflate"] < per_sample["wire_v1_plain"]
    assert per_sample["otlp_proto"] > per_sample["wire_v1_plain"]
    assert figures["target"] == "PASS"
