"""`edge-agent`: the CPython entry point. It builds the adapters and hands them to the core.

    edge-agent run  [--config FILE] [--broker mqtt://host:port] [--device-id ID] ...
    edge-agent once [--config FILE] [--ticks N]     collect one batch and print it decoded
    edge-agent config check FILE | config default   validate a config file / print the defaults, commented
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

from edge_agent import __version__, lifecycle
from edge_agent import config as configuration
from edge_agent.agent import Agent, LinkState
from edge_agent.collectors.procfs.system import read_boot, read_host
from edge_agent.collectors.seriescache import KIND_NAMES
from edge_agent.commands.handler import CommandHandler, load_overrides
from edge_agent.sampling.loadwatch import LoadWatch
from edge_agent.store.spool import Spool
from edge_wire.broker import parse_broker
from edge_wire.decode import decode, parse_batch, parse_birth

PASSWORD_ENV = "EDGE_AGENT_MQTT_PASSWORD"

# flag -> (dotted config key, argparse options, help); flags override the file, which overrides the defaults
FLAGS = {
    "broker": ("broker", {}, "broker URL, mqtt://host:port or mqtts://host:port"),
    "device_id": ("device_id", {}, "this device's id (default: the host name)"),
    "client_id": ("client_id", {}, "MQTT client id (default: edge-<device>-<random>, new each run)"),
    "topic_prefix": ("topic_prefix", {}, "topic prefix"),
    "group": ("group", {}, "fleet group for group commands"),
    "username": ("username", {}, "MQTT user name"),
    "password": ("password", {}, "MQTT password (visible to other users in ps: prefer --password-file or $%s)"
                 % PASSWORD_ENV),
    "password_file": ("password_file", {"metavar": "FILE"}, "read the MQTT password from FILE's first line"),
    "ca": ("tls.ca", {"metavar": "FILE"}, "CA certificate (PEM) to verify the broker"),
    "cert": ("tls.cert", {"metavar": "FILE"}, "client certificate (PEM) for mutual TLS"),
    "key": ("tls.key", {"metavar": "FILE"}, "client private key (PEM)"),
    "interval": ("interval_s", {"type": float, "metavar": "S"}, "base sampling interval in seconds"),
    "batch": ("batch_s", {"type": float, "metavar": "S"}, "seconds between data batches"),
    "compress": ("compress", {"action": "store_true", "default": None}, "deflate batch bodies"),
    "state_dir": ("state_dir", {"metavar": "DIR"}, "directory for sequence numbers, accepted commands, spool"),
    "proc_root": ("proc_root", {"metavar": "DIR"}, "where /proc is (tests point this at fixtures)"),
    "max_batches": ("buffer.max_batches", {"type": int, "metavar": "N"}, "batches kept in RAM while offline"),
    "spool_bytes": ("buffer.spool_max_bytes", {"type": int, "metavar": "BYTES"},
                    "disk spool cap in bytes (0: no spool; needs --state-dir)"),
    "log_format": ("log_format", {"choices": ("text", "json")}, "log lines as key=value text or JSON"),
}
FLAG_KEYS = dict([(flag, FLAGS[flag][0]) for flag in FLAGS])
ONCE_FLAGS = ("device_id", "interval", "compress", "proc_root")  # what `once` uses: it never connects


def make_logger(fmt):
    def log(event, **fields):
        if fmt == "json":
            record = {"ts": round(time.time(), 3), "event": event}
            record.update(fields)
            line = json.dumps(record, default=str)
        else:
            line = event + "".join([" %s=%s" % (k, _quote(fields[k])) for k in fields])
        print(line, file=sys.stderr, flush=True)

    return log


def _quote(value):
    text = str(value)
    return json.dumps(text) if not text or any([c in text for c in ' "=']) else text


def default_of(key):
    node = configuration.defaults()
    for part in key.split("."):
        node = node[part]
    return node


def add_config_flags(parser, names=tuple(FLAGS)):
    """`--config` and the flags that override config keys; their help shows the key and its default."""
    parser.add_argument("--config", metavar="FILE", help="JSON config file (flags override it; "
                        "`edge-agent config default` prints one, commented)")
    for name in names:
        key, options, text = FLAGS[name]
        default = default_of(key)
        if "default:" not in text:
            shown = {"": "none", False: "off", True: "on"}.get(default, default) if not isinstance(
                default, (int, float)) or isinstance(default, bool) else default
            text += " (default: %s)" % shown
        parser.add_argument("--" + name.replace("_", "-"), help="%s [config: %s]" % (text, key), **options)


def build_parser():
    parser = argparse.ArgumentParser(prog="edge-agent", description="Edge-device telemetry agent: "
                                     "collects CPU, memory and network metrics and ships compact batches over MQTT.")
    parser.add_argument("--version", action="version", version="edge-agent " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="sample and send batches until stopped",
                         description="Sample and send batches until stopped. Flags override the config file, "
                         "which overrides the defaults. The password may also come from $%s." % PASSWORD_ENV)
    add_config_flags(run)
    run.add_argument("--duration", type=float, metavar="S", help="stop after this many seconds (default: run forever)")
    once = sub.add_parser("once", help="collect one batch and print it decoded, for debugging",
                          description="Collect one batch from this machine and print it decoded (never connects).")
    add_config_flags(once, ONCE_FLAGS)
    once.add_argument("--ticks", type=int, default=2, help="ticks in the batch (default: 2, so rates appear)")
    once.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cfg = sub.add_parser("config", help="check a config file, or print the default one",
                         description="Check a config file, or print the defaults as a commented config file.")
    cfg_sub = cfg.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = cfg_sub.add_parser("check", help="validate FILE: one line per problem, exit 2 if any")
    check.add_argument("file", metavar="FILE")
    cfg_sub.add_parser("default", help="print the default config, every key explained")
    from edge_agent.cli.replay import add_parser as add_replay

    add_replay(sub)
    return parser


def effective_config(args, environ=os.environ):
    overrides = {}
    for flag in FLAG_KEYS:
        value = getattr(args, flag, None)
        if value is not None:
            overrides[FLAG_KEYS[flag]] = value
    if getattr(args, "compress", None):
        overrides["compress"] = True
    if environ.get(PASSWORD_ENV) and "password" not in overrides:
        overrides["password"] = environ[PASSWORD_ENV]
    if args.config:
        cfg = configuration.load(args.config, overrides)
    else:
        cfg = configuration.build({}, overrides)
    if cfg["password_file"] and "password" not in overrides:  # a password given outright wins
        try:
            with open(cfg["password_file"]) as f:
                cfg["password"] = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise configuration.ConfigError("config key 'password_file': %s: cannot read it (%s)"
                                            % (cfg["password_file"], exc.strerror or exc))
    return cfg


def device_info(cfg, effective):
    proc = cfg["proc_root"]
    boot_id, boot_time_ms = read_boot(proc)
    info = {
        "device": cfg["device_id"] or socket.gethostname(),
        "boot_id": boot_id,
        "boot_time_ms": boot_time_ms,
        "start_ms": int(time.time() * 1000),  # counters that start with the agent start here
        "agent": __version__,
        "os": "linux",
        "platform": "%s-%s" % (platform.python_implementation().lower(), platform.python_version()),
        "collectors": effective,
        "group": cfg["group"],
    }
    info.update(read_host(proc))
    return info


def build_collectors(cfg, log):
    try:
        from edge_agent.collectors.select import build_collectors as select_backends
    except ImportError:  # a trimmed install without the eBPF/netlink adapters: /proc only
        from edge_agent.collectors.procfs.registry import enabled_procfs

        return enabled_procfs(cfg["collectors"], cfg["proc_root"])

    def say(line):
        log("collector_fallback", detail=line)

    collectors, effective = select_backends(cfg["collectors"], proc_root=cfg["proc_root"], log=say)
    return collectors, effective


def build_sampler(cfg, names):
    try:
        from edge_agent.sampling.sampler import Sampler
    except ImportError:
        return None
    params = dict(cfg["sampling"])
    params.setdefault("interval_ms", int(cfg["interval_s"] * 1000))
    return Sampler(params)


def build_transport(cfg, device):
    """The paho transport; ValueError naming the option when a TLS file cannot be used."""
    from edge_agent.transport.paho import PahoTransport
    from edge_wire.paho import process_client_id, tls_context

    host, port, tls = parse_broker(cfg["broker"])
    tls_options = None
    if tls or cfg["tls"]["ca"]:
        t = cfg["tls"]
        names = {"ca": "--ca (tls.ca)", "cert": "--cert (tls.cert)", "key": "--key (tls.key)"}
        tls_options = dict(t, context=tls_context(t["ca"], t["cert"], t["key"], t["insecure"], names))
    state_topic = "%s/%s/state" % (cfg["topic_prefix"], device)
    return PahoTransport(host, port, client_id=cfg["client_id"] or process_client_id("edge-" + device),
                         keepalive=cfg["keepalive_s"], username=cfg["username"], password=cfg["password"],
                         tls=tls_options, will=(state_topic, b"offline", 1, True))


def apply_overrides(cfg, overrides, log=None):
    """Remote changes accepted before a restart win over the file (they were newer); a sampling knob
    that is no longer valid (retired since) is left out with one line."""
    from edge_agent.sampling.rules import usable

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


def stop_accounting(outbox):
    """What the stop line adds to the agent's stats: every drop of the run (`ext.lost` up to the
    end), what the stop lost (undelivered batches left in RAM: a spool keeps them for the next run)
    and what was delivered."""
    lost = outbox.lost()
    unsent = sum([e.samples for e in outbox.entries])  # what a spool took (and its loaded segment) is kept
    return {"lost_batches": lost[0], "lost_samples": lost[1], "unsent_samples": unsent, "delivered": outbox.sent, "delivery": "gateway receipt" if outbox.receipts else "broker puback"}


def command_run(args):
    cfg = effective_config(args)
    log = make_logger(cfg["log_format"])
    if cfg["state_dir"]:
        try:
            os.makedirs(cfg["state_dir"], exist_ok=True)
        except OSError as exc:
            print("edge-agent: state_dir %s: cannot create it (%s)" % (cfg["state_dir"], exc.strerror or exc),
                  file=sys.stderr)
            return 2
    overrides = load_overrides(cfg["state_dir"])
    apply_overrides(cfg, overrides, log)
    collectors, effective = build_collectors(cfg, log)
    info = device_info(cfg, effective)
    try:
        transport = build_transport(cfg, info["device"])
    except ValueError as exc:  # a TLS file: named, with what is wrong
        print("edge-agent: %s" % exc, file=sys.stderr)
        return 2
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
        try:
            spool = Spool(cfg["state_dir"] + "/spool", cfg["buffer"]["spool_max_bytes"])
        except OSError as exc:
            print("edge-agent: spool %s/spool: cannot use it (%s)" % (cfg["state_dir"], exc.strerror or exc),
                  file=sys.stderr)
            return 2
    agent = Agent(cfg, collectors, transport, info, sampler=sampler, log=log, commands=commands,
                  collector_factory=factory, overrides=overrides, spool=spool,
                  loadwatch=LoadWatch(cfg["proc_root"]))
    agent.link = LinkState()  # the connection's story in the log (edge_agent.transport.linkstate)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    log("agent_start", device=info["device"], broker=cfg["broker"], client_id=transport.client_id,
        collectors=",".join(["%s:%s" % kv for kv in sorted(effective.items())]),
        delivery=cfg["delivery"]["ack"] if cfg["delivery"]["ack"] != "auto" else "auto (now %s)" % (
            "gateway receipt" if agent.outbox.receipts else "broker puback"))
    agent.run(max_seconds=args.duration)
    log("agent_stop", device=info["device"], **dict(agent.stats, **stop_accounting(agent.outbox)))
    return never_connected(agent, cfg["broker"])


def never_connected(agent, broker):
    """Exit status of a run: 1, with one line saying why, when the broker was never reached."""
    if agent.link.reconnects:
        return 0
    why = agent.transport.last_error or "no answer"
    print("edge-agent: never connected to %s: %s" % (broker, why), file=sys.stderr)
    return 1


def command_config(args):
    if args.action == "default":
        from edge_agent.cli.config_doc import render_default

        sys.stdout.write(render_default())
        return 0
    configuration.load(args.file)  # ConfigError: reported by main
    print("%s: ok" % args.file)
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
    birth = parse_birth(decode(lifecycle.birth_payload(agent)))
    batch = parse_batch(decode(payload))
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
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "run":
            return command_run(args)
        if args.command == "config":
            return command_config(args)
        if args.command == "replay":
            from edge_agent.cli.replay import command_replay

            return command_replay(args)
        return command_once(args)
    except configuration.ConfigError as exc:
        print("edge-agent: bad configuration\n  " + str(exc).replace("\n", "\n  "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
