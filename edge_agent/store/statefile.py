"""Small state files (sequence reservation, accepted commands, nonces): atomic, JSON, tolerant.

A crash or power cut leaves either the old or the new content, never half of one; a missing or
corrupt file reads as "nothing saved". MicroPython-compatible.
"""

import json
import os


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        try:
            f.flush()
            os.fsync(f.fileno())
        except (AttributeError, OSError):
            pass  # MicroPython has no fsync
    os.rename(tmp, path)


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return default


def ensure_dir(path):
    try:
        os.stat(path)
    except OSError:
        os.mkdir(path)
