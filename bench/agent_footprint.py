"""The agent's CPU time, RSS and bytes per value on the wire, beside collectd in the same run.

    .venv/bin/python bench/agent_footprint.py [--seconds 60] [--warmup 5] [--keep]

Starts, all on loopback and for a bounded time:
- a real mosquitto on a free port (testbed/mosquitto.py);
- a real `edge-agent run` process (embedded defaults: every /proc collector at 1 s, 10 s batches,
  QoS 1) publishing to it;
- collectd from Debian (`collectd -f -C conf`, collectd-core) with the cpu, interface, load and
  memory plugins at a 1 s interval, writing (a) through its network plugin to a UDP listener in
  this bench, which counts datagram bytes and values (parsing the collectd binary protocol's
  "values" parts) and (b) through its mqtt plugin to the same mosquitto;
- a subscriber in this bench counting the bytes and values of every message each one publishes.

After `--warmup` seconds (interpreter start-up, first connection) CPU is read from
/proc/<pid>/stat (utime + stime, all threads) and again `--seconds` later; RSS and VmHWM come from
/proc/<pid>/status at the end. The sum of /proc/<pid>/task/*/schedstat run times (nanoseconds) is
shown beside the tick-based figure as a finer cross-check. On a shared machine CPU figures are
noisy: compare the ratios, which are measured in the same run under the same load.

Bytes per value: payload bytes / values for MQTT (and topic + payload, and the whole PUBLISH
packet); UDP payload bytes / values for collectd's network plugin. TCP/IP and UDP/IP headers are
not counted. Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import paho.mqtt.client as mqtt  # noqa: E402

from bench.wire_size import machine  # noqa: E402
from edge_wire.decode import WireError, decode, parse_batch  # noqa: E402
from testbed.mosquitto import start_mosquitto, stop  # noqa: E402

COLLECTD = shutil.which("collectd") or "/usr/sbin/collectd"
PLUGIN_DIR = "/usr/lib/collectd"
TYPES_DB = "/usr/share/collectd/types.db"
DEVICE = "pi-0001"
CLK_TCK = os.sysconf("SC_CLK_TCK")
REFERENCE = {"rss_mib": 3.0, "core_pct": 0.1, "network_bytes_per_value": 32, "mqtt_bytes_per_value": 40}


# ---------------------------------------------------------------- /proc readings


def cpu_seconds(pid):
    """utime + stime of every thread of `pid`, in seconds (clock ticks)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def run_seconds(pid):
    """Sum of the threads' on-CPU time from schedstat, in seconds (ns resolution; live threads only)."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def memory_kib(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(rest.split()[0])
    return out


# ---------------------------------------------------------------- collectd's network protocol


def count_collectd_values(packet):
    """Values in one collectd binary-protocol datagram: the sum over its "values" parts (0x0006)."""
    values = 0
    pos = 0
    while pos + 4 <= len(packet):
        kind, length = struct.unpack_from(">HH", packet, pos)
        if length < 4 or pos + length > len(packet):
            break
        if kind == 0x0006:
            values += struct.unpack_from(">H", packet, pos + 4)[0]
        pos += length
    return values


class UdpCounter(threading.Thread):
    def __init__(self):
        threading.Thread.__init__(self, daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packets = self.bytes = self.values = 0
        self.running = True

    def run(self):
        while self.running:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            self.packets += 1
            self.bytes += len(data)
            self.values += count_collectd_values(data)

    def close(self):
        self.running = False
        self.join(2)
        self.sock.close()


# ---------------------------------------------------------------- MQTT subscriber


def publish_packet_size(topic_len, payload_len, qos):
    """Bytes of an MQTT 3.1.1 PUBLISH packet: fixed header, topic, packet id (QoS > 0), payload."""
    remaining = 2 + topic_len + (2 if qos else 0) + payload_len
    length_bytes = 1
    while remaining >= 128 ** length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


class Tally:
    def __init__(self, qos):
        self.qos = qos
        self.messages = self.payload = self.topic = self.packets = self.values = 0

    def add(self, topic, payload, values):
        self.messages += 1
        self.payload += len(payload)
        self.topic += len(topic)
        self.packets += publish_packet_size(len(topic), len(payload), self.qos)
        self.values += values

    def per_value(self):
        v = self.values or 1
        return {"payload": self.payload / v, "topic_payload": (self.topic + self.payload) / v,
                "publish_packet": self.packets / v}

    def as_dict(self):
        out = dict(messages=self.messages, values=self.values, payload_bytes=self.payload,
                   topic_bytes=self.topic, publish_bytes=self.packets)
        out["bytes_per_value"] = dict((k, round(x, 2)) for k, x in self.per_value().items())
        return out


class Subscriber:
    """Counts what both agents publish: our data batches (samples from the decoded batch) and births,
    collectd's mqtt messages ("<time>:<v1>[:<v2>...]", one value per field after the time)."""

    def __init__(self, port):
        self.ours = Tally(1)  # the agent publishes data at QoS 1
        self.birth = Tally(1)
        self.other = Tally(1)  # state messages
        self.collectd = Tally(0)  # collectd's mqtt plugin default QoS
        self.errors = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-counter")
        self.client.on_connect = self.on_connect
        self.client.on_message = self.on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on_connect(self, client, userdata, flags, reason, properties):
        client.subscribe([("edge/#", 1), ("collectd/#", 0)])

    def on_message(self, client, userdata, msg):
        topic, payload = msg.topic, msg.payload
        with self.lock:
            if topic.startswith("collectd/"):
                self.collectd.add(topic, payload, payload.count(b":"))
            elif topic.endswith("/data"):
                try:
                    samples = parse_batch(decode(payload)).sample_count()
                except WireError as exc:
                    self.errors.append(str(exc))
                    samples = 0
                self.ours.add(topic, payload, samples)
            elif topic.endswith("/birth"):
                self.birth.add(topic, payload, 0)
            else:
                self.other.add(topic, payload, 0)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


# ---------------------------------------------------------------- the processes


def collectd_conf(tmp, udp_port, mqtt_port, with_mqtt):
    base = os.path.join(tmp, "collectd")
    os.makedirs(base, exist_ok=True)
    lines = [
        'Hostname "%s"' % DEVICE,
        "FQDNLookup false",
        'BaseDir "%s"' % base,
        'PIDFile "%s"' % os.path.join(base, "collectd.pid"),
        'PluginDir "%s"' % PLUGIN_DIR,
        'TypesDB "%s"' % TYPES_DB,
        "Interval 1",
        "LoadPlugin logfile",
        '<Plugin logfile>\n  LogLevel info\n  File "%s"\n  Timestamp true\n</Plugin>' % os.path.join(tmp, "collectd.log"),
        "LoadPlugin cpu",
        "LoadPlugin interface",
        "LoadPlugin load",
        "LoadPlugin memory",
        "LoadPlugin network",
        '<Plugin network>\n  Server "127.0.0.1" "%d"\n</Plugin>' % udp_port,
    ]
    if with_mqtt:
        lines += [
            "LoadPlugin mqtt",
            '<Plugin mqtt>\n  <Publish "bench">\n    Host "127.0.0.1"\n    Port %d\n    ClientId "collectd-%s"\n'
            '    Prefix "collectd"\n  </Publish>\n</Plugin>' % (mqtt_port, DEVICE),
        ]
    path = os.path.join(tmp, "collectd.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def end(proc, timeout=5):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def collectd_version():
    try:
        out = subprocess.run([COLLECTD, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("collectd "):
            return line.split(",")[0]
    return "unknown"


def measure(args, tmp):
    has_mqtt = os.path.exists(os.path.join(PLUGIN_DIR, "mqtt.so"))
    notes = []
    if not has_mqtt:
        notes.append("collectd's mqtt plugin is NOT installed (%s/mqtt.so missing): no collectd MQTT figures"
                     % PLUGIN_DIR)
    broker, port = start_mosquitto(tmp)
    udp = UdpCounter()
    udp.start()
    sub = None
    agent = collectd = None
    try:
        sub = Subscriber(port)
        if not sub.subscribed.wait(10):
            raise RuntimeError("the bench subscriber did not get its subscription")
        bin_dir = os.path.dirname(sys.executable)
        agent_cmd = [os.path.join(bin_dir, "edge-agent"), "run", "--broker", "mqtt://127.0.0.1:%d" % port,
                     "--device-id", DEVICE, "--interval", "1", "--batch", "10",
                     "--state-dir", os.path.join(tmp, "agent-state"),
                     "--duration", str(args.warmup + args.seconds + 30)]  # a bound if the bench dies
        conf = collectd_conf(tmp, udp.port, port, has_mqtt)
        with open(os.path.join(tmp, "agent.log"), "wb") as log:
            agent = subprocess.Popen(agent_cmd, stdout=log, stderr=subprocess.STDOUT)
        with open(os.path.join(tmp, "collectd.out"), "wb") as log:
            collectd = subprocess.Popen([COLLECTD, "-f", "-C", conf], stdout=log, stderr=subprocess.STDOUT)
        procs = {"edge-agent": agent, "collectd": collectd}
        time.sleep(args.warmup)
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError("%s exited early (%s); see %s" % (name, proc.returncode, tmp))
        start = dict((name, (cpu_seconds(p.pid), run_seconds(p.pid))) for name, p in procs.items())
        t0 = time.monotonic()
        time.sleep(args.seconds)
        wall = time.monotonic() - t0
        finish = dict((name, (cpu_seconds(p.pid), run_seconds(p.pid))) for name, p in procs.items())
        mem = dict((name, memory_kib(p.pid)) for name, p in procs.items())
        with sub.lock:  # what arrived during the run, before anything is asked to stop
            counted = {"ours": sub.ours.as_dict(), "birth": sub.birth.as_dict(), "state": sub.other.as_dict(),
                       "collectd_mqtt": sub.collectd.as_dict()}
        counted["collectd_network"] = {"packets": udp.packets, "bytes": udp.bytes, "values": udp.values,
                                       "bytes_per_value": round(udp.bytes / max(1, udp.values), 2)}
    finally:
        end(collectd)
        end(agent, 10)
        if sub is not None:
            sub.close()
        udp.close()
        stop(broker)
    processes = {}
    for name in ("edge-agent", "collectd"):
        cpu = finish[name][0] - start[name][0]
        run = finish[name][1] - start[name][1]
        processes[name] = {
            "cpu_s": round(cpu, 3), "cpu_s_schedstat": round(run, 4),
            "core_pct": round(100 * cpu / wall, 3), "core_pct_schedstat": round(100 * run / wall, 3),
            "startup_cpu_s": round(start[name][0], 3),
            "rss_kib": mem[name].get("VmRSS"), "hwm_kib": mem[name].get("VmHWM"), "threads": mem[name].get("Threads"),
        }
    backends = ""
    try:
        with open(os.path.join(tmp, "agent.log")) as f:
            for line in f:
                if line.startswith("agent_start") and "collectors=" in line:
                    backends = line.split("collectors=", 1)[1].strip()
    except OSError:
        pass
    if sub.errors:
        notes.append("%d of our data messages did not decode: %s" % (len(sub.errors), sub.errors[0]))
    return {"wall_s": round(wall, 2), "processes": processes, "wire": counted, "has_mqtt": has_mqtt,
            "agent_collectors": backends, "notes": notes}


def ratio(a, b):
    return round(a / b, 2) if b else None


def report(args, fig, started):
    ours, theirs = fig["processes"]["edge-agent"], fig["processes"]["collectd"]
    w = fig["wire"]
    ours_bpv = w["ours"]["bytes_per_value"]
    net_bpv = w["collectd_network"]["bytes_per_value"]
    mq = w["collectd_mqtt"]
    mqtt_bpv = mq["bytes_per_value"]
    print("agent footprint: %g s measured after a %g s warm-up, 1 s interval, same run, loopback; machine: %s"
          % (fig["wall_s"], args.warmup, machine()))
    print("edge-agent: embedded defaults, collectors %s" % fig["agent_collectors"])
    print("collectd: %s (%s), plugins cpu interface load memory, network -> UDP, %s"
          % (collectd_version(), COLLECTD, "mqtt -> mosquitto" if fig["has_mqtt"] else "NO mqtt plugin"))
    print()
    print("| | edge-agent | collectd | ours/collectd | issue's collectd reference |")
    print("|---|---:|---:|---:|---:|")
    rows = [
        ("RSS (MiB)", ours["rss_kib"] / 1024, theirs["rss_kib"] / 1024, "%.1f" % REFERENCE["rss_mib"]),
        ("VmHWM (MiB)", ours["hwm_kib"] / 1024, theirs["hwm_kib"] / 1024, ""),
        ("CPU s in the window (stat ticks)", ours["cpu_s"], theirs["cpu_s"], ""),
        ("CPU s in the window (schedstat)", ours["cpu_s_schedstat"], theirs["cpu_s_schedstat"], ""),
        ("% of one core (stat ticks)", ours["core_pct"], theirs["core_pct"], "%.1f" % REFERENCE["core_pct"]),
        ("% of one core (schedstat)", ours["core_pct_schedstat"], theirs["core_pct_schedstat"], ""),
        ("CPU s to start (before the window)", ours["startup_cpu_s"], theirs["startup_cpu_s"], ""),
    ]
    for label, a, b, ref in rows:
        print("| %s | %.3f | %.3f | %s | %s |" % (label, a, b, ratio(a, b), ref))
    print()
    print("| bytes per value on the wire | edge-agent (wire v1, MQTT) | collectd network (UDP) | collectd mqtt | "
          "ours/network | ours/mqtt |")
    print("|---|---:|---:|---:|---:|---:|")
    mq_cell = (lambda k: "%.2f" % mqtt_bpv[k]) if fig["has_mqtt"] else (lambda k: "n/a")
    print("| payload | %.2f | %.2f | %s | %s | %s |" % (ours_bpv["payload"], net_bpv, mq_cell("payload"),
                                                       ratio(ours_bpv["payload"], net_bpv),
                                                       ratio(ours_bpv["payload"], mqtt_bpv["payload"])))
    print("| topic + payload | %.2f | | %s | | %s |" % (ours_bpv["topic_payload"], mq_cell("topic_payload"),
                                                      ratio(ours_bpv["topic_payload"], mqtt_bpv["topic_payload"])))
    print("| whole MQTT PUBLISH packet | %.2f | | %s | | %s |" % (
        ours_bpv["publish_packet"], mq_cell("publish_packet"),
        ratio(ours_bpv["publish_packet"], mqtt_bpv["publish_packet"])))
    print("| issue's collectd reference | | %d | %d | | |" % (REFERENCE["network_bytes_per_value"],
                                                           REFERENCE["mqtt_bytes_per_value"]))
    print()
    print("values: ours %d in %d data messages (+ %d birth bytes once per connection), collectd network %d in %d "
          "datagrams, collectd mqtt %d in %d messages" % (
              w["ours"]["values"], w["ours"]["messages"], w["birth"]["payload_bytes"], w["collectd_network"]["values"],
              w["collectd_network"]["packets"], mq["values"], mq["messages"]))
    for note in fig["notes"]:
        print("NOTE: " + note)
    fig = dict(fig)
    fig.update({
        "bench": "agent_footprint", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": args.seconds, "warmup_s": args.warmup, "machine": machine(), "collectd": collectd_version(),
        "reference": REFERENCE,
        "ratios": {
            "rss": ratio(ours["rss_kib"], theirs["rss_kib"]),
            "cpu": ratio(ours["cpu_s"], theirs["cpu_s"]),
            "cpu_schedstat": ratio(ours["cpu_s_schedstat"], theirs["cpu_s_schedstat"]),
            "bytes_per_value_vs_network": ratio(ours_bpv["payload"], net_bpv),
            "bytes_per_value_vs_mqtt": ratio(ours_bpv["payload"], mqtt_bpv["payload"]) if fig["has_mqtt"] else None,
        },
    })
    print(json.dumps(fig, separators=(",", ":")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window opens (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = parser.parse_args(argv)
    if not os.path.exists(COLLECTD):
        print("collectd is not installed (%s): apt-get install collectd-core" % COLLECTD, file=sys.stderr)
        return 2
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="bench-footprint-")
    try:
        fig = measure(args, tmp)
    finally:
        if args.keep:
            print("kept %s" % tmp, file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(args, fig, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
