"""Coverage-guided fuzzing in CI: each atheris harness in fuzz/ runs for a bounded time.

A harness fails on anything its parser may not do (fuzz/fuzz_*.py say what); libFuzzer then exits
non-zero and writes the input as a crash file, which fails this test with the file's path and
the harness output. New corpus entries go to a temporary directory: the committed seed corpus
(fuzz/corpus/, real encoder output from fuzz/seeds.py) is only read.

EDGE_FUZZ_SECONDS (default 20) sets the time per harness; docs/security.md has longer runs' figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT as CHECKOUT

ROOT = Path(CHECKOUT)
SECONDS = int(os.environ.get("EDGE_FUZZ_SECONDS", "20"))
HARNESSES = {"gateway_decode": 16384, "agent_command": 4200, "umsgpack": 16384}  # name -> -max_len


def atheris_problem() -> str | None:
    answer = subprocess.run([sys.executable, "-c", "import atheris"], capture_output=True, text=True)
    if answer.returncode:
        return "atheris does not import under %s: %s (pip install -e '.[test]')" % (
            sys.executable, answer.stderr.strip().splitlines()[-1] if answer.stderr.strip() else "?")
    return None


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_harness_finds_no_crash(name, tmp_path, capsys):
    problem = atheris_problem()
    if problem:
        print("SKIP: " + problem)
        pytest.skip(problem)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    command = [sys.executable, str(ROOT / "fuzz" / ("fuzz_%s.py" % name)), str(corpus), str(ROOT / "fuzz" / "corpus" / name),
               "-max_total_time=%d" % SECONDS, "-max_len=%d" % HARNESSES[name], "-timeout=10", "-rss_limit_mb=1024",
               "-artifact_prefix=%s/" % tmp_path, "-print_final_stats=1"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 120, cwd=ROOT)
    output = run.stdout + run.stderr
    artifacts = sorted(p.name for p in tmp_path.iterdir() if re.match(r"(crash|timeout|oom|leak|slow-unit)-", p.name))
    assert run.returncode == 0 and not artifacts, "fuzz_%s.py found %s (exit %d):\n%s" % (
        name, artifacts, run.returncode, output[-4000:])
    done = re.search(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/", output)
    seconds = re.search(r"Done \d+ runs in (\d+) second", output)
    assert done, output[-2000:]
    with capsys.disabled():
        print("\n  fuzz_%s: %s executions in %s s, cov %s, ft %s, corpus %s" % (
            name, done.group(1), seconds.group(1) if seconds else "?", done.group(2), done.group(3), done.group(4)))
