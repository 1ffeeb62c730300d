"""atheris harness: the gateway's decoder (gateway.decode.resolve.Dictionaries.add_birth / resolve).

Input: byte 0 modulo 3: 0 -> the rest is a birth, 1 -> a data batch, for device dev-1 whose real
birth (fuzz/seeds.py) is known; 2 -> a birth that, if accepted, must then resolve the real batch
(or reject it) and convert it. Only `Rejected` with a reason label may come out; a refused birth leaves
the good dictionary resolving; a batch that resolves converts to OTLP or fails with ValueError (the
pipeline's `convert` drop). Anything else is a crash.

    .venv/bin/python fuzz/fuzz_gateway_decode.py fuzz/corpus/gateway_decode -max_total_time=60
"""

import re
import sys

import atheris

with atheris.instrument_imports():
    import seeds

    from gateway.convert import otlp
    from gateway.decode import resolve

LABEL = re.compile(r"^[a-z][a-z_]{2,30}$")
BIRTH = seeds.birth()
GOOD = seeds.batches()[0]


def fresh():
    dicts = resolve.Dictionaries()
    dicts.add_birth(seeds.DEVICE, BIRTH)
    return dicts


EXPECTED = [(s.key, i, v) for s, i, v in fresh().resolve(seeds.DEVICE, GOOD).points]


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    dicts = fresh()
    payload = data[1:]
    try:
        if data[0] % 3 != 1:
            dicts.add_birth(seeds.DEVICE, payload)
            if data[0] % 3 == 0:
                return
            payload = GOOD
        resolved = dicts.resolve(seeds.DEVICE, payload)
    except resolve.Rejected as exc:
        if not LABEL.match(exc.reason) or exc.device != seeds.DEVICE:
            raise AssertionError("rejection without a proper label: %r" % (exc.reason,))
        if data[0] % 3 == 2 and payload is GOOD:
            return  # the accepted birth changed the dictionary: the batch may no longer fit it
        after = [(s.key, i, v) for s, i, v in dicts.resolve(seeds.DEVICE, GOOD).points]
        if after != EXPECTED:
            raise AssertionError("a rejected message changed how good data decodes")
        return
    try:
        otlp.to_request([resolved])
    except ValueError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
