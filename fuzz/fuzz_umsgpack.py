"""atheris harness: edge_wire.unpack.unpackb, the bounded pure-Python msgpack decoder.

Only `ValueError` may come out. What it accepts, the msgpack C extension decodes to the same value,
and packing that value again decodes back to it.

    .venv/bin/python fuzz/fuzz_umsgpack.py fuzz/corpus/umsgpack -max_total_time=60
"""

import sys

import atheris

with atheris.instrument_imports():
    from seeds import same  # puts the repository on sys.path; imports umsgpack

    from edge_wire.pack import packb
    from edge_wire.unpack import unpackb

import msgpack  # noqa: E402 (the reference, a C extension: not instrumented)


def TestOneInput(data: bytes) -> None:
    try:
        value = unpackb(data)
    except ValueError:
        return
    reference = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not same(value, reference):
        raise AssertionError("umsgpack %r != msgpack %r" % (value, reference))
    if not same(unpackb(packb(value)), value):
        raise AssertionError("round trip changed %r" % (value,))


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
