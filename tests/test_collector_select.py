"""Backend selection: eBPF when it can load, else netlink / procfs with ONE line saying why,
and the same metric names either way. Each case runs in a child process so that blocking bcc's
import or dropping privileges does not touch this test process."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = {"system.cpu.time", "system.cpu.utilization", "system.network.io", "system.network.packets",
        "system.network.errors", "system.network.dropped", "system.memory.usage", "system.uptime"}
CHILD = """
import json, sys, time
if sys.argv[1] == "block-bcc":
    sys.modules["bcc"] = None  # import bcc now raises ImportError
from edge_agent.collectors.select import build_collectors
lines = []
config = json.loads(sys.argv[2])
collectors, effective = build_collectors(config, log=lines.append)
names = set()
for _ in range(2):
    for c in collectors:
        names.update(s.name for s, _ in c.collect())
    time.sleep(0.2)
for c in collectors:
    c.close()
print(json.dumps({"lines": lines, "effective": effective, "names": sorted(names)}))
"""
ALL_AUTO = dict((n, {"enabled": True, "backend": "auto"}) for n in ("cpu", "network", "memory", "load", "system"))


def _run(mode, config=None, prefix=(), python=sys.executable, cwd=ROOT):
    out = subprocess.run(list(prefix) + [python, "-c", CHILD, mode, json.dumps(config or ALL_AUTO)],
                         cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _need(condition, reason):
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def test_without_bcc_falls_back_with_one_line_each_and_same_names():
    _need(sys.platform.startswith("linux"), "not Linux")
    got = _run("block-bcc")
    assert got["effective"] == {"cpu": "procfs", "network": "netlink", "memory": "procfs", "load": "procfs",
                                "system": "procfs"}
    assert len(got["lines"]) == 2, got["lines"]
    cpu_line, net_line = got["lines"]
    assert cpu_line.startswith("collector cpu: eBPF unavailable (bcc not importable") and cpu_line.endswith("using procfs")
    assert net_line.startswith("collector network: eBPF unavailable (bcc") and net_line.endswith("using netlink")
    assert CORE <= set(got["names"]), sorted(CORE - set(got["names"]))


def test_ebpf_and_fallback_send_the_same_core_names():
    _need(sys.platform.startswith("linux") and os.geteuid() == 0, "needs root for eBPF")
    from edge_agent.collectors import bpf_loader

    reason = bpf_loader.missing("cpu") or bpf_loader.missing("net")
    _need(reason is None, "eBPF unavailable: %s" % reason)
    ebpf = _run("normal")
    assert ebpf["effective"]["cpu"] == "ebpf" and ebpf["effective"]["network"] == "ebpf", ebpf["lines"]
    assert ebpf["lines"] == []
    fallback = _run("block-bcc")
    assert CORE <= set(ebpf["names"]), sorted(CORE - set(ebpf["names"]))
    assert set(ebpf["names"]) & CORE == set(fallback["names"]) & CORE
    assert "system.cpu.runqueue.latency" in ebpf["names"] and "system.network.tcp.retransmits" in ebpf["names"]


def test_without_privileges_the_line_says_so():
    setpriv = shutil.which("setpriv")
    _need(os.geteuid() == 0 and setpriv is not None, "needs root and setpriv to drop privileges")
    # the unprivileged child may not be able to enter the checkout (a private temp dir, a home):
    # give it a world-readable copy of the package and the interpreter itself, not the venv's link
    public = tempfile.mkdtemp(prefix="edge-select-")
    try:
        shutil.copytree(os.path.join(ROOT, "edge_agent"), os.path.join(public, "edge_agent"))
        for base, dirs, files in os.walk(public):
            for name in dirs + files + [""]:
                os.chmod(os.path.join(base, name), 0o755)
        got = _run("normal", prefix=(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"),
                   python=os.path.realpath(sys.executable), cwd=public)
    finally:
        shutil.rmtree(public, ignore_errors=True)
    assert got["effective"]["cpu"] == "procfs" and got["effective"]["network"] in ("netlink", "procfs")
    assert any(line.startswith("collector cpu: eBPF unavailable (no privileges") for line in got["lines"]), got["lines"]


def test_explicit_backends_and_impossible_ones():
    _need(sys.platform.startswith("linux"), "not Linux")
    config = dict(ALL_AUTO)
    config["cpu"] = {"enabled": True, "backend": "procfs", "per_cpu": False}
    config["network"] = {"enabled": True, "backend": "netlink", "include": ["lo"], "exclude": []}
    config["memory"] = {"enabled": True, "backend": "ebpf"}
    config["load"] = {"enabled": False, "backend": "auto"}
    got = _run("block-bcc", config)
    assert got["effective"] == {"cpu": "procfs", "network": "netlink", "memory": "procfs", "system": "procfs"}
    assert got["lines"] == ["collector memory: memory has no ebpf backend; using procfs"]
    assert "system.cpu.load_average.1m" not in got["names"]
