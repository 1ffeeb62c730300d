"""HMAC-SHA256 (RFC 2104) on top of hashlib.sha256, for MicroPython, which has no hmac module.

On CPython the stdlib `hmac` gives the same bytes; tests compare the two.
"""

import hashlib

BLOCK = 64


def hmac_sha256(key, message):
    """The digest of `message`; `key` is bytes, or text as in config (see key_bytes)."""
    if isinstance(key, str):
        key = key_bytes(key)
    if len(key) > BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + b"\x00" * (BLOCK - len(key))
    inner = hashlib.sha256(bytes([b ^ 0x36 for b in key]))
    inner.update(message)
    outer = hashlib.sha256(bytes([b ^ 0x5C for b in key]))
    outer.update(inner.digest())
    return outer.digest()


def key_bytes(text):
    """Keys in config are hex ("hex:00ff…") or plain text."""
    if text.startswith("hex:"):
        import binascii

        return binascii.unhexlify(text[4:])
    return text.encode()
