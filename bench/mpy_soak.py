"""Soak: the MicroPython agent for minutes in a fixed heap, beside collectd and the CPython agent.

    .venv/bin/python bench/mpy_soak.py --binary dist/micropython-edge-agent-VERSION-x86_64 \
        [--heap 64K] [--minutes 10] [--tls] [--gateway] [--no-cpython] [--no-collectd]

Not part of CI (it takes --minutes). Starts a real mosquitto, then for the same --minutes and the
same job (cpu + network + memory collectors at 1 s, batches every 10 s, QoS 1, default config
otherwise: fixed policy, commands enabled, no spool):
- the MicroPython agent, `BINARY -X heapsize=HEAP -m edge_agent.device.main CONFIG`: with --binary the
  agent's own interpreter (`python -m firmware build`, the agent frozen in; i686 and x86_64 run
  natively, the others under qemu-user, whose RSS is qemu's); without, the PyPI micropython on the
  .mpy bundle;
- `edge-agent run` on CPython (unless --no-cpython);
- collectd (unless --no-collectd) doing the same job: its cpu, interface and memory plugins at 1 s,
  sent over MQTT by its mqtt plugin (through mutual TLS with --tls).
With --tls the broker is the production config (deploy/mosquitto: mutual TLS, certificates as
identities, ACL) and both agents connect with their own client certificates. With --gateway the
gateway (`edge-gateway run`, exporting to an OTLP receiver) runs too, so a batch is delivered by its
receipt, as in production (the agents' "auto" delivery), not by the broker's PUBACK: the device keeps
each batch until the receipt comes and subscribes to receipts.
Reports, as JSON: MemoryErrors (uncaught, and caught and survived by place: `memory_error at=`),
batches made (the agent's stop line) and delivered (distinct payloads a subscriber saw), the heap
(`heap` lines once a minute: alloc after gc.collect(), batch = with a full batch encoded, high = the
high-water mark, largest = the largest free block), CPU time per tick, and each process's memory from
/proc/PID/status: VmRSS and RssAnon at the end and their highest seen, and VmHWM.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import paho.mqtt.client as mqtt  # noqa: E402

from bench.agent_footprint import COLLECTD, PLUGIN_DIR, TYPES_DB  # noqa: E402
from bench.mpy_heap import build_lib, heap_lines, interpreter  # noqa: E402
from testbed import production_broker  # noqa: E402
from testbed.mosquitto import free_port, start_mosquitto, stop  # noqa: E402
from testbed.otlp_receiver import OtlpReceiver  # noqa: E402

BIN = os.path.dirname(sys.executable)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid):
    """VmRSS, VmHWM and RssAnon of `pid` (kB), from /proc/PID/status."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                out[key] = int(rest.split()[0])
    return out


class Counter:
    """The distinct data batches each device publishes."""

    def __init__(self, port, certs=None):
        self.batches = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-counter")
        if certs:  # a gateway's identity: the ACL lets gateways read device data
            self.client.tls_set(ca_certs=certs + "/ca.crt", certfile=certs + "/edge-gateway-1.crt",
                                keyfile=certs + "/edge-gateway-1.key")
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("edge/+/data", 1), ("edge/+/birth", 1)])
        self.births = {}
        self.client.loop_start()

    def on_message(self, client, userdata, msg):
        device = msg.topic.split("/")[1]
        with self.lock:
            if msg.topic.endswith("/birth"):  # the dictionary grew (a new interface, say) or a reconnection
                self.births[device] = self.births.get(device, 0) + 1
            else:
                self.batches.setdefault(device, set()).add(bytes(msg.payload))

    def counts(self):
        with self.lock:
            return {device: len(payloads) for device, payloads in self.batches.items()}

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def caught(text):
    """{where: count} of the agent's `memory_error at=WHERE` lines."""
    out = {}
    for line in text.splitlines():
        if line.startswith("memory_error "):
            where = [w[3:] for w in line.split() if w.startswith("at=")]
            key = where[0] if where else "?"
            out[key] = out.get(key, 0) + 1
    return out


def collectd_conf(tmp, port, certs):
    """collectd doing the agents' job: cpu, interface and memory at 1 s, over MQTT (TLS with `certs`)."""
    base = os.path.join(tmp, "collectd")
    os.makedirs(base, exist_ok=True)
    publish = ['Host "127.0.0.1"', "Port %d" % port, 'ClientId "soak-collectd"', 'Prefix "collectd"']
    if certs:  # its own client certificate; the ACL drops what it publishes (not under edge/)
        publish += ['CACert "%s/ca.crt"' % certs, 'CertificateFile "%s/soak-collectd.crt"' % certs,
                    'CertificateKeyFile "%s/soak-collectd.key"' % certs]
    lines = ['Hostname "soak-collectd"', "FQDNLookup false", 'BaseDir "%s"' % base,
             'PIDFile "%s/collectd.pid"' % base, 'PluginDir "%s"' % PLUGIN_DIR, 'TypesDB "%s"' % TYPES_DB,
             "Interval 1", "LoadPlugin cpu", "LoadPlugin interface", "LoadPlugin memory", "LoadPlugin mqtt",
             '<Plugin mqtt>\n  <Publish "soak">\n    %s\n  </Publish>\n</Plugin>' % "\n    ".join(publish)]
    path = os.path.join(tmp, "collectd.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def config(port, device, state_dir, certs=None):
    cfg = {
        "device_id": device, "broker": "mqtt://127.0.0.1:%d" % port, "interval_s": 1.0, "batch_s": 10.0,
        "state_dir": state_dir, "collectors": {"load": {"enabled": False}, "system": {"enabled": False}},
        "commands": {"device_key": "hex:00112233445566778899aabbccddeeff"},
    }
    if certs:
        cfg["broker"] = "mqtts://127.0.0.1:%d" % port
        cfg["tls"] = {"ca": certs + "/ca.crt", "cert": "%s/%s.crt" % (certs, device), "key": "%s/%s.key" % (certs, device)}
    return cfg


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", help="the agent's interpreter (python -m firmware build); default: the "
                                         "PyPI micropython on the .mpy modules")
    parser.add_argument("--heap", default="64K")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--tls", action="store_true", help="mutual TLS (deploy/mosquitto) for both agents")
    parser.add_argument("--gateway", action="store_true", help="run the gateway: batches delivered by its receipts")
    parser.add_argument("--no-cpython", action="store_true")
    parser.add_argument("--no-collectd", action="store_true")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, EDGE_AGENT_HEAP_EVERY_S="60")
        if args.binary:
            env["MICROPYPATH"] = ".frozen"
        else:
            lib = os.path.join(tmp, "lib")
            build_lib(lib)
            env["MICROPYPATH"] = ".frozen:" + lib
        certs = None
        if args.tls:
            running = production_broker.start(Path(tmp), ["soak-mpy", "soak-cpython", "soak-collectd"])
            broker, port, certs = running.proc, running.device_port, str(running.certs)
            counter = Counter(running.service_port, certs)  # a gateway's identity, on the services' listener
        else:
            broker, port = start_mosquitto(tmp)
            counter = Counter(port, certs)
        procs = {}
        logs = {}
        gateway = receiver = None
        if args.gateway:
            receiver = OtlpReceiver()
            if certs:  # another gateway identity than the counter's, on the services' listener
                flags = ["--broker", "mqtts://127.0.0.1:%d" % running.service_port, "--ca", certs + "/ca.crt",
                         "--cert", certs + "/edge-gateway-2.crt", "--key", certs + "/edge-gateway-2.key",
                         "--client-id", "edge-gateway-2"]
            else:
                flags = ["--broker", "mqtt://127.0.0.1:%d" % port]
            gateway = subprocess.Popen(
                [BIN + "/edge-gateway", "run", *flags, "--metrics-port", str(free_port())],
                env=dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf"),
                stdout=open(os.path.join(tmp, "gateway.out"), "wb"), stderr=subprocess.STDOUT)
        try:
            mcfg = os.path.join(tmp, "mpy.json")
            with open(mcfg, "w") as f:
                json.dump(config(port, "soak-mpy", os.path.join(tmp, "mpy-state"), certs), f)
            logs["micropython"] = os.path.join(tmp, "mpy.log")
            procs["micropython"] = subprocess.Popen(
                interpreter(args.binary) + ["-X", "heapsize=" + args.heap, "-m", "edge_agent.device.main", mcfg],
                env=env, stdout=open(logs["micropython"], "wb"), stderr=subprocess.STDOUT, cwd="/")
            if not args.no_cpython:
                ccfg = os.path.join(tmp, "cpy.json")
                with open(ccfg, "w") as f:
                    json.dump(config(port, "soak-cpython", os.path.join(tmp, "cpy-state"), certs), f)
                logs["cpython"] = os.path.join(tmp, "cpy.log")
                procs["cpython"] = subprocess.Popen([BIN + "/edge-agent", "run", "--config", ccfg],
                                                    stdout=open(logs["cpython"], "wb"), stderr=subprocess.STDOUT)
            if not args.no_collectd:
                conf = collectd_conf(tmp, port, certs)
                procs["collectd"] = subprocess.Popen([COLLECTD, "-f", "-C", conf],
                                                     stdout=open(os.path.join(tmp, "collectd.out"), "wb"),
                                                     stderr=subprocess.STDOUT)
            started = time.monotonic()
            cpu0 = {name: cpu_seconds(p.pid) for name, p in procs.items()}
            memory = {name: {} for name in procs}
            cpu = {}
            exited = {}
            while time.monotonic() - started < seconds:
                time.sleep(1)
                for name, p in procs.items():
                    if name not in exited and p.poll() is not None:
                        exited[name] = (p.returncode, round(time.monotonic() - started, 1))
                    if name not in exited:
                        now = memory_kib(p.pid)
                        seen = memory[name]
                        for key, value in now.items():
                            seen[key] = value
                            seen["max_" + key] = max(seen.get("max_" + key, 0), value)
                        cpu[name] = cpu_seconds(p.pid) - cpu0[name]
                if len(exited) == len(procs):
                    break
            elapsed = time.monotonic() - started
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(15)  # SIGTERM: what procd and systemd send; a clean stop
            for p in procs.values():
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
            time.sleep(1)  # the last batches, sent by the stops
            delivered = counter.counts()
            births = dict(counter.births)
            with open(logs["micropython"]) as f:
                text = f.read()
        finally:
            threading.Thread(target=counter.close, daemon=True).start()
            if gateway is not None:
                stop(gateway)
                receiver.stop()
            stop(broker)
        lines = [x for x in heap_lines(text) if x["event"] == "heap"]
        stops = [x for x in heap_lines(text) if x["event"] == "agent_stop"]
        result = {
            "binary": os.path.basename(args.binary) if args.binary else "PyPI micropython + .mpy bundle",
            "heap": args.heap, "tls": args.tls, "minutes": round(elapsed / 60, 2),
            "micropython_exit": exited.get("micropython"), "memory_error": "MemoryError" in text,
            # MemoryErrors the agent caught and survived (agent.py), by where they happened
            "memory_errors_caught": caught(text),
            "batches_made": int(stops[0]["batches"]) if stops else None,
            "unsent_at_stop": int(stops[0]["unsent"]) if stops else None,
            "batches_delivered": delivered, "births": births,
            # the device's delivery: by the gateway's receipts (--gateway) or the broker's PUBACK
            "delivery": "gateway receipt" if "delivery ack=gateway" in text else "broker puback",
            "heap_lines": lines,
        }
        if lines:
            result["alloc_max"] = max(int(x["alloc"]) for x in lines)
            result["heap_high_water"] = max(int(x["high"]) for x in lines)
            result["largest_free_min"] = min(int(x["largest"]) for x in lines if "largest" in x)
        for name in procs:
            result[name] = dict(memory[name], cpu_s=round(cpu.get(name, 0), 2),
                                cpu_ms_per_tick=round(cpu.get(name, 0) * 1000 / elapsed, 3))
        print(json.dumps(result, indent=1))
        print(text[-4000:] if result["memory_error"] or result["memory_errors_caught"] or "micropython" in exited
              else "".join(line + "\n" for line in text.splitlines() if not line.startswith("heap ")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
