"""Wall-clock and monotonic milliseconds on CPython and MicroPython.

Sample timestamps use the wall clock (what the central stack plots); scheduling uses a monotonic
clock, so an NTP step on a device that booted in 1970 neither stalls nor floods the loop.
"""

import time

try:
    _monotonic_ns = time.monotonic_ns

    def mono_ms():
        return _monotonic_ns() // 1000000

except AttributeError:  # MicroPython: unwrap ticks_ms, which wraps around
    _last = [time.ticks_ms(), 0]

    def mono_ms():
        now = time.ticks_ms()
        _last[1] += time.ticks_diff(now, _last[0])
        _last[0] = now
        return _last[1]


def wall_ms():
    return time.time_ns() // 1000000


def sleep_s(seconds):
    # a float sleep: MicroPython's sleep_ms busy-wakes every millisecond
    if seconds > 0:
        time.sleep(seconds)
