"""Delivery receipts (docs/wire-format.md): what a gateway tells a device of its batches.

Host-only: the gateway encodes them, the fleet simulator and the tests parse them; a device reads
them with its own few lines in edge_agent's outbox (Outbox.receipt), which must agree with
`parse_receipt` (tests/test_delivery.py feeds it `encode_receipt`'s bytes)."""

from edge_wire.decode import WireError

RECEIPT_VERSION = 1
EXPORTED, REFUSED, WANTED = 0, 1, 2  # what a receipt says of a run of batches
MAX_RUN = 0x3FFF


def encode_receipt(boot, runs):
    """A gateway's delivery receipt for one device and boot tag (docs/wire-format.md).

    `runs` is a list of (first seq, count, kind): EXPORTED (the receiver accepted them), REFUSED
    (settled without export: bad data, the agent counts them lost) or WANTED (their dictionary is
    missing: the agent sends its births again). Longer runs are split at MAX_RUN batches."""
    out = bytearray([RECEIPT_VERSION])
    out.extend((boot & 0xFFFFFFFF).to_bytes(4, "big"))
    for first, count, kind in runs:
        while count > 0:
            n = min(count, MAX_RUN)
            out.extend(first.to_bytes(8, "big"))
            out.extend((kind << 14 | n).to_bytes(2, "big"))
            first += n
            count -= n
    return bytes(out)


def parse_receipt(payload):
    """(boot, [(first, count, kind), ...]) of a receipt; WireError("bad_receipt") for anything else."""
    if not (isinstance(payload, (bytes, bytearray)) and len(payload) >= 15 and (len(payload) - 5) % 10 == 0):
        raise WireError("bad_receipt", "length")
    if payload[0] != RECEIPT_VERSION:
        raise WireError("bad_receipt", "version %d" % payload[0])
    boot = int.from_bytes(payload[1:5], "big")
    runs = []
    for pos in range(5, len(payload), 10):
        word = int.from_bytes(payload[pos + 8:pos + 10], "big")
        if not (word >> 14 <= WANTED and word & MAX_RUN):
            raise WireError("bad_receipt", "run at byte %d" % pos)
        runs.append((int.from_bytes(payload[pos:pos + 8], "big"), word & MAX_RUN, word >> 14))
    return boot, runs


def runs_of(seqs, kind=EXPORTED):
    """Sorted runs (first, count, kind) of consecutive sequence numbers."""
    runs = []
    for seq in sorted(set(seqs)):
        if runs and runs[-1][0] + runs[-1][1] == seq:
            runs[-1][1] += 1
        else:
            runs.append([seq, 1, kind])
    return [tuple(r) for r in runs]
