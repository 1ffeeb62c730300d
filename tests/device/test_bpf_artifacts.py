"""The compiled eBPF objects travel in every artifact, and the zipapp runs from its own bytecode:
the wheel (package data), each OpenWrt .ipk (its architecture's byte order), the zipapp (loaded
from inside the zip, as root)."""

import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from firmware.interpreter import ARCHES
from tests.support import ROOT

OBJECTS = ["cpu.bpfeb.o", "cpu.bpfel.o", "net.bpfeb.o", "net.bpfel.o"]


@pytest.fixture(scope="module")
def dist(firmware_dist):
    out, _log = firmware_dist  # the session's one firmware build (conftest)
    names = os.listdir(out)
    found = dict((kind, os.path.join(out, [n for n in names if n.endswith(kind)][0]))
                 for kind in (".pyz", "cpython-0.1.0.tar.gz"))
    found["ipks"] = dict((arch, os.path.join(out, "edge-agent_0.1.0-1_%s.ipk" % ARCHES[arch].openwrt)) for arch in ARCHES)
    return found


def _bpf_bytes(name):
    with open(os.path.join(ROOT, "bpf", name), "rb") as f:
        return f.read()


def test_the_zipapp_carries_objects_and_bytecode(dist):
    with zipfile.ZipFile(dist[".pyz"]) as zf:
        names = zf.namelist()
        assert sorted(n[4:] for n in names if n.startswith("bpf/")) == OBJECTS
        for name in OBJECTS:
            assert zf.read("bpf/" + name) == _bpf_bytes(name)
        pyc = zf.read("edge_agent/agent.pyc")
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, unchecked: no source timestamp needed
    assert "edge_agent/collectors/ebpf/libbpf.py" not in names  # development only


def test_the_zipapp_imports_its_bytecode(dist):
    code = "import sys; sys.path.insert(0, %r); import edge_agent.agent as a; print(a.__spec__.origin, a.__doc__)"
    out = subprocess.run([sys.executable, "-I", "-c", code % dist[".pyz"]], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [dist[".pyz"] + "/edge_agent/agent.pyc", "None"]  # the .pyc, built -OO (no docstrings)


def test_each_ipk_carries_the_objects_of_its_byte_order(dist):
    orders = {}
    for arch, path in dist["ipks"].items():
        with tarfile.open(path) as outer:
            data = outer.extractfile("./data.tar.gz")
            with tarfile.open(fileobj=data) as inner:
                got = dict((m.name, inner.extractfile(m).read()) for m in inner.getmembers()
                           if "/bpf/" in m.name and m.isfile())
        want = [n for n in OBJECTS if ("." + ARCHES[arch].bpf + ".") in n]
        assert sorted(got) == ["./usr/lib/edge-agent/bpf/" + n for n in want], arch
        assert all(got["./usr/lib/edge-agent/bpf/" + n] == _bpf_bytes(n) for n in want), arch
        orders[arch] = ARCHES[arch].bpf
    assert orders == {"x86_64": "bpfel", "armhf": "bpfel", "i686": "bpfel", "mips": "bpfeb"}  # MIPS routers are big-endian


def test_the_systemd_bundle_has_the_objects_where_its_unit_looks(dist):
    with tarfile.open(dist["cpython-0.1.0.tar.gz"]) as tar:
        files = dict((m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile())
    unit = files["./etc/systemd/system/edge-agent.service"].decode()
    where = [w.split("=", 1)[1] for line in unit.split("\n") if line.startswith("Environment=")
             for w in line.split() if w.startswith("EDGE_AGENT_BPF_DIR=")]
    assert where, unit  # without it the agent reads the objects inside the zipapp
    for name in OBJECTS:
        assert files.get("." + where[0] + "/" + name) == _bpf_bytes(name), (where, sorted(files))


def test_the_wheel_carries_the_objects(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", ROOT,
                           "-w", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    wheel = [n for n in os.listdir(tmp_path) if n.endswith(".whl")][0]
    with zipfile.ZipFile(os.path.join(tmp_path, wheel)) as zf:
        assert sorted(n[4:] for n in zf.namelist() if n.startswith("bpf/") and n.endswith(".o")) == OBJECTS


@pytest.mark.root
def test_the_zipapp_loads_ebpf_from_inside_itself(dist):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("needs root")
        pytest.skip("needs root")
    from edge_agent.collectors.ebpf.check import missing

    reason = missing("cpu") or missing("net")
    if reason:
        pytest.fail("eBPF unavailable: %s" % reason)
    env = dict(os.environ)
    env.pop("EDGE_AGENT_BPF_DIR", None)
    proc = subprocess.run([sys.executable, "-I", dist[".pyz"], "once"], capture_output=True, text=True, timeout=120,
                          cwd="/", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "collectors: cpu=ebpf, load=procfs, memory=procfs, network=ebpf, system=procfs" in proc.stdout, proc.stdout
    assert "system.cpu.scheduler.busy_time" in proc.stdout
