"""Monotonic totals from raw kernel counters: wraps, resets, vanishing sources."""

from edge_agent.collectors.counters import Monotonic


def test_wrap_at_32_and_64_bits():
    m = Monotonic()
    assert m.update("a", (1 << 32) - 100, 32) == (1 << 32) - 100
    assert m.update("a", 50, 32) == (1 << 32) + 50
    assert m.update("b", (1 << 64) - 1, 64) == (1 << 64) - 1
    assert m.update("b", 9, 64) == (1 << 64) + 9


def test_reset_counts_from_zero_and_never_goes_back():
    m = Monotonic()
    m.update("a", 1000)
    assert m.update("a", 10) == 1010  # reset: 10 counted since zero


def test_value_above_the_declared_width_is_not_taken_for_a_wrap():
    m = Monotonic()
    m.update("a", 5_000_000_000, 32)
    assert m.update("a", 1000, 32) == 5_000_001_000  # a reset, not a wrap: still growing


def test_forgotten_source_resumes_upward():
    m = Monotonic()
    m.update("eth1", 500)
    m.forget("eth1")
    assert m.update("eth1", 20) == 520
