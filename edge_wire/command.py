"""The signed command envelope (docs/commands.md), written once: the operator's tool signs
(gateway/ops/tune.py), the device checks (edge_agent/commands/handler.py handles what it says).

A command travels as a JSON envelope `{"body": "<json text>", "sig": "<hex HMAC-SHA256>"}`. The
signature covers the body text exactly as sent, so no canonical-JSON rules are needed. The body:

    {"id": "c-1f3a", "cmd": "set_sampling", "args": {...},
     "ts": 1763740800, "nonce": "9f2c51d0a7e4b6c3", "target": "dev-7" | "*" | "group:<G>"}

Checking one is three steps, in this order, so that a refusal names the first thing wrong:
`open_envelope` (size, JSON, shape), `check_signature` (with the keys the topic allows, which the
receiver knows), `read_body` (the fields and their types). What only the receiver can judge
(addressing, freshness, replays, the command's arguments) is the receiver's. Every refusal is
`Rejected(reason, message)`, the reason a short label to count by.

HMAC-SHA256 (RFC 2104) is written here on top of hashlib.sha256 for MicroPython, which has no hmac
module; on CPython the stdlib `hmac` gives the same bytes (tests compare the two).
MicroPython-compatible; a device loads this module only while it handles a command.
"""

import binascii
import hashlib
import json

MAX_COMMAND_BYTES = 4096
COMMANDS = ("set_sampling", "set_collectors", "get_config", "ping", "rebirth", "flush")
BLOCK = 64  # SHA-256's block, for HMAC


class Rejected(Exception):
    """A refused command: Rejected(reason, message), the reason counted and both acknowledged."""


def sign(body, key):
    """Build a signed envelope (bytes) from a body dict; `key` as in config ("hex:…" or text)."""
    text = json.dumps(body)
    sig = binascii.hexlify(hmac_sha256(key, text.encode())).decode()
    return json.dumps({"body": text, "sig": sig}).encode()


def open_envelope(payload):
    """(body text, signature or None) of a command envelope; Rejected("malformed") otherwise."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise Rejected("malformed", "command larger than %d bytes" % MAX_COMMAND_BYTES)
    try:
        envelope = json.loads(payload)
    except (ValueError, RuntimeError):  # RuntimeError: RecursionError on deeply nested arrays
        raise Rejected("malformed", "not JSON")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), str):
        raise Rejected("malformed", "envelope must be {\"body\": \"<json>\", \"sig\": \"<hex>\"}")
    return envelope["body"], envelope.get("sig")


def check_signature(text, sig, keys, required=True):
    """Rejected unless `sig` is the HMAC of `text` with one of `keys` (empty keys never match); an
    absent signature passes only when not `required`."""
    if sig is None or sig == "":
        if required:
            raise Rejected("unsigned", "command is not signed")
        return
    try:
        given = binascii.unhexlify(sig) if isinstance(sig, str) and len(sig) == 64 else b""
    except (ValueError, TypeError):
        given = b""
    try:
        data = text.encode()
    except UnicodeError:  # a lone surrogate (\ud800 escaped in the JSON): no signer made that
        raise Rejected("malformed", "body is not valid UTF-8")
    signed = False
    for key in keys:
        if key and given:
            digest = hmac_sha256(key, data)
            diff = 0  # compared in a time independent of where the digests differ
            for i in range(32):
                diff |= digest[i] ^ given[i]
            signed = signed or diff == 0
    if not signed:
        raise Rejected("bad_signature", "signature does not match")


def read_body(text):
    """The body as a dict with its fields checked (id, cmd, nonce, target, ts, args); else Rejected."""
    try:
        body = json.loads(text)
    except (ValueError, RuntimeError):
        raise Rejected("malformed", "body is not JSON")
    if not isinstance(body, dict):
        raise Rejected("malformed", "body must be an object")
    for field in ("id", "cmd", "nonce", "target"):
        if not isinstance(body.get(field), str):
            raise Rejected("malformed", "field '%s' missing or not a string" % field)
    if not 0 < len(body["id"]) <= 64:
        raise Rejected("malformed", "field 'id' must be 1 to 64 characters")
    ts = body.get("ts")
    # NaN compares false with everything, so it would never be stale; ts - ts is NaN for infinities
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not (ts == ts and ts - ts == 0):
        raise Rejected("malformed", "field 'ts' missing or not a finite number")
    if not isinstance(body.get("args", {}), dict):
        raise Rejected("malformed", "field 'args' must be an object")
    if not 8 <= len(body["nonce"]) <= 64:
        raise Rejected("malformed", "field 'nonce' must be 8 to 64 characters")
    return body


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
