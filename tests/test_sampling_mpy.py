"""edge_agent.sampling runs unchanged under the real MicroPython binary and decides like CPython."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

SCRIPT = """
import sys
sys.path.insert(0, %r)
from edge_agent.model import Series, GAUGE, COUNTER
from edge_agent.sampling import Sampler, validate_sampling
s = Sampler({"policy": "load+adaptive", "interval_ms": 1000, "max_interval_ms": 16000, "min_interval_ms": 2000})
g = Series("g", GAUGE, "1")
c = Series("c", COUNTER, "By")
seed = 12345
total = 0
out = []
t = 0
for i in range(300):
    seed = (seed * 1103515245 + 12345) %% 2147483648
    noise = (seed %% 1000) / 1000.0
    level = 20.0 if i < 150 else 70.0
    if i == 220:
        level = 99.0
    total += 100 + (seed %% 7) * (1 if i < 200 else 30)
    s.observe_load(t, 0.95 if 100 <= i < 130 else 0.1, None, None, 0.001)
    due = s.due(t)
    if "cpu" in due:
        kept = s.select(t, "cpu", [(g, level + noise), (c, total)])
        out.append([t, [p[0].key for p in kept], [s.effective_interval_ms(g), s.effective_interval_ms(c)]])
    t = s.next_due_ms()
print(repr(validate_sampling({"load_high": 2, "policy": "x"})))
print(repr(out))
"""


def run(interpreter):
    proc = subprocess.run([interpreter, "-c", SCRIPT % ROOT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="no micropython binary in the venv")
def test_micropython_decisions_match_cpython():
    mpy = run(MICROPYTHON)
    cpy = run(sys.executable)
    assert mpy[0] == cpy[0] and "load_high" in mpy[0]
    decisions = json.loads(cpy[1].replace("'", '"'))
    assert len(decisions) > 100 and any(not kept for _, kept, _ in decisions)
    assert mpy[1] == cpy[1]
