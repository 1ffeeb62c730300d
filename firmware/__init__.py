"""Device artifacts: `python -m firmware build [--out dist]` (see docs/firmware.md).

firmware/manifest.py lists the device's modules (the one list the build, the tests and the heap
bench read); firmware/interpreter.py builds MicroPython with them frozen in; firmware/build.py
writes every artifact.
"""

# the CPython zipapp carries the whole package except what only a developer runs
PYZ_EXCLUDE = ["edge_agent/sampling/replay.py", "edge_agent/sampling/baselines.py", "edge_agent/collectors/ebpf/libbpf.py"]

PACKAGE = "edge-agent"
IPK_RELEASE = 1
MPY_BUNDLE_TARGET = 150 * 1024
