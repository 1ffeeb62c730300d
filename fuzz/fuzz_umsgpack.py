"""atheris harness: edge_agent.umsgpack.unpackb, the bounded pure-Python msgpack decoder.

Only `ValueError` may come out. What it accepts, the msgpack C extension decodes to the same value,
and packing that value again decodes back to it.

    .venv/bin/python fuzz/fuzz_umsgpack.py fuzz/corpus/umsgpack -max_total_time=60
"""

import math
import sys

import atheris

with atheris.instrument_imports():
    import seeds  # noqa: F401 (puts the repository on sys.path; imports umsgpack)

    from edge_agent import umsgpack

import msgpack  # noqa: E402 (the reference, a C extension: not instrumented)


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def TestOneInput(data: bytes) -> None:
    try:
        value = umsgpack.unpackb(data)
    except ValueError:
        return
    reference = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not same(value, reference):
        raise AssertionError("umsgpack %r != msgpack %r" % (value, reference))
    if not same(umsgpack.unpackb(umsgpack.packb(value)), value):
        raise AssertionError("round trip changed %r" % (value,))


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
