"""The MicroPython agent's heap: what each module costs to load, and what the running agent uses.

    .venv/bin/python bench/mpy_heap.py [--heap 64K] [--seconds 75] [--policy fixed] [--imports-only] [--json]

Compiles MPY_MODULES (firmware/__init__.py) with mpy-cross into a temporary directory, exactly as
`python -m firmware build` does, and runs the real `micropython` unix port on those .mpy files:

1. imports: one interpreter imports the device's modules one at a time, in dependency order, and
   prints the growth of gc.mem_alloc() (after gc.collect()) that each import caused. Bytecode from
   a .mpy file lives in the heap on the unix port, so this is the module's resident cost.
   `micropython.mem_peak()` is printed too (the interpreter's own start-up is in it).
2. run: a real mosquitto on a free port and `micropython -X heapsize=HEAP -m edge_agent.mpy_main`
   with the default config (fixed policy unless --policy, commands enabled, no spool), cpu +
   network + memory collectors at 1 s, batches every 10 s, for --seconds. mpy_main logs a `heap` line once a minute
   (gc.mem_alloc() after gc.collect(), the highest gc.mem_alloc() seen, micropython.mem_peak());
   this bench asks it for one every 10 s (EDGE_AGENT_HEAP_EVERY_S) and prints them.

Figures are bytes. The unix port runs inside an ordinary process: its RSS says nothing about the
MicroPython heap; gc.mem_alloc() does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.join(ROOT, "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from firmware.build import compile_mpy, mpy_sources  # noqa: E402

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

# what a device with the default config loads, dependencies before dependants
DEVICE_IMPORTS = [
    "edge_agent", "edge_agent.clock", "edge_agent.model", "edge_agent.umsgpack", "edge_agent.wire",
    "edge_agent.outbox", "edge_agent.agent", "edge_agent.collectors", "edge_agent.collectors.procfs_cpu",
    "edge_agent.collectors.procfs_memory", "edge_agent.collectors.procfs_net", "edge_agent.transport",
    "edge_agent.transport.umqtt", "edge_agent.mpy_main",
]
# loaded only for a while (start-up, connecting, a birth, a command, another sampling policy) or only
# with a spool or with the load/system collectors enabled
TRANSIENT_IMPORTS = ["edge_agent.mpy_setup", "edge_agent.statefile", "edge_agent.config",
                     "edge_agent.collectors.procfs", "edge_agent.collectors.procfs_load",
                     "edge_agent.collectors.procfs_system", "edge_agent.lifecycle", "edge_agent.receipts", "edge_agent.wire_birth",
                     "edge_agent.transport.umqtt_connect", "edge_agent.hmac", "edge_agent.commands",
                     "edge_agent.sampling_rules", "edge_agent.collector_changes", "edge_agent.sampling",
                     "edge_agent.loadwatch", "edge_agent.spool"]

IMPORT_SCRIPT = """
import gc, sys, micropython
sys.path[:] = [%(lib)r, '.frozen']
def cost(name, label):
    gc.collect()
    before = gc.mem_alloc()
    try:
        __import__(name)
    except ImportError as exc:
        print('missing', name, exc)
        return
    gc.collect()
    loaded = gc.mem_alloc() - before
    if label == 'transient':  # released as the device does: what stays is its qstrs
        sys.modules.pop(name, None)
        parent, _, leaf = name.rpartition('.')
        try:
            delattr(sys.modules[parent], leaf)
        except (AttributeError, KeyError):
            pass
        gc.collect()
    print(label, name, loaded, gc.mem_alloc() - before)
gc.collect()
base = gc.mem_alloc()  # after defining cost(), so its own bytes are not counted
print('start', base, micropython.mem_peak())
for name in %(names)r:
    cost(name, 'module')
gc.collect()
print('resident', gc.mem_alloc() - base, micropython.mem_peak())
micropython.qstr_info()
for name in %(transient)r:
    cost(name, 'transient')
micropython.qstr_info()
"""


def build_lib(tmp):
    sources, _missing = mpy_sources(lambda line: None)
    mpy, _version = compile_mpy(sources)
    for rel, data in mpy.items():
        path = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return sum(len(d) for d in mpy.values()), len(mpy)


def import_costs(lib):
    script = IMPORT_SCRIPT % {"lib": lib, "names": DEVICE_IMPORTS, "transient": TRANSIENT_IMPORTS}
    path = os.path.join(lib, "..", "imports.py")
    with open(path, "w") as f:
        f.write(script)
    proc = subprocess.run([MICROPYTHON, "-X", "heapsize=1M", path], capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise SystemExit(proc.stdout + proc.stderr)
    rows = {"modules": {}, "transient": {}}
    for line in proc.stdout.splitlines():
        words = line.split()
        if words[0] == "module":
            rows["modules"][words[1]] = int(words[2])
        elif words[0] == "transient":
            rows["transient"][words[1]] = [int(words[2]), int(words[3])]
        elif line.startswith("qstr pool:"):  # resident modules, then every module the device may load
            fields = dict(word.strip(",").split("=") for word in words[2:])
            rows.setdefault("qstrs", []).append({k: int(v) for k, v in fields.items()})
        elif words[0] == "resident":
            rows["resident"] = int(words[1])
        elif words[0] == "missing":
            rows.setdefault("missing", []).append(words[1])
    return rows


def write_config(path, port, state_dir, policy="fixed"):
    config = {
        "device_id": "mpy-heap", "broker": "mqtt://127.0.0.1:%d" % port, "interval_s": 1.0, "batch_s": 10.0,
        "state_dir": state_dir,
        "collectors": {"load": {"enabled": False}, "system": {"enabled": False}},
        "commands": {"device_key": "hex:00112233445566778899aabbccddeeff"},
        "sampling": {} if policy == "fixed" else {"policy": policy},
    }
    with open(path, "w") as f:
        json.dump(config, f)


def heap_lines(text):
    out = []
    for line in text.splitlines():
        if line.startswith("heap ") or line.startswith("agent_stop "):
            fields = dict(word.split("=", 1) for word in line.split()[1:] if "=" in word)
            fields["event"] = line.split()[0]
            out.append(fields)
    return out


def run_agent(lib, heap, seconds, tmp, every_s=10, policy="fixed"):
    from mosquitto import start_mosquitto, stop

    broker, port = start_mosquitto(tmp)
    try:
        config = os.path.join(tmp, "config.json")
        write_config(config, port, os.path.join(tmp, "state"), policy)
        env = dict(os.environ, MICROPYPATH=lib + ":.frozen", EDGE_AGENT_HEAP_EVERY_S=str(every_s))
        log_path = os.path.join(tmp, "agent.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([MICROPYTHON, "-X", "heapsize=" + heap, "-m", "edge_agent.mpy_main", config],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
            try:
                proc.wait(seconds)
            except subprocess.TimeoutExpired:
                proc.send_signal(2)  # SIGINT: KeyboardInterrupt, a clean stop with the final log line
                proc.wait(15)
        with open(log_path) as f:
            text = f.read()
    finally:
        stop(broker)
    return proc.returncode, text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heap", default="64K")
    parser.add_argument("--seconds", type=float, default=75)
    parser.add_argument("--policy", default="fixed", help="sampling policy of the running agent")
    parser.add_argument("--imports-only", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        lib = os.path.join(tmp, "lib")
        size, count = build_lib(lib)
        result = {"mpy_bytes": size, "mpy_files": count, "imports": import_costs(lib)}
        imports = result["imports"]
        print("bundle: %d .mpy files, %d bytes" % (count, size))
        print("%-40s %8s" % ("module (resident on a device)", "heap B"))
        for name, cost in imports["modules"].items():
            print("%-40s %8d" % (name, cost))
        print("%-40s %8d" % ("all of the above", imports["resident"]))
        for name, (cost, left) in imports["transient"].items():
            print("%-40s %8d  (loaded only for a while; %d B of qstrs stay)" % (name, cost, left))
        for label, pool in zip(("resident modules", "+ every transient one"), imports.get("qstrs", []), strict=False):
            print("qstrs, %s: %d in %d pools, %d B (a pool is allocated at a time, each twice the last)"
                  % (label, pool["n_qstr"], pool["n_pool"], pool["n_total_bytes"]))
        if not args.imports_only:
            code, text = run_agent(lib, args.heap, args.seconds, tmp, policy=args.policy)
            lines = heap_lines(text)
            result.update({"heap": args.heap, "seconds": args.seconds, "policy": args.policy, "exit": code,
                           "reports": lines, "memory_error": "MemoryError" in text})
            print("agent (%s policy) under -X heapsize=%s for %d s: exit %s, MemoryError: %s"
                  % (args.policy, args.heap, args.seconds, code, result["memory_error"]))
            for fields in lines:
                print("  " + " ".join("%s=%s" % (k, fields[k]) for k in sorted(fields)))
            if code not in (0, None) or result["memory_error"]:
                print(text[-3000:])
        if args.json:
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
