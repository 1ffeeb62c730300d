"""Device artifacts: `python -m firmware build [--out dist]` (see docs/firmware.md).

`MPY_MODULES` is the one list of what goes onto a MicroPython device, compiled to .mpy: the agent's
core plus the MicroPython entry point and transport. Glob patterns are allowed; a listed module
that does not exist at build time is reported as a warning and left out.
"""

MPY_MODULES = [
    "edge_agent/__init__.py",
    "edge_agent/model.py",
    "edge_agent/umsgpack.py",
    "edge_agent/wire.py",
    "edge_agent/wire_birth.py",
    "edge_agent/config.py",
    "edge_agent/agent.py",
    "edge_agent/lifecycle.py",
    "edge_agent/receipts.py",
    "edge_agent/clock.py",
    "edge_agent/statefile.py",
    "edge_agent/sampling.py",
    "edge_agent/sampling_rules.py",
    "edge_agent/loadwatch.py",
    "edge_agent/outbox.py",
    "edge_agent/spool.py",
    "edge_agent/commands.py",
    "edge_agent/collector_changes.py",
    "edge_agent/hmac.py",
    "edge_agent/mpy_main.py",
    "edge_agent/mpy_setup.py",
    "edge_agent/collectors/__init__.py",
    "edge_agent/collectors/procfs*.py",
    "edge_agent/transport/__init__.py",
    "edge_agent/transport/umqtt.py",
    "edge_agent/transport/umqtt_connect.py",
]

# the CPython zipapp carries the whole package except what only a developer runs
PYZ_EXCLUDE = ["edge_agent/replay.py", "edge_agent/baselines.py", "edge_agent/collectors/bpf_libbpf.py"]

PACKAGE = "edge-agent"
IPK_RELEASE = 1
MPY_BUNDLE_TARGET = 150 * 1024
