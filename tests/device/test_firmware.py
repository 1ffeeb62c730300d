"""firmware/: `python -m firmware build` gives the same bytes twice, and what it builds is well formed:
the device interpreters (MicroPython with the agent frozen in, static, one per architecture), the
.ipk as opkg expects it, the systemd unit, the manifests, and .mpy modules the real MicroPython loads.
tests/device/test_device_binary.py runs the interpreters against the broker and the gateway."""

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile

import pytest

from edge_agent import __version__
from edge_agent import config as configuration
from firmware import MPY_BUNDLE_TARGET, build, manifest
from firmware.interpreter import ARCHES
from tests.support import ROOT
from tests.support.firmware import SOURCE_DATE_EPOCH as SDE
from tests.support.firmware import firmware_build

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
MPY = "edge-agent-micropython-%s.tar.gz" % __version__
PYZ = "edge-agent-%s.pyz" % __version__
CPY = "edge-agent-cpython-%s.tar.gz" % __version__
BINARIES = {arch: "micropython-edge-agent-%s-%s" % (__version__, arch) for arch in ARCHES}
IPKS = {arch: "edge-agent_%s-1_%s.ipk" % (__version__, ARCHES[arch].openwrt) for arch in ARCHES}
# ELF e_machine of each architecture, and its byte order
ELF = {"x86_64": (62, "<"), "armhf": (40, "<"), "mips": (8, ">"), "i686": (3, "<")}


@pytest.fixture(scope="module")
def dist(firmware_dist):
    return firmware_dist


def members(data):
    """name -> (TarInfo, bytes or None) of a .tar.gz, in archive order."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_two_builds_give_the_same_bytes(dist, tmp_path):
    out, _ = dist
    firmware_build(tmp_path, TZ="Asia/Kolkata", LC_ALL="C")  # another time zone, locale and umask
    names = sorted(os.listdir(out))
    assert names == sorted(os.listdir(tmp_path))
    assert {MPY, PYZ, CPY, "SHA256SUMS"} | set(BINARIES.values()) | set(IPKS.values()) <= set(names)
    for name in names:
        assert read(os.path.join(out, name)) == read(os.path.join(tmp_path, name)), name


def test_archives_are_normalised(dist):
    out, _ = dist
    for name in [MPY, CPY] + list(IPKS.values()):
        data = read(os.path.join(out, name))
        assert data[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime 0
        for info, _content in members(data).values():
            assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "", "", int(SDE)), info.name
            assert info.mode in (0o644, 0o755), (info.name, oct(info.mode))
    with zipfile.ZipFile(os.path.join(out, PYZ)) as zf:
        assert {i.date_time for i in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}
        assert [i.filename for i in zf.infolist()] == sorted(i.filename for i in zf.infolist())


def test_source_date_epoch_defaults_to_the_last_commit(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    commit_time = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True, text=True)
    if commit_time.returncode:
        pytest.skip("not a git checkout")
    assert build.source_date_epoch() == int(commit_time.stdout)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    assert build.source_date_epoch() == 1234567890


def inner_files(name, data):
    """path -> bytes of every file inside an artifact, with the names its manifest uses (an interpreter's
    are the sources frozen into it)."""
    if name in BINARIES.values():
        return {rel: read(os.path.join(ROOT, rel)) for rel in manifest.sources()}
    if name.endswith(".pyz"):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return {n: zf.read(n) for n in zf.namelist()}
    files = {}
    for path, (_info, content) in members(data).items():
        if name.endswith(".ipk") and path in ("./data.tar.gz", "./control.tar.gz"):
            prefix = "" if path == "./data.tar.gz" else "CONTROL/"
            for inner, (_i, c) in members(content).items():
                if c is not None:
                    files[prefix + inner[2:]] = c
        elif content is not None and not name.endswith(".ipk"):
            files[path[2:]] = content
    return files


def test_manifests_and_checksums_match_the_files(dist):
    out, _ = dist
    sums = {}
    for line in read(os.path.join(out, "SHA256SUMS")).decode().splitlines():
        digest, name = line.split("  ")
        sums[name] = digest
    assert set(sums) == {MPY, PYZ, CPY} | set(BINARIES.values()) | set(IPKS.values())
    for name in sums:
        data = read(os.path.join(out, name))
        manifest = json.loads(read(os.path.join(out, name + ".manifest.json")))
        assert manifest["version"] == __version__ and manifest["artifact"] == name
        assert manifest["sha256"] == sums[name] == hashlib.sha256(data).hexdigest()
        assert manifest["size"] == len(data)
        files = inner_files(name, data)
        listed = {f["path"]: f for f in manifest["files"]}
        assert set(listed) == set(files), name
        for path, content in files.items():
            assert listed[path]["size"] == len(content) and listed[path]["sha256"] == hashlib.sha256(content).hexdigest()


def sh_syntax_ok(script):
    proc = subprocess.run(["sh", "-n"], input=script, capture_output=True)
    return proc.returncode == 0, proc.stderr.decode()


@pytest.mark.parametrize("arch", list(ARCHES))
def test_ipk_structure(dist, arch):
    out, _ = dist
    outer = members(read(os.path.join(out, IPKS[arch])))
    assert list(outer) == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]  # ipkg-build's order
    assert outer["./debian-binary"][1] == b"2.0\n"
    control = members(outer["./control.tar.gz"][1])
    data = members(outer["./data.tar.gz"][1])

    lines = control["./control"][1].decode().splitlines()
    fields = dict(line.split(": ", 1) for line in lines if not line.startswith(" "))
    assert fields["Package"] == "edge-agent"
    assert fields["Version"] == __version__ + "-1"
    assert fields["Architecture"] == ARCHES[arch].openwrt
    assert "Depends" not in fields  # the interpreter is in the package, linked statically
    assert int(fields["Installed-Size"]) == sum(len(c) for _i, c in data.values() if c is not None)
    for name in ("Maintainer", "License", "Section", "Description"):
        assert fields[name].strip()

    for script in ("./postinst", "./prerm"):
        info, content = control[script]
        assert info.mode & 0o111 and content.startswith(b"#!/bin/sh\n"), script
        assert sh_syntax_ok(content) == (True, ""), script
    conffiles = control["./conffiles"][1].decode().split()
    assert conffiles == ["/etc/edge-agent/config.json"]
    for path in conffiles:
        assert "." + path in data

    info, init = data["./etc/init.d/edge-agent"]
    assert info.mode == 0o755 and init.startswith(b"#!/bin/sh /etc/rc.common\n")
    assert sh_syntax_ok(init) == (True, "")
    text = init.decode()
    for needle in ("USE_PROCD=1", "start_service()", "procd_open_instance", "procd_set_param command /usr/bin/",
                   "procd_set_param respawn", "procd_close_instance",
                   "procd_set_param env EDGE_AGENT_HEAP=%s\n" % ARCHES[arch].heap):
        assert needle in text.replace('"$PROG"', "/usr/bin/edge-agent-mpy"), needle
    launcher = data["./usr/bin/edge-agent-mpy"]
    assert launcher[0].mode == 0o755 and sh_syntax_ok(launcher[1]) == (True, "")
    # the agent's own interpreter, where the launcher looks for it; no module file beside it
    info, binary = data["./usr/lib/edge-agent/micropython"]
    assert info.mode == 0o755 and binary == read(os.path.join(out, BINARIES[arch]))
    assert not any(name.endswith((".py", ".mpy")) for name in data)


def elf_header(data):
    """(class bits, byte order, e_machine, has PT_INTERP) of an ELF executable."""
    assert data[:4] == b"\x7fELF"
    bits = 64 if data[4] == 2 else 32
    order = "<" if data[5] == 1 else ">"
    if bits == 64:
        machine, = struct.unpack_from(order + "H", data, 18)
        phoff, = struct.unpack_from(order + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 54)
    else:
        machine, = struct.unpack_from(order + "H", data, 18)
        phoff, = struct.unpack_from(order + "I", data, 28)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 42)
    types = [struct.unpack_from(order + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return bits, order, machine, 3 in types  # PT_INTERP = 3: a dynamic executable


@pytest.mark.parametrize("arch", list(ARCHES))
def test_interpreters_are_static_executables_of_their_architecture(dist, arch):
    out, _ = dist
    path = os.path.join(out, BINARIES[arch])
    assert os.stat(path).st_mode & 0o777 == 0o755
    data = read(path)
    assert elf_header(data) == (ARCHES[arch].bits, ELF[arch][1], ELF[arch][0], False)
    info = json.loads(read(path + ".manifest.json"))
    built = info["interpreter"]
    assert built["arch"] == arch and built["heap_default"] == ARCHES[arch].heap and built["static"]
    assert built["micropython"].startswith("1.25.") and "Debian trixie source" in built["micropython"]
    assert "Mbed TLS 3.6" in built["mbedtls"]
    assert built["frozen_modules"] == manifest.modules()
    assert built["patches"] == sorted(os.listdir(os.path.join(ROOT, "firmware", "micropython", "patches")))


FROZEN_SCRIPT = """
import sys
help('modules')
for name in %r:
    __import__(name)
    print('frozen', name, sys.modules[name].__file__)
"""


def test_the_frozen_modules_are_the_manifests(dist, tmp_path):
    """One list: the interpreter holds exactly firmware/manifest.py's modules, and imports them frozen (from
    /, with a stray edge_agent package in the library folder it must not take)."""
    out, _ = dist
    stray = tmp_path / "lib" / "edge_agent"
    stray.mkdir(parents=True)
    (stray / "__init__.py").write_text("raise SystemExit('a stray source shadowed the frozen agent')\n")
    proc = subprocess.run([os.path.join(out, BINARIES["x86_64"]), "-c", FROZEN_SCRIPT % manifest.modules()],
                          env={"MICROPYPATH": ".frozen:" + str(tmp_path / "lib")}, cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    help_text = proc.stdout.split("\nfrozen ")[0]  # help('modules') names frozen modules by path
    listed = {word.replace("/__init__", "").replace("/", ".") for word in help_text.split()}
    frozen = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("frozen ")]
    assert [name for name, _file in frozen] == manifest.modules()
    assert all(path == manifest.source(name) for name, path in frozen)  # a frozen module's path, no folder
    assert {name for name in listed if name.split(".")[0] in ("edge_agent", "edge_wire")} == set(manifest.modules())


def test_default_config_is_valid(dist, tmp_path):
    out, _ = dist
    for artifact in (MPY, CPY):
        content = members(read(os.path.join(out, artifact)))["./etc/edge-agent/config.json"][1]
        path = tmp_path / "config.json"
        path.write_bytes(content)
        cfg = configuration.load(str(path))
        assert cfg["state_dir"] == "/var/lib/edge-agent"


def test_systemd_unit(dist, tmp_path):
    out, _ = dist
    unit = members(read(os.path.join(out, CPY)))["./etc/systemd/system/edge-agent.service"][1].decode()
    for line in ("Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                 "PrivateTmp=yes", "StateDirectory=edge-agent",
                 "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_RESOURCE",
                 "AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_RESOURCE"):
        assert line in unit.splitlines(), line
    assert "RestartSec=" in unit and "CAP_SYS_ADMIN" not in unit
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed: unit checked by content only")
    path = tmp_path / "edge-agent.service"
    path.write_text(unit)
    proc = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode and "python3" in proc.stderr and not os.path.exists("/usr/bin/python3"):
        pytest.skip("systemd-analyze verify needs /usr/bin/python3, the unit's interpreter: " + proc.stderr)
    assert proc.returncode == 0 and "edge-agent.service" not in proc.stderr, proc.stderr


def test_pyz_runs_with_the_system_python(dist, tmp_path):
    out, _ = dist
    pyz = os.path.join(out, PYZ)
    assert read(pyz).startswith(b"#!/usr/bin/env python3\n")
    proc = subprocess.run([sys.executable, "-I", pyz, "--version"], capture_output=True, text=True, cwd=str(tmp_path),
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "edge-agent " + __version__, proc.stderr
    names = inner_files(PYZ, read(pyz))
    assert "__main__.py" in names and "edge_agent/cli/main.py" in names
    assert not any("__pycache__" in n for n in names)
    # compiled bytecode beside every module (issue 11; tests/device/test_bpf_artifacts.py checks it is used)
    assert all(n + "c" in names for n in names if n.endswith(".py") and n != "__main__.py")
    cpy = members(read(os.path.join(out, CPY)))
    assert cpy["./usr/lib/edge-agent/edge-agent.pyz"][1] == read(pyz)


def test_mpy_modules_load_under_micropython(dist, tmp_path):
    if not os.path.exists(MICROPYTHON):
        pytest.skip("no micropython binary beside the interpreter")
    out, log = dist
    lib = tmp_path / "lib"
    modules = []
    for name, (_info, content) in members(read(os.path.join(out, MPY))).items():
        prefix = "./usr/lib/edge-agent/"
        if name.startswith(prefix) and content is not None:
            assert name.endswith(".mpy"), name
            target = lib / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            modules.append(name[len(prefix):-4].replace("/", ".").replace(".__init__", ""))
    assert sorted(p.suffix for p in lib.rglob("*") if p.is_file()) == [".mpy"] * len(modules)
    script = ("import sys\nsys.path[:] = [%r, '.frozen']\n"
              "for name in %r:\n    __import__(name)\n    print('ok', name, sys.modules[name].__file__)\n") % (
        str(lib), sorted(modules))
    proc = subprocess.run([MICROPYTHON, "-c", script], capture_output=True, text=True, cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    loaded = [line.split() for line in proc.stdout.splitlines()]
    assert [m for _ok, m, _f in loaded] == sorted(modules)
    assert all(f.endswith(".mpy") and f.startswith(str(lib)) for _ok, _m, f in loaded)
    assert sorted(modules) == sorted(manifest.modules())  # the bundle holds the same modules as the interpreters


def test_bundle_size(dist):
    out, log = dist
    manifest_info = json.loads(read(os.path.join(out, MPY + ".manifest.json")))
    assert manifest_info["mpy_bytes"] <= MPY_BUNDLE_TARGET
    assert os.path.getsize(os.path.join(out, MPY)) <= MPY_BUNDLE_TARGET
    gz = gzip.decompress(read(os.path.join(out, MPY)))
    assert len(gz) % 512 == 0
