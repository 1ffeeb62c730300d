"""`edge-gateway tune`: sign a command, publish it to a device, a group or the fleet, collect acks.

    edge-gateway tune DEVICE   set_sampling policy=adaptive interval_ms=5000
    edge-gateway tune --group west set_collectors network.backend=procfs
    edge-gateway tune --all ping

The HMAC key comes from --command-key-file, $EDGE_COMMAND_KEY or --command-key ("hex:…" or text;
`edge-gateway keygen` makes one): the device key for one device, the fleet key for --group/--all. Who must answer is read from the retained
state and births: the device named, or every online device (of the group). The exit code is 0
only when every expected device acknowledged with "ok".
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time

from edge_wire.command import COMMANDS, key_bytes, sign
from gateway.ops.fleet import connect, gather, note
from gateway.options import HelpFormatter, add_broker_options, broker_config, fail

ARGLESS = ("get_config", "ping", "rebirth", "flush")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tune", help="send a signed command and show each device's answer",
                              description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
                              epilog="commands: " + ", ".join(COMMANDS) + "\n" + "\n".join(__doc__.split("\n")[2:5]))
    add_broker_options(p)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--group", help="every online device of this group")
    scope.add_argument("--all", action="store_true", help="every online device")
    p.add_argument("words", nargs="+", metavar="[DEVICE] COMMAND [key=value ...]")
    p.add_argument("--command-key", help="HMAC key, text or hex:... (default: $EDGE_COMMAND_KEY; "
                   "visible to other users in ps: prefer the variable or --command-key-file)")
    p.add_argument("--command-key-file", metavar="FILE", help="read the HMAC key from FILE's first line")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for acks")
    p.add_argument("--json", action="store_true", help="print the acks as JSON")
    p.set_defaults(func=run)


def parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text  # bare words are strings: policy=adaptive


def build_args(command: str, params: list[str]) -> dict:
    args: dict = {}
    for item in params:
        if "=" not in item:
            raise ValueError("parameter %r is not key=value" % item)
        key, value = item.split("=", 1)
        if command == "set_collectors":  # network.backend=procfs -> {"network": {"backend": "procfs"}}
            name, _, option = key.partition(".")
            if not option:
                raise ValueError("set_collectors takes collector.option=value, got %r" % item)
            args.setdefault(name, {})[option] = parse_value(value)
        else:
            args[key] = parse_value(value)
    if command in ARGLESS and args:
        raise ValueError("%s takes no parameters" % command)
    return args


def command_key(args: argparse.Namespace) -> str:
    """The key from --command-key, --command-key-file or $EDGE_COMMAND_KEY; ValueError says where a bad
    one came from (never the key itself)."""
    from edge_wire.paho import readable_secret

    where = "--command-key-file %s" % args.command_key_file if args.command_key_file else (
        "--command-key" if args.command_key else "$EDGE_COMMAND_KEY")
    key = readable_secret(args.command_key or os.environ.get("EDGE_COMMAND_KEY", ""), args.command_key_file,
                          "--command-key-file")
    if not key:
        raise ValueError("no key: give --command-key-file FILE, $EDGE_COMMAND_KEY or --command-key "
                         "(`edge-gateway keygen` makes one)")
    try:
        key_bytes(key)
    except ValueError:  # binascii.Error is one
        raise ValueError("%s: 'hex:' must be followed by an even number of hex digits (0-9, a-f); the key is "
                         "not shown" % where) from None
    if key == "hex:":
        raise ValueError("%s: the key is empty" % where)
    return key


def run(args: argparse.Namespace) -> int:
    words = list(args.words)
    device = None if (args.group or args.all) else words.pop(0)
    if not words or words[0] not in COMMANDS:
        return fail("edge-gateway tune", "expected a command (%s)" % ", ".join(COMMANDS))
    command, params = words[0], words[1:]
    try:
        key = command_key(args)
        command_args = build_args(command, params)
        prefix = args.topic_prefix
        config = broker_config(args, "edge-tune-" + secrets.token_hex(4))
        client, inbox = connect(config, [prefix + "/+/state", prefix + "/+/birth", prefix + "/+/ack"])
    except ValueError as exc:
        return fail("edge-gateway tune", exc)
    except ConnectionError as exc:
        return fail("edge-gateway tune", exc, 1)
    try:
        fleet = gather(inbox, prefix)
        if device is not None:
            expected = {device}
            topic, target = "%s/%s/cmd" % (prefix, device), device
        elif args.group:
            expected = {d.name for d in fleet.values() if d.state == "online" and d.group == args.group}
            topic, target = "%s/_group/%s/cmd" % (prefix, args.group), "group:" + args.group
        else:
            expected = {d.name for d in fleet.values() if d.state == "online"}
            topic, target = prefix + "/_fleet/cmd", "*"
        command_id = "c-" + secrets.token_hex(6)
        body = {"id": command_id, "cmd": command, "args": command_args, "ts": int(time.time()),
                "nonce": secrets.token_hex(12), "target": target}
        sent = time.monotonic()
        client.publish(topic, sign(body, key), qos=1).wait_for_publish(5)
        acks = collect_acks(inbox, prefix, command_id, expected, fleet, sent, args.timeout)
    finally:
        client.loop_stop()
        client.disconnect()
    return report(expected, acks, args.json)


def collect_acks(inbox, prefix: str, command_id: str, expected: set[str], fleet: dict, sent: float,
                 timeout: float) -> dict[str, dict]:
    acks: dict[str, dict] = {}
    deadline = sent + timeout
    while time.monotonic() < deadline and not expected <= set(acks):
        try:
            topic, payload = inbox.get(timeout=max(0.01, deadline - time.monotonic()))
        except Exception:  # queue.Empty: time is up
            break
        if not topic.endswith("/ack"):
            note(fleet, prefix, topic, payload)
            continue
        try:
            ack = json.loads(payload)
        except ValueError:
            continue
        if isinstance(ack, dict) and ack.get("id") == command_id:
            ack["latency_ms"] = round((time.monotonic() - sent) * 1000)
            acks[topic[len(prefix) + 1:].split("/")[0]] = ack
    return acks


def report(expected: set[str], acks: dict[str, dict], as_json: bool) -> int:
    rows = []
    for name in sorted(expected | set(acks)):
        ack = acks.get(name)
        if ack is None:
            rows.append((name, "no answer", "", "timed out"))
            continue
        sampling = (ack.get("config") or {}).get("sampling") or {}
        detail = ack.get("message") if ack.get("status") != "ok" else "policy=%s interval_ms=%s" % (
            sampling.get("policy", "?"), sampling.get("interval_ms", "?"))
        rows.append((name, ack.get("status", "?") + (" (%s)" % ack["reason"] if ack.get("reason") else ""),
                     "%d ms" % ack["latency_ms"], detail))
    if as_json:
        print(json.dumps({"expected": sorted(expected), "acks": acks}, indent=1))
    else:
        widths = [max(len(str(r[i])) for r in rows + [("DEVICE", "RESULT", "LATENCY", "DETAIL")]) for i in range(3)]
        for row in [("DEVICE", "RESULT", "LATENCY", "DETAIL")] + rows:
            print("  ".join(str(row[i]).ljust(widths[i]) for i in range(3)) + "  " + str(row[3]))
        if not rows:
            print("no device to answer (none online%s)" % "")
    ok = bool(expected) and all(acks.get(n, {}).get("status") == "ok" for n in expected)
    return 0 if ok else 1
