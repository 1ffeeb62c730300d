"""`edge-gateway keygen`: a new random command key (HMAC-SHA256, 32 bytes), as `hex:…`.

The key alone goes to stdout (so `KEY=$(edge-gateway keygen)` works); where it goes, to stderr.
A command is signed by the operator and checked by the device with the same key (docs/commands.md):

- a device key: in that device's agent config, `commands.device_key`; the operator signs commands
  for that one device with it (`EDGE_COMMAND_KEY=… edge-gateway tune DEVICE …`);
- the fleet key: in every device's `commands.fleet_key`; the operator signs `tune --all` and
  `tune --group G` with it.
"""

from __future__ import annotations

import argparse
import os
import sys

from gateway.options import HelpFormatter

BYTES = 32  # the HMAC-SHA256 block's worth of entropy; longer adds nothing


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keygen", help="make a random command key (hex:...) and say where it goes",
                              description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
                              epilog=__doc__.split("\n\n", 2)[2].strip())
    p.add_argument("--for", dest="role", choices=("device", "fleet"), default="device",
                   help="which key it is: it only changes the advice printed (to stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    key = "hex:" + os.urandom(BYTES).hex()
    print(key)
    if args.role == "fleet":
        where = ("fleet key: put it in every device's agent config as commands.fleet_key; sign --all and --group "
                 "commands with it (EDGE_COMMAND_KEY=<key> edge-gateway tune --all ...)")
    else:
        where = ("device key: put it in one device's agent config as commands.device_key; sign that device's "
                 "commands with it (EDGE_COMMAND_KEY=<key> edge-gateway tune DEVICE ...)")
    print("edge-gateway keygen: %s. Keep it secret: anyone with it can command those devices." % where,
          file=sys.stderr)
    return 0
