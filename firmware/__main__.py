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


if __name__ == "__main__":
    sys.exit(main())
