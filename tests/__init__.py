"""The test suite, in tiers by what a test needs (tests/conftest.py marks each test with its folder's tier):

- unit/: CPython alone, in the test's process (a fresh `python -c` child to check what gets imported,
  loopback servers the test itself runs); no broker, no root, no other interpreter. `bin/test --fast`.
- integration/: real processes and services on loopback: mosquitto, the agent and gateway CLIs,
  Prometheus, rotel, RabbitMQ, the fuzz harnesses, the benchmarks.
- kernel/: eBPF objects and programs, netlink, veth pairs (root for most).
- device/: the MicroPython interpreter, firmware builds, cross-built binaries under qemu.

Helpers shared by several test files live in tests/support/; services shared with bench/ in testbed/.
"""
