"""Run `edge-gateway` (or any `module:function` main) with cProfile in every thread; write one pstats file.

    python bench/profiled.py OUT.pstats gateway.cli:main run --broker ...

bench/fleet.py --profile uses it. Each thread's profile is kept as that thread ends; the main
thread's and those still running are written at exit (SIGTERM ends `edge-gateway run` cleanly).
Read the result with `python -m pstats OUT.pstats` (sort tottime / cumulative, stats 30).
"""

from __future__ import annotations

import atexit
import cProfile
import importlib
import os
import pstats
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    out, target, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    profiles: list[cProfile.Profile] = []
    run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time)  # CPU, not time spent waiting for the GIL
        profiles.append(profile)
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main_profile = cProfile.Profile(time.thread_time)  # CPU, not time spent waiting for the GIL
    profiles.append(main_profile)

    def write() -> None:
        main_profile.disable()
        stats = None
        for profile in profiles:
            try:
                profile.create_stats()
            except Exception:  # a thread still running: its stats so far
                pass
            if getattr(profile, "stats", None):
                if stats is None:
                    stats = pstats.Stats(profile)
                else:
                    stats.add(profile)
        if stats is not None:
            stats.dump_stats(out)

    atexit.register(write)
    module, _, function = target.partition(":")
    entry = getattr(importlib.import_module(module), function)
    main_profile.enable()
    return entry(argv)


if __name__ == "__main__":
    sys.exit(main())
