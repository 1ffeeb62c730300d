"""The MicroPython agent's heap: what each module costs to load, and what the running agent uses.

    .venv/bin/python bench/mpy_heap.py [--binary dist/micropython-edge-agent-VERSION-ARCH]
                                       [--heap 64K] [--seconds 75] [--policy fixed] [--imports-only] [--json]

The modules are firmware/manifest.py's, resident ones in its order (dependencies first), then the
transient ones. Two interpreters:
- by default the PyPI `micropython` (a stock unix port) on those modules compiled with mpy-cross into
  a temporary directory, exactly as `python -m firmware build` makes the .mpy bundle: bytecode loaded
  from .mpy lives in the heap;
- with --binary, the agent's own interpreter (`python -m firmware build`), the modules frozen in: an
  import costs only the module's functions, classes and globals. For a foreign architecture the
  binary runs under qemu-user.

1. imports: one interpreter imports the device's modules one at a time and prints the growth of
   gc.mem_alloc() (after gc.collect()) that each import caused: its resident cost. A transient module
   is measured while loaded and again after release (what stays is its qstrs; none when frozen).
   `micropython.mem_peak()` is printed too (the interpreter's own start-up is in it). With --binary,
   the fragments that exist only for the heap (FRAGMENTS) are priced as if merged back into the
   resident module of their concept: that module would carry their functions all the time.
2. run: a real mosquitto on a free port and `-X heapsize=HEAP -c ENTRY` (the launcher's, which imports
   edge_agent.device.main and runs it; not `-m`, which keeps the edge_agent.device package) with the
   default config (fixed policy unless --policy, commands enabled, no spool), cpu + network + memory collectors at
   1 s, batches every 10 s, for --seconds. mpy_main logs a `heap` line once a minute (gc.mem_alloc()
   after gc.collect(), the highest seen, the largest free block); this bench asks for one every 10 s
   (EDGE_AGENT_HEAP_EVERY_S) and prints them.

Figures are bytes. RSS says nothing about the MicroPython heap; gc.mem_alloc() does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from firmware import manifest  # noqa: E402
from firmware.build import compile_mpy  # noqa: E402
from firmware.interpreter import ARCHES  # noqa: E402

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

DEVICE_IMPORTS = manifest.modules(manifest.RESIDENT)
TRANSIENT_IMPORTS = manifest.modules(manifest.TRANSIENT)
# modules split off a concept only to be released on a stock interpreter: fragment -> its concept's module
FRAGMENTS = {
    "edge_agent.device.setup": "edge_agent.device.main",
    "edge_agent.lifecycle": "edge_agent.agent",
    "edge_wire.birth": "edge_wire.batch",
    "edge_agent.transport.umqtt_connect": "edge_agent.transport.umqtt",
    "edge_agent.commands.collector_changes": "edge_agent.commands.handler",
    "edge_agent.sampling.rules": "edge_agent.sampling.sampler",
}


def interpreter(binary):
    """The command that runs `binary` here (qemu-user for a foreign architecture), or the PyPI one."""
    if not binary:
        return [MICROPYTHON]
    for arch in ARCHES.values():
        if binary.endswith("-" + arch.name) and arch.qemu:
            return [arch.qemu, os.path.abspath(binary)]
    return [os.path.abspath(binary)]


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
    mpy, _version = compile_mpy(manifest.sources())
    for rel, data in mpy.items():
        path = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return sum(len(d) for d in mpy.values()), len(mpy)


def import_costs(lib, binary=None):
    """Each module's heap cost; `lib` is the .mpy folder (None: the modules are frozen into `binary`)."""
    script = IMPORT_SCRIPT % {"lib": lib or ".frozen", "names": DEVICE_IMPORTS, "transient": TRANSIENT_IMPORTS}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "imports.py")
        with open(path, "w") as f:
            f.write(script)
        proc = subprocess.run(interpreter(binary) + ["-X", "heapsize=1M", path], capture_output=True, text=True,
                              timeout=120, cwd="/")
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


def launcher_entry():
    """The `-c` program firmware/files/edge-agent-mpy starts the agent with (its ENTRY): measured as run."""
    with open(os.path.join(ROOT, "firmware", "files", "edge-agent-mpy")) as f:
        text = f.read()
    return text.split('ENTRY="', 1)[1].split('"', 1)[0]


def run_agent(lib, heap, seconds, tmp, every_s=10, binary=None, policy="fixed"):
    from testbed.mosquitto import start_mosquitto, stop

    broker, port = start_mosquitto(tmp)
    try:
        config = os.path.join(tmp, "config.json")
        write_config(config, port, os.path.join(tmp, "state"), policy)
        env = dict(os.environ, MICROPYPATH=".frozen:" + lib if lib else ".frozen", EDGE_AGENT_HEAP_EVERY_S=str(every_s))
        log_path = os.path.join(tmp, "agent.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(interpreter(binary) + ["-X", "heapsize=" + heap, "-c", launcher_entry(),
                                                           config],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd="/")
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
    parser.add_argument("--binary", help="the agent's interpreter (python -m firmware build); default: the "
                                         "PyPI micropython on the .mpy modules")
    parser.add_argument("--heap", default="64K")
    parser.add_argument("--seconds", type=float, default=75)
    parser.add_argument("--policy", default="fixed", help="sampling policy of the running agent")
    parser.add_argument("--imports-only", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.binary:
            lib = None
            result = {"binary": os.path.basename(args.binary), "imports": import_costs(None, args.binary)}
            print("%s: the modules frozen in" % result["binary"])
        else:
            lib = os.path.join(tmp, "lib")
            size, count = build_lib(lib)
            result = {"mpy_bytes": size, "mpy_files": count, "imports": import_costs(lib)}
            print("bundle: %d .mpy files, %d bytes" % (count, size))
        imports = result["imports"]
        print("%-40s %8s" % ("module (resident on a device)", "heap B"))
        for name, cost in imports["modules"].items():
            print("%-40s %8d" % (name, cost))
        print("%-40s %8d" % ("all of the above", imports["resident"]))
        for name, (cost, left) in imports["transient"].items():
            print("%-40s %8d  (loaded only for a while; %d B stay after release)" % (name, cost, left))
        for label, pool in zip(("resident modules", "+ every transient one"), imports.get("qstrs", []), strict=False):
            print("qstrs in the heap, %s: %d in %d pools, %d B (a pool is allocated at a time, each twice the last)"
                  % (label, pool["n_qstr"], pool["n_pool"], pool["n_total_bytes"]))
        if args.binary:
            merged = {name: imports["transient"][name][0] for name in FRAGMENTS if name in imports["transient"]}
            resident = sum(cost for name, cost in merged.items() if FRAGMENTS[name] in DEVICE_IMPORTS)
            result["merged_fragments"] = {"modules": merged, "resident_cost": resident}
            print("merging the heap-only fragments back into their concepts, frozen:")
            for name, cost in merged.items():
                where = "resident" if FRAGMENTS[name] in DEVICE_IMPORTS else "while it is loaded"
                print("  %-36s into %-28s +%5d B %s" % (name, FRAGMENTS[name], cost, where))
            print("  resident heap: +%d B (%.1f KB)" % (resident, resident / 1024))
        if not args.imports_only:
            code, text = run_agent(lib, args.heap, args.seconds, tmp, binary=args.binary, policy=args.policy)
            lines = heap_lines(text)
            result.update({"heap": args.heap, "seconds": args.seconds, "policy": args.policy, "exit": code,
                           "reports": lines, "memory_error": "MemoryError" in text or "memory_error" in text})
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
