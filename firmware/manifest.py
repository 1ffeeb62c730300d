"""The device's modules: the one list that the firmware build, the tests and the heap bench read.

Every module a MicroPython device runs, with when it is in memory:
- RESIDENT: imported at start and kept while the agent runs (listed dependencies first, the
  order bench/mpy_heap.py imports them in to measure each one's cost);
- TRANSIENT: imported for a while and released (start-up, connecting, a birth, a receipt's rare
  cases, a command, another sampling policy, the disk spool, the load/system collectors), see
  edge_agent.device.main.

`python -m firmware build` freezes all of them into the interpreter it builds (firmware/interpreter.py)
and compiles them to .mpy for devices that already run MicroPython (the bundle and its tests).
"""

import os

RESIDENT = "resident"
TRANSIENT = "transient"

DEVICE_MODULES = [
    ("edge_agent", RESIDENT),
    ("edge_agent.clock", RESIDENT),
    ("edge_wire", RESIDENT),
    ("edge_wire.pack", RESIDENT),
    ("edge_wire.batch", RESIDENT),
    ("edge_agent.model", RESIDENT),
    ("edge_agent.store", RESIDENT),
    ("edge_agent.store.outbox", RESIDENT),
    ("edge_agent.agent", RESIDENT),
    ("edge_agent.collectors", RESIDENT),
    ("edge_agent.collectors.procfs", RESIDENT),
    ("edge_agent.collectors.procfs.cpu", RESIDENT),
    ("edge_agent.collectors.procfs.memory", RESIDENT),
    ("edge_agent.collectors.procfs.net", RESIDENT),
    ("edge_agent.transport", RESIDENT),
    ("edge_agent.transport.umqtt", RESIDENT),
    ("edge_agent.device", RESIDENT),
    ("edge_agent.device.main", RESIDENT),
    ("edge_agent.device.setup", TRANSIENT),
    ("edge_agent.store.statefile", TRANSIENT),
    ("edge_agent.config", TRANSIENT),
    ("edge_agent.collectors.procfs.registry", TRANSIENT),
    ("edge_agent.collectors.procfs.load", TRANSIENT),
    ("edge_agent.collectors.procfs.system", TRANSIENT),
    ("edge_agent.lifecycle", TRANSIENT),
    ("edge_agent.store.receipts", TRANSIENT),
    ("edge_agent.transport.linkstate", TRANSIENT),
    ("edge_wire.birth", TRANSIENT),
    ("edge_wire.broker", TRANSIENT),
    ("edge_agent.transport.umqtt_connect", TRANSIENT),
    ("edge_wire.command", TRANSIENT),
    ("edge_agent.commands", TRANSIENT),
    ("edge_agent.commands.handler", TRANSIENT),
    ("edge_agent.sampling", TRANSIENT),
    ("edge_agent.sampling.rules", TRANSIENT),
    ("edge_agent.commands.collector_changes", TRANSIENT),
    ("edge_agent.sampling.sampler", TRANSIENT),
    ("edge_agent.sampling.loadwatch", TRANSIENT),
    ("edge_agent.store.spool", TRANSIENT),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules(when=None):
    """The module names, in list order; only the RESIDENT or TRANSIENT ones when `when` is given."""
    return [name for name, role in DEVICE_MODULES if when is None or role == when]


def source(name):
    """The repository path of a module's source: a package is its __init__.py."""
    path = name.replace(".", "/")
    if os.path.isdir(os.path.join(ROOT, path)):
        return path + "/__init__.py"
    return path + ".py"


def sources():
    """Every device module's repository path, in list order."""
    return [source(name) for name in modules()]
