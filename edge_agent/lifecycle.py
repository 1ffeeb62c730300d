"""The agent's rare moments, kept out of its loop: a connection starts, the dictionary grows.

- `announce`: on every (re)connection, the retained "online" state, the births (those of earlier
  runs that spooled batches still need, then the current one) and the subscriptions (the device's
  delivery receipts, its command topics); what awaits a receipt goes again;
- `publish_birth`: the birth message (the series dictionary), when it grew or on connecting; with
  a spool also archived there (edge_agent/store/spool.py), before any batch that needs it.

Part of the MicroPython-compatible core. The agent imports this module when one of these happens
and unloads it afterwards (edge_agent.unload): on a small MicroPython heap its code is not resident
(a command that changes the sampling sends a birth: this module is then loaded beside
edge_agent.commands.handler, so it is kept small; delivery receipts are edge_agent.store.receipts').
Out of memory here is survived as in the loop: what failed is tried again at the next pass.
"""

from edge_wire.batch import Chunks
from edge_wire.birth import encode_birth, encode_birth_into


def announce(agent):
    agent.connect_due = False
    outbox = agent.outbox
    for entries in outbox.lists():  # the broker's session, and what it held, may be gone: again now
        for batch in entries:
            if batch.token == -1:  # at the broker, its receipt awaited
                batch.sent_ms = -120000
                batch.tries = 0
    outbox.waiting_ms = None
    try:
        agent.transport.publish(agent.topics["state"], b"online", 1, True)
        agent.transport.subscribe(agent.topics["delivery"], 0)  # receipts: QoS 0, a lost one costs a resend
        if agent.commands is not None:
            for topic in agent.commands.topics():
                agent.transport.subscribe(topic, 1)
        spool = agent.spool
        if spool is not None:  # births of earlier runs that spooled batches still need
            for base in spool.bases:
                if base != agent.table.base:
                    publish_birth(agent, base)
        if agent.table.base is not None:
            publish_birth(agent)
    except MemoryError:  # all of it again at the next pass
        agent.connect_due = True
        agent.out_of_memory("connect")


def birth_payload(agent, pieces=False):
    """The current birth for agent.transport: bytes, pieces (edge_wire.batch.Chunks) for a chunked transport, or,
    for one that `streams` (umqtt), an edge_wire.birth.StreamedBirth, encoded as it is written; `pieces`
    asks for pieces even then (the spool archives them)."""
    info = dict(agent.info)
    info["interval_ms"] = agent.base_interval_ms()
    info["sampling"] = agent.sampler.snapshot()
    if not agent.chunked:
        return encode_birth(info, agent.table)
    if not pieces and getattr(agent.transport, "streams", False):
        from edge_wire.birth import StreamedBirth

        return StreamedBirth(info, agent.table)
    out = Chunks()
    encode_birth_into(out, info, agent.table)
    return out.pieces()


def publish_birth(agent, base=None):
    """Send the birth now (and archive it); when memory is short it is tried again at the next pass
    (birth_due); when the transport cannot take it now, too. Offline, `announce` sends it.

    With `base`, the archived birth of that earlier run instead (spool.py), not retained: the
    retained birth is the current run's."""
    if base is not None:
        try:
            pieces = agent.spool.birth(base)
        except OSError:
            return
        agent.transport.publish(agent.topics["birth"], pieces if agent.chunked else b"".join(pieces), 1, False)
        return
    agent.birth_due = False
    connected = agent.transport.connected
    spool = agent.spool
    archive = spool is not None and spool.epoch != agent.table.epoch
    if not agent.table.series or not (connected or archive):
        return
    try:
        payload = birth_payload(agent, archive)
        if archive:
            spool.epoch = agent.table.epoch
            try:
                spool.birth(agent.table.base, payload)
            except OSError as exc:  # spooled batches of this run may then find no birth after a restart
                agent.log("state_error", at="birth", error=str(exc))
        if connected and agent.transport.publish(agent.topics["birth"], payload, 1, True) is None:
            agent.birth_due = True  # not taken now (its window is full): data waits for it
            return
    except MemoryError:
        agent.birth_due = True
        agent.out_of_memory("birth")
        return
    if connected:
        agent.stats["births"] += 1
