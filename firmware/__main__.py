"""python -m firmware build [--out dist]"""

import argparse
import sys

from firmware.build import BuildError, build_all


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m firmware", description="Build the device artifacts.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = sub.add_parser("build", help="MicroPython bundle, OpenWrt .ipk and CPython zipapp + systemd unit")
    build.add_argument("--out", default="dist", help="output directory (default: dist)")
    build.add_argument("--no-vendor", action="store_true", help="do not put paho-mqtt into the zipapp")
    args = parser.parse_args(argv)
    try:
        build_all(args.out, vendor=not args.no_vendor, log=lambda line: print(line, file=sys.stderr))
    except BuildError as exc:
        print("firmware build failed: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
