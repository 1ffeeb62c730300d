"""The gateway's MQTT client id: never the same for two processes, the same across restarts of one replica.

- `--client-id ID`: ID, as given (the operator keeps it unique and stable);
- `--state-dir DIR`: `edge-gateway-<host>-<8 hex>`, the suffix made at the first start and kept in
  DIR/client-id (a state directory belongs to one gateway: its lock refuses a second one);
- neither: `edge-gateway-<host>-<8 hex>`, new at every start.

The data connection uses the id, the meta connection the id + "-meta". Only a stable id (the first
two) gets a persistent session (resumed after a restart: what the broker queued meanwhile is
delivered); a per-process id starts clean and its session ends with it, so a restart leaves no
orphaned session holding data on the broker. docs/security.md has the broker side.
"""

from __future__ import annotations

import os
import socket

FILE = "client-id"


def client_id(explicit: str | None, state_dir: str | None, host: str | None = None) -> tuple[str, bool]:
    """(client id, stable); OSError when the state directory cannot keep the id."""
    if explicit:
        return explicit, True
    prefix = "edge-gateway-%s" % (host or socket.gethostname()).split(".")[0]
    if not state_dir:
        return "%s-%s" % (prefix, os.urandom(4).hex()), False
    path = os.path.join(state_dir, FILE)
    try:
        with open(path) as f:
            saved = f.read().strip()
        if saved:
            return saved, True
    except FileNotFoundError:
        pass
    chosen = "%s-%s" % (prefix, os.urandom(4).hex())
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(chosen + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return chosen, True
