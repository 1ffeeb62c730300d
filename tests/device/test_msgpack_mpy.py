"""edge_wire.pack under the real MicroPython: the same bytes as the msgpack package on CPython
(tests/unit/test_msgpack_compat.py compares them on CPython)."""

import os
import subprocess
import sys

import msgpack
import pytest

from edge_wire import pack as umsgpack
from tests.support import ROOT

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

CORPUS = """[
    None, True, False, 0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296,
    18446744073709551615, -1, -32, -33, -128, -129, -32768, -32769, -2147483648, -2147483649,
    -9223372036854775808, 0.0, -0.0, 1.5, -2.25, float("inf"), float("-inf"), float("nan"), 1e300,
    "", "a", "é" * 15 + "a", "é" * 16, "€" * 85, "x" * 256, "😀" * 16383 + "abc", "y" * 65536,
    b"", b"\\x00\\xff", bytes(255), bytes(256), bytes(65536),
    [], list(range(15)), list(range(16)), [[[[1]]]], (1, "two", b"3"),
    {}, {"k": "v"}, {1: [1, 2, {"x": None}]}, list(range(70000)),
]"""
MULTI_KEY = """[{"v": 1, "dev": "d", "boot": "b", "series": [[0, "system.cpu.time", "s", 1, {"cpu": "total"}]]},
    {i: i * i for i in range(40)}]"""


def test_micropython_produces_the_same_bytes():
    if not os.path.exists(MICROPYTHON):
        pytest.skip("no micropython binary beside the interpreter")
    script = ("import sys\nsys.path.insert(0, %r)\nfrom binascii import hexlify\nfrom edge_wire import pack as umsgpack\n"
              "for item in %s:\n    print(hexlify(umsgpack.packb(item)).decode())\n"
              "for item in %s:\n    print(hexlify(umsgpack.packb(item)).decode())\n") % (ROOT, CORPUS, MULTI_KEY)
    proc = subprocess.run([MICROPYTHON, "-X", "heapsize=8M", "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.split()
    corpus, multi = eval(CORPUS), eval(MULTI_KEY)
    assert len(lines) == len(corpus) + len(multi)
    for item, line in zip(corpus, lines, strict=False):
        assert bytes.fromhex(line) == msgpack.packb(item) == umsgpack.packb(item), repr(item)[:60]
    # MicroPython's dicts do not keep insertion order, so maps of several keys may come out in another order:
    # the same map, not the same bytes.
    for item, line in zip(multi, lines[len(corpus):], strict=True):
        assert msgpack.unpackb(bytes.fromhex(line), strict_map_key=False) == item
