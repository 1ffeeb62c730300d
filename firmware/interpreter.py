"""The device interpreter: MicroPython's unix port built from Debian's source packages, agent frozen in.

Sources (`apt-get source`, through the deb-src line bin/setup adds for SUITE; bookworm has neither):
- `micropython` (1.25): upstream without its git submodules. Debian's patches are applied except
  the one that links the system's mbedtls (bookworm's is 2.28, and a shared library);
- `mbedtls` (3.6): put where MicroPython's build expects its submodule, so it is compiled in with
  MicroPython's own mbedtls configuration (TLS 1.2, certificates with IP addresses verified);
- ours, `firmware/micropython/`: the `edge-agent` variant (what the agent needs and not threads,
  ffi, btree, the line editor or FAT/littlefs; KeyboardInterrupt scheduled, not raised inside the
  signal handler) and two patches (`-m` raises KeyboardInterrupt on SIGINT; SIGTERM and SIGHUP
  do the same, so a service manager's stop is a clean stop).

Every module of firmware/manifest.py is frozen: its bytecode is in the binary, not in the heap.
Each binary is linked statically (it runs on any Linux of its architecture, glibc or musl), for
the architectures of ARCHES with Debian's cross compilers; the 32-bit ones run here under
qemu-user (`qemu-user-static`), i686 natively.

Cache: build/firmware/ (ignored by git). The downloaded sources, the patched tree (one per set of
inputs), mpy-cross and each architecture's build directory stay there, so a second build only
re-freezes the modules and links (seconds). Delete the folder to start over.
"""

import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections import namedtuple

from firmware import manifest

ROOT = manifest.ROOT
HERE = os.path.join(ROOT, "firmware", "micropython")
VARIANT = os.path.join(HERE, "edge-agent")
PATCHES = os.path.join(HERE, "patches")
SUITE = "trixie"
PACKAGES = ("micropython", "mbedtls")
# Debian's patch that replaces the bundled mbedtls with the system's shared library
SYSTEM_MBEDTLS_PATCH = "system-mbedtls"

# static: one binary for any Linux of its architecture; no build id: it hashes the build's paths, and the
# same sources must give the same bytes wherever they are built
LDFLAGS = "-static -Wl,--build-id=none"

Arch = namedtuple("Arch", "name cross qemu openwrt heap bits bpf")
# heap: the default `-X heapsize` a package for this architecture runs the agent with (tested);
# bpf: the byte order of the eBPF objects (bpf/build.py) its .ipk ships
ARCHES = {
    "x86_64": Arch("x86_64", "", None, "x86_64", "64K", 64, "bpfel"),
    "armhf": Arch("armhf", "arm-linux-gnueabihf-", "qemu-arm-static", "arm_cortex-a7_neon-vfpv4", "48K", 32, "bpfel"),
    "mips": Arch("mips", "mips-linux-gnu-", "qemu-mips-static", "mips_24kc", "48K", 32, "bpfeb"),
    "i686": Arch("i686", "i686-linux-gnu-", None, "i386_pentium4", "48K", 32, "bpfel"),
}


class BuildError(Exception):
    pass


def cache_dir():
    return os.environ.get("EDGE_FIRMWARE_CACHE") or os.path.join(ROOT, "build", "firmware")


def run(args, cwd=None, env=None, what=None):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        raise BuildError("%s failed (exit %d):\n  %s" % (what or " ".join(args[:3]), proc.returncode,
                                                       "\n  ".join(tail)))
    return proc.stdout


def digest(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def tree_files(folder):
    """(relative path, bytes) of every file under `folder`, sorted: a build input."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            out.append((os.path.relpath(path, folder), read(path)))
    return out


# ---------------------------------------------------------------- sources


def fetch(package, src, log):
    """The .dsc of `package` in SUITE, downloaded into `src` by apt unless already there.

    Without apt's source index (offline, or no deb-src line) the newest .dsc already in `src` is used.
    """
    try:
        with tempfile.TemporaryDirectory() as empty:  # apt lists only the files missing from its folder
            uris = subprocess.run(["apt-get", "source", "--print-uris", "-qq", "%s/%s" % (package, SUITE)],
                                  capture_output=True, text=True, cwd=empty)
    except OSError as exc:
        uris = None
        log("warning: apt-get: %s" % exc)
    files = []
    if uris is not None and uris.returncode == 0:
        for line in uris.stdout.splitlines():
            words = line.split()
            if len(words) >= 4 and words[0].startswith("'"):
                files.append((words[1], int(words[2])))
    dscs = [name for name, _size in files if name.endswith(".dsc")]
    if dscs:
        if not all(os.path.exists(os.path.join(src, n)) and os.path.getsize(os.path.join(src, n)) == size
                   for n, size in files):
            log("fetching Debian's %s source (%s)" % (package, SUITE))
            run(["apt-get", "source", "--download-only", "-qq", "%s/%s" % (package, SUITE)], cwd=src,
                what="apt-get source %s/%s" % (package, SUITE))
        return os.path.join(src, dscs[0])
    cached = sorted(glob.glob(os.path.join(src, package + "_*.dsc")))
    if cached:
        log("warning: apt has no %s source for %s; using the cached %s"
            % (package, SUITE, os.path.basename(cached[-1])))
        return cached[-1]
    detail = (uris.stderr.strip().splitlines() or [""])[-1] if uris is not None else ""
    raise BuildError("apt has no source of %s in %s (%s): run bin/setup, which adds the deb-src line "
                     "/etc/apt/sources.list.d/edge-telemetry-src.sources" % (package, SUITE, detail))


def dsc_version(dsc):
    for line in read(dsc).decode().splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise BuildError("%s has no Version" % dsc)


def prepare_tree(cache, log):
    """The patched MicroPython tree with mbedtls in lib/ and mpy-cross built; made once per input set."""
    src = os.path.join(cache, "src")
    os.makedirs(src, exist_ok=True)
    dscs = {package: fetch(package, src, log) for package in PACKAGES}
    ours = tree_files(PATCHES)
    key = digest(*[read(d) for d in dscs.values()], *[p + "\0" for p, _ in ours], *[b for _, b in ours])[:16]
    tree = os.path.join(cache, "tree-" + key)
    versions = {package: dsc_version(dsc) for package, dsc in dscs.items()}
    if os.path.exists(os.path.join(tree, ".done")):
        return tree, versions
    log("preparing MicroPython %s with mbedtls %s (Debian %s sources)"
        % (versions["micropython"], versions["mbedtls"], SUITE))
    work = tree + ".tmp"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    top = os.path.join(work, "micropython")
    run(["dpkg-source", "--skip-patches", "-x", dscs["micropython"], top], what="dpkg-source -x micropython")
    series = os.path.join(top, "debian", "patches", "series")
    for name in read(series).decode().split():
        if name.startswith("#") or SYSTEM_MBEDTLS_PATCH in name.lower():
            continue
        run(["patch", "-p1", "--batch", "--forward", "-d", top, "-i", os.path.join(top, "debian", "patches", name)],
            what="Debian patch " + name)
    mbedtls = os.path.join(top, "lib", "mbedtls")
    shutil.rmtree(mbedtls, ignore_errors=True)  # an empty folder: the submodule's place
    run(["dpkg-source", "-x", dscs["mbedtls"], mbedtls], what="dpkg-source -x mbedtls")
    for name, _data in ours:
        run(["patch", "-p1", "--batch", "--forward", "-d", top, "-i", os.path.join(PATCHES, name)],
            what="patch " + name)
    run(["make", "-C", os.path.join(top, "mpy-cross"), "-j%d" % (os.cpu_count() or 1)], what="make mpy-cross")
    with open(os.path.join(work, ".done"), "w") as f:
        json.dump(versions, f)
    shutil.rmtree(tree, ignore_errors=True)
    os.rename(work, tree)
    for old in glob.glob(os.path.join(cache, "tree-*")):  # earlier input sets and their builds
        if old != tree:
            shutil.rmtree(old, ignore_errors=True)
    return tree, versions


# ---------------------------------------------------------------- one architecture


def compiler(arch):
    gcc = arch.cross + "gcc"
    if not shutil.which(gcc):
        raise BuildError("%s not found: run bin/setup (it installs Debian's cross compilers)" % gcc)
    return run([gcc, "--version"]).splitlines()[0]


def frozen_manifest(path):
    """MicroPython's manifest of the device modules (firmware/manifest.py), for FROZEN_MANIFEST."""
    lines = ["# generated by firmware/interpreter.py from firmware/manifest.py\n"]
    for rel in manifest.sources():
        lines.append("module(%r, base_path=%r)\n" % (rel, ROOT))
    with open(path, "w") as f:
        f.writelines(lines)


def build_arch(arch, tree, log):
    """Build (or bring up to date) the binary for `arch`; returns its path and its toolchain line."""
    cc = compiler(arch)
    variant = tree_files(VARIANT)
    key = digest(arch.name, arch.cross, cc, LDFLAGS, *[p for p, _ in variant], *[b for _, b in variant])[:12]
    build = os.path.join(tree, "build-%s-%s" % (arch.name, key))
    os.makedirs(build, exist_ok=True)
    frozen_manifest(os.path.join(build, "manifest.py"))
    # MicroPython's freezer recompiles a module only when its source is newer than the .mpy it made
    # before: a source whose time went back (unpacked from a tar, or another checkout building into a
    # shared cache) would be frozen stale. Compiling them all again takes a second or two.
    shutil.rmtree(os.path.join(build, "frozen_mpy"), ignore_errors=True)
    log("building MicroPython for %s (%s)" % (arch.name, cc))
    top = os.path.join(tree, "micropython")
    run(["make", "-C", os.path.join(top, "ports", "unix"), "-j%d" % (os.cpu_count() or 1),
         "VARIANT_DIR=" + VARIANT, "BUILD=" + build, "PROG=micropython",
         "FROZEN_MANIFEST=" + os.path.join(build, "manifest.py"), "CROSS_COMPILE=" + arch.cross,
         "LDFLAGS_EXTRA=" + LDFLAGS],
        env=dict(os.environ, LC_ALL="C"), what="make (MicroPython for %s)" % arch.name)
    return os.path.join(build, "micropython"), cc


def command(arch, binary):
    """How to run `binary` here: under qemu-user for a foreign architecture."""
    return [arch.qemu, binary] if arch.qemu else [binary]


def self_test(arch, binary):
    """The binary starts, has TLS, and finds the agent frozen in (before any file system path)."""
    script = ("import sys, tls\nimport edge_agent.device.main as m\n"
              "print(sys.implementation._build, m.__file__, tls.MBEDTLS_VERSION)")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    out = run(command(arch, binary) + ["-X", "heapsize=" + arch.heap, "-c", script], env=env, cwd="/",
              what="running the %s binary" % arch.name).split()
    # a frozen module's __file__ is its manifest path; run from / nothing else has that path
    if out[:2] != ["edge-agent", "edge_agent/device/main.py"]:
        raise BuildError("the %s binary does not run the frozen agent: %s" % (arch.name, " ".join(out)))
    return " ".join(out[2:])


def build_interpreters(names, log):
    """Build the binaries of `names` (keys of ARCHES); returns [(Arch, binary bytes, info)]."""
    cache = cache_dir()
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache
        tree, versions = prepare_tree(cache, log)
        out = []
        for name in names:
            arch = ARCHES[name]
            binary, cc = build_arch(arch, tree, log)
            tls = self_test(arch, binary)
            info = {
                "arch": arch.name, "bits": arch.bits, "openwrt_arch": arch.openwrt, "heap_default": arch.heap,
                "static": True, "micropython": "%s (Debian %s source)" % (versions["micropython"], SUITE),
                "mbedtls": "%s (Debian %s source; %s)" % (versions["mbedtls"], SUITE, tls),
                "compiler": cc, "variant": "firmware/micropython/edge-agent",
                "patches": sorted(os.listdir(PATCHES)), "frozen_modules": manifest.modules(),
            }
            out.append((arch, read(binary), info))
    return out
