"""Backend selection: eBPF when it can load, else netlink / procfs with ONE line saying why,
and the same metric names either way; nothing of eBPF (loader, ctypes, bcc) and only pyroute2's
message class imported unless used. Each case runs in a child process (its own imports; dropped
privileges; EDGE_AGENT_BPF_DIR pointing at missing or refused objects)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from edge_agent.collectors.procfs import cpu as procfs_cpu
from tests.support import ROOT
from tests.support.ebpf import refused_objects

CORE = {"system.cpu.time", "system.cpu.utilization", "system.network.io", "system.network.packets",
        "system.network.errors", "system.network.dropped", "system.memory.usage", "system.uptime"}
CHILD = """
import json, sys, time
from edge_agent.collectors.select import build_collectors
lines = []
config = json.loads(sys.argv[1])
collectors, effective = build_collectors(config, log=lines.append)
names, states = set(), set()
for _ in range(2):
    for c in collectors:
        for s, _ in c.collect():
            names.add(s.name)
            if s.name == "system.cpu.time":
                states.add(s.attrs["state"])
    time.sleep(0.2)
for c in collectors:
    c.close()
modules = sorted(m for m in sys.modules if m in ("bcc", "ctypes", "edge_agent.collectors.ebpf.loader",
                 "edge_agent.collectors.ebpf.syscall", "pyroute2.iproute", "pyroute2.ndb") or m.startswith("asyncio"))
print(json.dumps({"lines": lines, "effective": effective, "names": sorted(names), "states": sorted(states),
                  "modules": modules}))
"""
PROC_STATES = sorted(procfs_cpu.STATES)  # the hostmetrics names of the kernel's accounting states
ALL_AUTO = dict((n, {"enabled": True, "backend": "auto"}) for n in ("cpu", "network", "memory", "load", "system"))


def _run(bpf_dir=None, config=None, prefix=(), python=sys.executable, cwd=ROOT):
    env = dict(os.environ)
    env.pop("EDGE_AGENT_BPF_DIR", None)
    env.pop("EDGE_AGENT_BPF_LOADER", None)
    if bpf_dir:
        env["EDGE_AGENT_BPF_DIR"] = bpf_dir
    out = subprocess.run(list(prefix) + [python, "-c", CHILD, json.dumps(config or ALL_AUTO)],
                         cwd=cwd, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _need(condition, reason):
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def test_without_objects_falls_back_with_one_line_each_and_same_names(tmp_path):
    _need(sys.platform.startswith("linux"), "not Linux")
    got = _run(str(tmp_path))  # an empty directory: no compiled objects
    assert got["effective"] == {"cpu": "procfs", "network": "netlink", "memory": "procfs", "load": "procfs",
                                "system": "procfs"}
    assert len(got["lines"]) == 2, got["lines"]
    cpu_line, net_line = got["lines"]
    if os.geteuid() == 0:
        assert cpu_line == "collector cpu: eBPF unavailable (no compiled cpu.bpfel.o in %s (python -m bpf.build)); " \
            "using procfs" % tmp_path, cpu_line
    assert cpu_line.startswith("collector cpu: eBPF unavailable (") and cpu_line.endswith("using procfs")
    assert net_line.startswith("collector network: eBPF unavailable (") and net_line.endswith("using netlink")
    assert CORE <= set(got["names"]), sorted(CORE - set(got["names"]))
    assert got["modules"] == [], got["modules"]  # no loader, ctypes, bcc, pyroute2 beyond its message class


def _ebpf_here():
    _need(sys.platform.startswith("linux") and os.geteuid() == 0, "needs root for eBPF")
    from edge_agent.collectors.ebpf import check as bpf_check

    reason = bpf_check.missing("cpu") or bpf_check.missing("net")
    _need(reason is None, "eBPF unavailable: %s" % reason)


@pytest.mark.root
def test_ebpf_and_fallback_send_the_same_core_names(tmp_path):
    _ebpf_here()
    ebpf = _run()
    assert ebpf["effective"]["cpu"] == "ebpf" and ebpf["effective"]["network"] == "ebpf", ebpf["lines"]
    assert ebpf["lines"] == []
    fallback = _run(str(tmp_path))
    assert CORE <= set(ebpf["names"]), sorted(CORE - set(ebpf["names"]))
    assert set(ebpf["names"]) & CORE == set(fallback["names"]) & CORE
    assert "system.cpu.runqueue.latency" in ebpf["names"] and "system.network.tcp.retransmits" in ebpf["names"]
    assert "system.cpu.scheduler.busy_time" in ebpf["names"]
    # system.cpu.time means the same whatever the backend: the kernel's accounting states only
    assert ebpf["states"] == fallback["states"] == PROC_STATES
    assert "bcc" not in ebpf["modules"] and "pyroute2.iproute" not in ebpf["modules"], ebpf["modules"]


@pytest.mark.root
def test_a_refused_program_falls_back_to_proc_without_losing_a_name(tmp_path):
    _ebpf_here()
    got = _run(refused_objects(str(tmp_path)))
    assert got["effective"]["cpu"] == "procfs" and got["effective"]["network"] == "netlink", got
    cpu_line = got["lines"][0]
    assert cpu_line.startswith("collector cpu: eBPF unavailable (the eBPF program failed to load (the kernel refused "
                               "program sched_switch (tracepoint sched/sched_switch): R"), cpu_line
    assert "invalid mem access" in cpu_line and cpu_line.endswith("using procfs"), cpu_line
    assert CORE <= set(got["names"]) and got["states"] == PROC_STATES


@pytest.mark.root
def test_without_privileges_the_line_says_so():
    setpriv = shutil.which("setpriv")
    _need(os.geteuid() == 0 and setpriv is not None, "needs root and setpriv to drop privileges")
    # the unprivileged child may not be able to enter the checkout (a private temp dir, a home):
    # give it a world-readable copy of the package and the interpreter itself, not the venv's link
    public = tempfile.mkdtemp(prefix="edge-select-")
    try:
        for package in ("edge_agent", "edge_wire"):  # the agent and the protocol it imports
            shutil.copytree(os.path.join(ROOT, package), os.path.join(public, package))
        for base, dirs, files in os.walk(public):
            for name in dirs + files + [""]:
                os.chmod(os.path.join(base, name), 0o755)
        got = _run(prefix=(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"),
                   python=os.path.realpath(sys.executable), cwd=public)
    finally:
        shutil.rmtree(public, ignore_errors=True)
    assert got["effective"]["cpu"] == "procfs" and got["effective"]["network"] in ("netlink", "procfs")
    assert any(line.startswith("collector cpu: eBPF unavailable (no privileges") for line in got["lines"]), got["lines"]
    assert got["modules"] == [], got["modules"]  # the non-root default imports nothing of eBPF


def test_explicit_backends_and_impossible_ones(tmp_path):
    _need(sys.platform.startswith("linux"), "not Linux")
    config = dict(ALL_AUTO)
    config["cpu"] = {"enabled": True, "backend": "procfs", "per_cpu": False}
    config["network"] = {"enabled": True, "backend": "netlink", "include": ["lo"], "exclude": []}
    config["memory"] = {"enabled": True, "backend": "ebpf"}
    config["load"] = {"enabled": False, "backend": "auto"}
    got = _run(str(tmp_path), config)
    assert got["effective"] == {"cpu": "procfs", "network": "netlink", "memory": "procfs", "system": "procfs"}
    assert got["lines"] == ["collector memory: memory has no ebpf backend; using procfs"]
    assert "system.cpu.load_average.1m" not in got["names"]
