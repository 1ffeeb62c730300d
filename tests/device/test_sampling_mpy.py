"""edge_agent.sampling.sampler runs unchanged under the real MicroPython binary and decides like CPython: the
load policy's schedule and the adaptive look-ahead, through a real BatchBuilder."""

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

SCRIPT = """
import sys
sys.path.insert(0, %r)
from edge_agent.model import Series, SeriesTable
from edge_wire import COUNTER, GAUGE
from edge_agent.sampling.sampler import Sampler, validate_sampling
from edge_wire.batch import BatchBuilder
s = Sampler({"policy": "load+adaptive", "interval_ms": 1000, "max_interval_ms": 16000, "cpu_max_ms": 20000})
table = SeriesTable()
g = Series("g", GAUGE, "1")
c = Series("c", COUNTER, "By")
table.intern(g)
table.intern(c)
builder = BatchBuilder()
seed = 12345
total = 0
out = []
t = 0
for i in range(600):
    seed = (seed * 1103515245 + 12345) %% 2147483648
    noise = seed %% 1000
    level = 20000 if i < 300 else 70000
    if i %% 97 == 50:
        level = 99000
    total += 100 + (seed %% 7) * (1 if i < 400 else 30)
    due = s.due(t)
    if due or s.load_due(t):
        s.observe_load(t, 0.95 if 100 <= i < 130 else 0.1, None, None, 0.001)
    if "cpu" in due:
        builder.add_tick(t, s.select(t, "cpu", [(g, level + noise), (c, total)]))
    if len(builder) >= 10:
        s.thin(builder, table.series)
        out.append([builder.ticks[0], builder.masks[:], builder.samples, s.effective_interval_ms(g)])
        builder.encode("d", 1, i, 0)
        builder.clear()
    t = s.next_due_ms()
print(repr(validate_sampling({"load_high": 2, "policy": "x", "adaptive_k": 3})))
print(repr(out))
print(repr(sorted(s.sends.items())))
"""


def run(interpreter):
    proc = subprocess.run([interpreter, "-c", SCRIPT % ROOT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="no micropython binary in the venv")
def test_micropython_decisions_match_cpython():
    mpy = run(MICROPYTHON)
    cpy = run(sys.executable)
    assert mpy[0] == cpy[0] and "load_high" in mpy[0] and "retired" in mpy[0]
    batches = json.loads(cpy[1])
    assert len(batches) > 40 and all(samples < 20 for _, _, samples, _ in batches)  # thinned: 2 series x 10 ticks read
    assert mpy[1] == cpy[1]
    assert mpy[2] == cpy[2]
