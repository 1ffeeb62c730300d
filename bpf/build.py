"""Compile the eBPF programs once, at build time: bpf/<name>.bpf.c -> bpf/<name>.bpfel.o and .bpfeb.o.

    python -m bpf.build [--out DIR] [--force]

clang -target bpfel/bpfeb -O2 -g (BTF for the loader: map definitions and CO-RE relocations), then
llvm-strip -g drops the DWARF the loader does not read (the .BTF and .BTF.ext sections stay).
Little-endian objects serve x86, ARM, MIPSel and RISC-V devices; big-endian ones MIPS (most
routers' SoCs) and PowerPC. Needs clang, llvm (llvm-strip) and libbpf-dev (bpf_helpers.h) —
on the build machine only; a device needs nothing but the objects.

Objects are rebuilt when older than a source (or with --force) and are byte-identical for the
same sources and compiler: the compile runs in bpf/ with relative paths, so no path of this
machine ends up in them.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ENDIANS = ("bpfel", "bpfeb")
CFLAGS = ["-O2", "-g", "-Wall", "-Werror", "-fno-ident", "-fdebug-prefix-map=%s=." % HERE]


class BuildError(Exception):
    pass


def sources():
    return sorted(glob.glob(os.path.join(HERE, "*.bpf.c")))


def objects_for(source, out):
    base = os.path.basename(source)[: -len(".bpf.c")]
    return [(target, os.path.join(out, "%s.%s.o" % (base, target))) for target in ENDIANS]


def tool(name):
    path = shutil.which(name) or shutil.which(name + "-14") or shutil.which(name + "-15") or shutil.which(name + "-16")
    if not path:
        raise BuildError("%s not found: apt-get install clang llvm libbpf-dev" % name)
    return path


def stale(target, inputs):
    if not os.path.exists(target):
        return True
    mtime = os.path.getmtime(target)
    return any(os.path.getmtime(i) > mtime for i in inputs)


def build(out=HERE, force=False, log=print):
    """Build every object that is missing or stale; returns the paths of all objects."""
    headers = glob.glob(os.path.join(HERE, "*.h"))
    built = []
    os.makedirs(out, exist_ok=True)
    for source in sources():
        for target, path in objects_for(source, out):
            built.append(path)
            if not force and not stale(path, [source] + headers):
                continue
            tmp = path + ".tmp"
            cmd = [tool("clang"), "-target", target] + CFLAGS + ["-c", os.path.basename(source), "-o", tmp]
            proc = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
            if proc.returncode:
                raise BuildError("%s:\n%s" % (" ".join(cmd), proc.stderr.strip()))
            proc = subprocess.run([tool("llvm-strip"), "-g", tmp], capture_output=True, text=True)
            if proc.returncode:
                raise BuildError("llvm-strip %s: %s" % (tmp, proc.stderr.strip()))
            os.replace(tmp, path)
            log("bpf: built %s (%d bytes)" % (os.path.relpath(path), os.path.getsize(path)))
    return built


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=HERE, help="where the objects go (default: bpf/)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    try:
        build(args.out, args.force)
    except BuildError as e:
        print("bpf build: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
