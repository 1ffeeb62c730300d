"""The CPython command line: `edge-agent` (main), its config documentation, trace replay."""
