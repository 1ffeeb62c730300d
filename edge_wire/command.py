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
    inner_pad = bytearray(b"\x36" * BLOCK)
    outer_pad = bytearray(b"\x5c" * BLOCK)
    for i in range(len(key)):  # the key, zero-padded to BLOCK, xor each pad
        inner_pad[i] ^= key[i]
        outer_pad[i] ^= key[i]
    inner = hashlib.sha256(inner_pad)
    inner.update(message)
    outer = hashlib.sha256(outer_pad)
    outer.update(inner.digest())
    return outer.digest()


def key_bytes(text):
    """Keys in config are hex ("hex:00ff…") or plain text."""
    if text.startswith("hex:"):
        import binascii

        return binascii.unhexlify(text[4:])
    return text.encode()
