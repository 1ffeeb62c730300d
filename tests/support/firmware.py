"""`python -m firmware build` as the tests run it: reproducible (SOURCE_DATE_EPOCH) and with a umask of 077."""

import os
import subprocess
import sys

from tests.support import ROOT

SOURCE_DATE_EPOCH = "1700000000"


def firmware_build(out, **env):
    """`python -m firmware build --out OUT` (every architecture) with SOURCE_DATE_EPOCH set and a umask
    of 077; returns its log. The interpreters build from build/firmware, the cache, when it is there."""
    full = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, **env)
    proc = subprocess.run([sys.executable, "-m", "firmware", "build", "--out", str(out)], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=1800, preexec_fn=lambda: os.umask(0o077))
    assert proc.returncode == 0, proc.stderr
    return proc.stderr
