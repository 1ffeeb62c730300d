"""`edge-agent`: the CPython entry point. It builds the adapters and hands them to the core.

    edge-agent run  [--config FILE] [--broker mqtt://host:port] [--device-id ID] ...
    edge-agent once [--config FILE] [--ticks N]     collect one batch and print it decoded
    edge-agent replay --policy P [--param k=v ...] TRACE.csv
"""

import argparse
import json
import os
import platform
import signal
import socket
import sys
import time

from edge_agent import __version__, lifecycle, wire
from edge_agent import config as configuration
from edge_agent.agent import Agent
from edge_agent.collectors.procfs_system import read_boot
from edge_agent.commands import CommandHandler, load_overrides
from edge_agent.loadwatch import LoadWatch
from edge_agent.model import KIND_NAMES
from edge_agent.spool import Spool

# flag -> dotted config key; flags override the file, which overrides the defaults
FLAG_KEYS = {
    "broker": "broker", "device_id": "device_id", "topic_prefix": "topic_prefix", "group": "group",
    "username": "username", "password": "password", "ca": "tls.ca", "cert": "tls.cert", "key": "tls.key",
    "interval": "interval_s", "batch": "batch_s", "state_dir": "state_dir", "proc_root": "proc_root",
    "log_format": "log_format", "max_batches": "buffer.max_batches", "spool_bytes": "buffer.spool_max_bytes",
}


def make_logger(fmt):
    def log(event, **fields):
        if fmt == "json":
            record = {"ts": round(time.time(), 3), "event": event}
            record.update(fields)
            line = json.dumps(record, default=str)
        else:
            line = event + "".join([" %s=%s" % (k, fields[k]) for k in fields])
        print(line, file=sys.stderr, flush=True)

    return log


def add_common(parser):
    parser.add_argument("--config", metavar="FILE", help="JSON config file (flags override it)")
    parser.add_argument("--broker", help="broker URL, mqtt://host:port or mqtts://host:port")
    parser.add_argument("--device-id", help="this device's id (default: the host name)")
    parser.add_argument("--topic-prefix", help="topic prefix (default: edge)")
    parser.add_argument("--group", help="fleet group for group commands")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--ca", help="CA certificate (PEM) to verify the broker")
    parser.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--key", help="client private key (PEM)")
    parser.add_argument("--interval", type=float, help="base sampling interval in seconds")
    parser.add_argument("--batch", type=float, help="seconds between data batches")
    parser.add_argument("--compress", action="store_true", default=None, help="deflate batch bodies")
    parser.add_argument("--state-dir", help="directory for sequence numbers, accepted commands, spool")
    parser.add_argument("--proc-root", help="where /proc is (tests point this at fixtures)")
    parser.add_argument("--max-batches", type=int, help="batches kept in RAM while offline")
    parser.add_argument("--spool-bytes", type=int, help="disk spool cap in bytes (0: no spool; needs --state-dir)")
    parser.add_argument("--log-format", choices=("text", "json"))


def build_parser():
    parser = argparse.ArgumentParser(prog="edge-agent", description="Edge-device telemetry agent: "
                                     "collects CPU, memory and network metrics and ships compact batches over MQTT.")
    parser.add_argument("--version", action="version", version="edge-agent " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="sample and send batches until stopped")
    add_common(run)
    run.add_argument("--duration", type=float, help="stop after this many seconds (default: run forever)")
    once = sub.add_parser("once", help="collect one batch and print it decoded, for debugging")
    add_common(once)
    once.add_argument("--ticks", type=int, default=2, help="ticks in the batch (default 2, so rates appear)")
    once.add_argument("--json", action="store_true", help="print JSON instead of a table")
    replay = sub.add_parser("replay", help="evaluate a sampling policy on a recorded trace", add_help=False)
    replay.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def effective_config(args):
    overrides = {}
    for flag in FLAG_KEYS:
        value = getattr(args, flag, None)
        if value is not None:
            overrides[FLAG_KEYS[flag]] = value
    if getattr(args, "compress", None):
        overrides["compress"] = True
    if args.config:
        return configuration.load(args.config, overrides)
    return configuration.build({}, overrides)


def device_info(cfg, effective):
    proc = cfg["proc_root"]
    boot_id, boot_time_ms = read_boot(proc)
    return {
        "device": cfg["device_id"] or socket.gethostname(),
        "boot_id": boot_id,
        "boot_time_ms": boot_time_ms,
        "agent": __version__,
        "os": "linux",
        "platform": "%s-%s" % (platform.python_implementation().lower(), platform.python_version()),
        "collectors": effective,
        "group": cfg["group"],
    }


def build_collectors(cfg, log):
    try:
        from edge_agent.collectors.select import build_collectors as select_backends
    except ImportError:  # a trimmed install without the eBPF/netlink adapters: /proc only
        from edge_agent.collectors.procfs import enabled_procfs

        return enabled_procfs(cfg["collectors"], cfg["proc_root"])

    def say(line):
        log("collector_fallback", detail=line)

    collectors, effective = select_backends(cfg["collectors"], proc_root=cfg["proc_root"], log=say)
    return collectors, effective


def build_sampler(cfg, names):
    try:
        from edge_agent.sampling import Sampler
    except ImportError:
        return None
    params = dict(cfg["sampling"])
    params.setdefault("interval_ms", int(cfg["interval_s"] * 1000))
    return Sampler(params)


def build_transport(cfg, device):
    from edge_agent.transport.paho import PahoTransport

    host, port, tls = configuration.parse_broker(cfg["broker"])
    tls_options = cfg["tls"] if tls or cfg["tls"]["ca"] else None
    state_topic = "%s/%s/state" % (cfg["topic_prefix"], device)
    return PahoTransport(host, port, client_id="edge-" + device, keepalive=cfg["keepalive_s"],
                         username=cfg["username"], password=cfg["password"], tls=tls_options,
                         will=(state_topic, b"offline", 1, True))


def apply_overrides(cfg, overrides, log=None):
    """Remote changes accepted before a restart win over the file (they were newer); a sampling knob
    that is no longer valid (retired since) is left out with one line."""
    from edge_agent.sampling_rules import usable

    sampling, dropped = usable(overrides.get("sampling", {}))
    for problem in dropped:
        if log:
            log("override_dropped", section="sampling", problem=problem)
    if dropped:
        overrides["sampling"] = sampling  # and left out of the file at the next accepted change
    cfg["sampling"].update(sampling)
    for name, change in overrides.get("collectors", {}).items():
        if name in cfg["collectors"]:
            cfg["collectors"][name].update(change)


def command_run(args):
    cfg = effective_config(args)
    log = make_logger(cfg["log_format"])
    if cfg["state_dir"]:
        os.makedirs(cfg["state_dir"], exist_ok=True)
    overrides = load_overrides(cfg["state_dir"])
    apply_overrides(cfg, overrides, log)
    collectors, effective = build_collectors(cfg, log)
    info = device_info(cfg, effective)
    transport = build_transport(cfg, info["device"])
    sampler = build_sampler(cfg, [c.name for c in collectors])
    commands = None
    if cfg["commands"]["enabled"]:
        if not cfg["commands"]["require_signature"]:
            log("commands_unsigned", warning="command signatures are OFF (commands.require_signature=false)")
        commands = CommandHandler(cfg, info["device"], lambda: int(time.time()), log)

    def factory(section):
        return build_collectors(dict(cfg, collectors=section), log)

    spool = None
    if cfg["buffer"]["spool_max_bytes"]:
        spool = Spool(cfg["state_dir"] + "/spool", cfg["buffer"]["spool_max_bytes"])
    agent = Agent(cfg, collectors, transport, info, sampler=sampler, log=log, commands=commands,
                  collector_factory=factory, overrides=overrides, spool=spool,
                  loadwatch=LoadWatch(cfg["proc_root"]))
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    log("agent_start", device=info["device"], broker=cfg["broker"], collectors=json.dumps(effective, sort_keys=True))
    agent.run(max_seconds=args.duration)
    log("agent_stop", device=info["device"], **agent.stats)
    return 0


class _Offline:
    """A transport that is never connected: `once` builds a batch without a broker."""

    connected = False

    def publish(self, *args):
        return None


def command_once(args):
    cfg = effective_config(args)
    log = make_logger(cfg["log_format"])
    collectors, effective = build_collectors(cfg, log)
    info = device_info(cfg, effective)
    agent = Agent(cfg, collectors, _Offline(), info, log=log)
    for i in range(max(1, args.ticks)):
        if i:
            time.sleep(cfg["interval_s"])
        agent.sample([c.name for c in collectors])
    payload = agent.flush()
    birth = wire.parse_birth(wire.decode(lifecycle.birth_payload(agent)))
    batch = wire.parse_batch(wire.decode(payload))
    rows = []
    for sid, _indexes, values in batch.columns:
        series = birth.series[sid]
        value = values[-1]
        real = [v * series.scale for v in value[:2]] if isinstance(value, list) else value * series.scale
        rows.append({"id": sid, "name": series.name, "attrs": series.attrs, "kind": KIND_NAMES[series.kind],
                     "unit": series.unit, "value": real, "source": series.source})
    summary = {"device": batch.device, "seq": batch.seq, "ticks": len(batch.ticks), "samples": batch.sample_count(),
               "bytes": len(payload), "bytes_per_sample": round(len(payload) / max(1, batch.sample_count()), 2),
               "collectors": effective}
    if args.json:
        print(json.dumps({"batch": summary, "series": rows}, indent=1))
        return 0
    print("batch: " + " ".join(["%s=%s" % (k, summary[k]) for k in summary if k != "collectors"]))
    print("collectors: " + ", ".join(["%s=%s" % kv for kv in sorted(effective.items())]))
    for row in rows:
        attrs = ",".join(["%s=%s" % kv for kv in sorted(row["attrs"].items())])
        value = row["value"]
        shown = ("%.6g" % value) if isinstance(value, float) else str(value)
        print("  %-36s %-34s %-9s %-10s %s  [%s]" % (row["name"], attrs, row["kind"], row["unit"], shown, row["source"]))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "replay":
        from edge_agent.replay import replay_main

        return replay_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "run":
            return command_run(args)
        return command_once(args)
    except configuration.ConfigError as exc:
        print("edge-agent: bad configuration\n  " + str(exc).replace("\n", "\n  "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
