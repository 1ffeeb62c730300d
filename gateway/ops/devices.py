"""`edge-gateway devices`: the fleet as the broker's retained messages describe it.

Online state comes from each device's retained `state` (its last will sets `offline`), the
effective sampling configuration from its retained birth (re-sent whenever a command changes it),
and last seen / lag from the status that gateways publish retained under `<prefix>/_status/`.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time

from gateway.ops.fleet import connect, gather
from gateway.options import HelpFormatter, add_broker_options, broker_config, fail


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("devices", help="list devices: online state, last seen, lag, sampling",
                              description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_broker_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prefix = args.topic_prefix
    try:
        config = broker_config(args, "edge-devices-" + secrets.token_hex(4))
        client, inbox = connect(config, [prefix + "/+/state", prefix + "/+/birth", prefix + "/_status/+"])
    except ValueError as exc:
        return fail("edge-gateway devices", exc)
    except ConnectionError as exc:
        return fail("edge-gateway devices", exc, 1)
    try:
        fleet = gather(inbox, prefix)
    finally:
        client.loop_stop()
        client.disconnect()
    now = time.time()
    rows = []
    for name in sorted(fleet):
        d = fleet[name]
        last_seen = d.status.get("last_seen")
        rows.append({
            "device": name, "state": d.state, "group": d.group,
            "last_seen_s_ago": round(now - last_seen, 1) if isinstance(last_seen, (int, float)) else None,
            "lag_ms": d.status.get("lag_ms"), "policy": d.sampling.get("policy"),
            "interval_ms": d.sampling.get("interval_ms", d.interval_ms), "agent": d.agent,
            "collectors": ",".join("%s=%s" % kv for kv in sorted(d.collectors.items())),
        })
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = ("DEVICE", "STATE", "GROUP", "LAST SEEN", "LAG", "POLICY", "INTERVAL", "AGENT", "COLLECTORS")
    table = [header] + [(r["device"], r["state"], r["group"] or "-",
                         "-" if r["last_seen_s_ago"] is None else "%ss ago" % r["last_seen_s_ago"],
                         "-" if r["lag_ms"] is None else "%s ms" % r["lag_ms"], r["policy"] or "-",
                         "-" if r["interval_ms"] is None else "%s ms" % r["interval_ms"], r["agent"] or "-",
                         r["collectors"] or "-") for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(row[i]).ljust(widths[i]) for i in range(len(header))).rstrip())
    if not rows:
        print("no devices known to the broker under %s/" % prefix)
    return 0
