"""The /proc collectors under the real MicroPython: every fixture snapshot (tests/fixtures/proc/) read
by the same code gives what CPython gives (tests/unit/test_procfs_collectors.py checks CPython's)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

REPO = Path(ROOT)
FIXTURES = REPO / "tests" / "fixtures" / "proc"
NAMES = ("cpu", "memory", "load", "network", "system")

# arguments go through a file: this MicroPython unix build dies ("FATAL: uncaught NLR") on a
# command-line argument of 256 characters or more
RUNNER = """
import sys, json
f = open(sys.argv[1])
args = json.loads(f.read())
f.close()
sys.path.insert(0, args["repo"])
from edge_agent.collectors.procfs.registry import procfs_collectors
result = []
for scenario, snapshots, options in args["scenarios"]:
    collectors = procfs_collectors(args["fixtures"] + "/" + scenario + "/" + snapshots[0], options)
    for t in snapshots:
        for name in ("cpu", "memory", "load", "network", "system"):
            collector = collectors[name]
            collector.root = args["fixtures"] + "/" + scenario + "/" + t
            try:
                out = [[s.key, s.kind, s.unit, s.scale, v] for s, v in collector.collect()]
            except OSError:
                out = "OSError"
            result.append([scenario, t, name, out])
        try:
            result.append([scenario, t, "boot_id", collectors["system"].boot_id()])
        except OSError:
            result.append([scenario, t, "boot_id", "OSError"])
print(json.dumps(result))
"""


def run_runner(interpreter, tmp_path):
    scenarios = []
    for scenario in sorted(os.listdir(FIXTURES)):
        options = {"network": {"counter_bits": 32}} if scenario == "net_wrap32" else {}
        scenarios.append([scenario, sorted(os.listdir(FIXTURES / scenario)), options])
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"repo": str(REPO), "fixtures": str(FIXTURES), "scenarios": scenarios}))
    done = subprocess.run([interpreter, str(script), str(args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_micropython_matches_cpython(tmp_path):
    micropython = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")
    if micropython is None:
        reason = "micropython binary not found next to %s nor on PATH" % sys.executable
        print(reason)
        pytest.skip(reason)
    expected = run_runner(sys.executable, tmp_path)
    got = run_runner(micropython, tmp_path)
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine == theirs
    # the replay covered the awkward cases, not just errors
    outputs = [entry[3] for entry in expected if entry[2] in NAMES]
    assert sum(1 for out in outputs if out != "OSError") >= 20
    assert any(v == 2**64 for out in outputs if out != "OSError" for _, _, _, _, v in out)
