"""edge_wire.pack against the msgpack package: the same bytes for the same input on CPython (under the
real MicroPython: tests/device/test_msgpack_mpy.py), and a decoder that meets hostile input with ValueError
alone, and quickly."""

import math
import struct
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_wire.pack import MAX_DEPTH, packb
from edge_wire.unpack import unpackb

INT_BOUNDARIES = [0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                  2**63 - 1, 2**63, 2**64 - 1, -1, -31, -32, -33, -127, -128, -129, -32767, -32768, -32769,
                  -(2**31) + 1, -(2**31), -(2**31) - 1, -(2**63) + 1, -(2**63)]
LENGTHS = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536]


def sized_text(n, wide):
    """A str whose UTF-8 form is exactly n bytes, with as many 2-, 3- or 4-byte characters as fit."""
    ch = {2: "é", 3: "€", 4: "😀"}[wide]
    return ch * (n // wide) + "a" * (n % wide)


ints = st.one_of(st.sampled_from(INT_BOUNDARIES), st.integers(-(2**63), 2**64 - 1))
floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.one_of(st.text(max_size=40),
                  st.builds(sized_text, st.sampled_from(LENGTHS), st.sampled_from([2, 3, 4])),
                  st.builds(lambda n: "x" * n, st.sampled_from(LENGTHS)))
binaries = st.one_of(st.binary(max_size=40), st.builds(bytes, st.sampled_from([255, 256, 65535, 65536])))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts, binaries)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=20), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(st.text(max_size=10), ints), inner, max_size=20)),
    max_leaves=40,
)


def same(a, b):
    """Equality where NaN equals NaN (compared through their encoding)."""
    return packb(a) == packb(b)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values)
def test_packb_is_byte_identical_and_round_trips(value):
    ours = packb(value)
    assert ours == msgpack.packb(value)
    back = unpackb(ours)
    assert same(back, msgpack.unpackb(ours, strict_map_key=False))
    assert packb(back) == ours  # tuples come back as lists, which encode the same


@pytest.mark.parametrize("n", [15, 16, 65535, 65536])
def test_container_length_boundaries(n):
    for value in (list(range(n)), {i: None for i in range(n)}, tuple("a" * n)):
        ours = packb(value)
        assert ours == msgpack.packb(value)
        assert unpackb(ours) == msgpack.unpackb(ours, strict_map_key=False, use_list=True)


def test_floats_bit_exact():
    for x in (0.0, -0.0, 1.5, -2.25, math.inf, -math.inf, math.nan, -math.nan, 5e-324, 1.7976931348623157e308):
        assert packb(x) == msgpack.packb(x)
        assert unpackb(packb(x)) == x or math.isnan(x)
    assert unpackb(b"\xca" + struct.pack(">f", 0.5)) == 0.5  # single floats from other encoders


def test_out_of_range_and_unknown_types_raise_value_error():
    for bad in (2**64, -(2**63) - 1, object(), {1, 2}, 1j):
        with pytest.raises(ValueError):
            packb(bad)


# ---------------------------------------------------------------- hostile input to the decoder

HUGE = [b"\xdb\xff\xff\xff\xff", b"\xda\xff\xff", b"\xd9\xff", b"\xc6\xff\xff\xff\xff", b"\xc5\xff\xff",
        b"\xdd\xff\xff\xff\xff", b"\xdc\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xde\xff\xff", b"\x9f", b"\x8f"]


def expect_value_error(data, budget_s=0.5):
    start = time.perf_counter()
    with pytest.raises(ValueError):
        unpackb(data)
    assert time.perf_counter() - start < budget_s, data[:20]


def test_truncated_input():
    full = packb([1, -200, 70000, 2**40, 1.5, "text" * 10, b"bin", {"k": [None, True]}, "é" * 40])
    for cut in range(len(full)):
        expect_value_error(full[:cut])
    expect_value_error(full + b"\x00")  # trailing bytes


def test_huge_declared_lengths():
    for head in HUGE:
        expect_value_error(head)
        expect_value_error(head + b"\x00" * 64)


def test_deep_nesting():
    for opener in (b"\x91", b"\x81\xa1k", b"\xdc\x00\x01", b"\xdd\x00\x00\x00\x01"):
        expect_value_error(opener * 100000 + b"\xc0")
        expect_value_error(opener * (MAX_DEPTH + 2) + b"\xc0")
    assert unpackb(b"\x91" * MAX_DEPTH + b"\xc0") is not None


def test_bad_types_and_keys():
    for data in (b"\xc1", b"\xd4\x01\x00", b"\xc7\x01\x01\x00", b"\xa2\xff\xfe", b"\x81\x90\xc0", b"\x81\xc0\xc0",
                 b"\x81\xc4\x01k\xc0", b"\x81\xcb" + bytes(8) + b"\xc0"):
        expect_value_error(data)


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.binary(max_size=64),
                 st.builds(lambda v, cut, junk: packb(v)[:cut] + junk, values,
                           st.integers(0, 200), st.binary(max_size=8)),
                 st.builds(lambda head, tail: head + tail, st.sampled_from(HUGE), st.binary(max_size=16))))
@pytest.mark.slow
def test_random_input_decodes_or_raises_value_error_only(data):
    start = time.perf_counter()
    try:
        unpackb(data)
    except ValueError:
        pass
    assert time.perf_counter() - start < 0.5
