"""edge_wire: the protocol between agent and gateway, written once (docs/wire-format.md).

Imported by the agent (edge_agent) and the gateway (gateway); imports neither. Inside, imports run one
way (A -> B: A imports B): batch -> pack; birth -> batch, pack; unpack -> pack; decode -> unpack;
receipt -> decode; paho -> broker; command and broker import nothing of the package; all may import
this package's constants.

Device modules (MicroPython-compatible, listed in firmware/manifest.py):
- this package: the protocol's constants (below) and `series_key`;
- `pack`: the msgpack encoder; `batch`: the data batch (BatchBuilder, Chunks); `birth`: the birth
  message (loaded for a birth and released); `command`: the signed command envelope; `broker`: the
  broker URL.
Host-only (never on a device):
- `unpack`: the bounded msgpack decoder; `decode`: the strict batch and birth decoders, returning
  plain records; `receipt`: the gateway's delivery receipts; `paho`: the CPython MQTT connection
  helpers (TLS, secrets, one-line connection problems, reconnect delays) agent and gateway share.

Field orders on the wire:
- data batch: [version, flags, device, boot, seq, dict, t0, body, ext?], body [tick_deltas, columns],
  column [series_id, mask, v0, d1, d2, ...];
- a birth's series entry: [id, name, unit, kind, attrs, scale, bounds, source].
"""

VERSION = 1
FLAG_DEFLATE = 1
MAX_TICKS = 64  # a column mask must fit an unsigned 64-bit integer

# metric kinds, as a birth's series entry carries them
GAUGE = 0
COUNTER = 1  # cumulative and monotonic since the series' `start` (boot time unless stated)
HISTOGRAM = 2  # cumulative since the series' `start`


def series_key(name, attrs):
    """A stable text key for a name and its attributes, independent of attribute order."""
    if not attrs:
        return name
    key = name
    sep = "{"
    for k in sorted(attrs):  # a loop, not a comprehension: one code object less on a device
        key += sep + k + "=" + str(attrs[k])
        sep = ","
    return key + "}"
