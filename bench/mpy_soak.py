"""Soak: the MicroPython agent (the .mpy bundle) for minutes under a fixed heap, beside the CPython agent.

    .venv/bin/python bench/mpy_soak.py [--heap 64K] [--minutes 10] [--no-cpython]

Not part of CI (it takes --minutes). Starts a real mosquitto, then for the same --minutes and the
same job (cpu + network + memory collectors at 1 s, batches every 10 s, QoS 1, default config
otherwise: fixed policy, commands enabled, no spool):
- `micropython -X heapsize=HEAP -m edge_agent.mpy_main` on MPY_MODULES compiled with mpy-cross
  (bench/mpy_heap.py builds them), logging its `heap` line once a minute;
- `edge-agent run` on CPython (unless --no-cpython), whose RSS and VmHWM are read at the end.
Reports: whether a MemoryError (or any exit) happened and when, the MemoryErrors the agent caught
and survived (`memory_errors_caught`, by place), the heap lines (gc.mem_alloc() after
gc.collect(): `alloc` at the report, `batch` right after a batch is encoded with the builder still
full, `high` the highest of those), the heap trend (first vs last minute), CPU time per tick of each
process (utime + stime from /proc/PID/stat over the run / ticks), batches received by a subscriber.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.join(ROOT, "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import paho.mqtt.client as mqtt  # noqa: E402
from mosquitto import start_mosquitto, stop  # noqa: E402

from bench.mpy_heap import MICROPYTHON, build_lib, heap_lines  # noqa: E402

BIN = os.path.dirname(sys.executable)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Counter:
    """Counts the data batches each device publishes."""

    def __init__(self, port):
        self.batches = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-counter")
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("edge/+/data", qos=1)
        self.client.loop_start()

    def on_message(self, client, userdata, msg):
        device = msg.topic.split("/")[1]
        self.batches[device] = self.batches.get(device, 0) + 1

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


def config(port, device, state_dir):
    return {
        "device_id": device, "broker": "mqtt://127.0.0.1:%d" % port, "interval_s": 1.0, "batch_s": 10.0,
        "state_dir": state_dir, "collectors": {"load": {"enabled": False}, "system": {"enabled": False}},
        "commands": {"device_key": "hex:00112233445566778899aabbccddeeff"},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heap", default="64K")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--no-cpython", action="store_true")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        lib = os.path.join(tmp, "lib")
        size, count = build_lib(lib)
        broker, port = start_mosquitto(tmp)
        counter = Counter(port)
        procs = {}
        try:
            mcfg = os.path.join(tmp, "mpy.json")
            with open(mcfg, "w") as f:
                json.dump(config(port, "soak-mpy", os.path.join(tmp, "mpy-state")), f)
            env = dict(os.environ, MICROPYPATH=lib + ":.frozen")
            mlog = open(os.path.join(tmp, "mpy.log"), "wb")
            procs["micropython"] = subprocess.Popen(
                [MICROPYTHON, "-X", "heapsize=" + args.heap, "-m", "edge_agent.mpy_main", mcfg],
                env=env, stdout=mlog, stderr=subprocess.STDOUT, cwd=tmp)
            if not args.no_cpython:
                ccfg = os.path.join(tmp, "cpy.json")
                with open(ccfg, "w") as f:
                    json.dump(config(port, "soak-cpython", os.path.join(tmp, "cpy-state")), f)
                clog = open(os.path.join(tmp, "cpy.log"), "wb")
                procs["cpython"] = subprocess.Popen([BIN + "/edge-agent", "run", "--config", ccfg],
                                                    stdout=clog, stderr=subprocess.STDOUT)
            started = time.monotonic()
            cpu0 = {name: cpu_seconds(p.pid) for name, p in procs.items()}
            rss = {}
            exited = {}
            while time.monotonic() - started < seconds:
                time.sleep(1)
                for name, p in procs.items():
                    if name not in exited and p.poll() is not None:
                        exited[name] = (p.returncode, round(time.monotonic() - started, 1))
                    if name not in exited:
                        rss[name] = (status_kib(p.pid, "VmRSS"), status_kib(p.pid, "VmHWM"))
                        cpu_end = cpu_seconds(p.pid)
                        procs_cpu = cpu_end - cpu0[name]
                        rss[name] = rss[name] + (procs_cpu,)
                if len(exited) == len(procs):
                    break
            elapsed = time.monotonic() - started
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(2)
            for p in procs.values():
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
            with open(os.path.join(tmp, "mpy.log")) as f:
                text = f.read()
        finally:
            threading.Thread(target=counter.close, daemon=True).start()
            stop(broker)
        lines = [x for x in heap_lines(text) if x["event"] == "heap"]
        ticks = elapsed  # 1 s interval
        result = {
            "heap": args.heap, "minutes": round(elapsed / 60, 2), "mpy_bytes": size, "mpy_files": count,
            "micropython_exit": exited.get("micropython"), "memory_error": "MemoryError" in text,
            # MemoryErrors the agent caught and survived (agent.py), by where they happened
            "memory_errors_caught": caught(text),
            "heap_lines": lines, "batches_received": counter.batches,
        }
        if lines:
            result["first_minute"] = lines[0]
            result["last_minute"] = lines[-1]
            result["alloc_max"] = max(int(x["alloc"]) for x in lines)
            result["batch_max"] = max(int(x["batch"]) for x in lines)
        for name, values in rss.items():
            result[name] = {"rss_kib": values[0], "hwm_kib": values[1], "cpu_s": round(values[2], 2),
                            "cpu_ms_per_tick": round(values[2] * 1000 / ticks, 3)}
        print(json.dumps(result, indent=1))
        if result["memory_error"] or "micropython" in exited:
            print(text[-2500:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
