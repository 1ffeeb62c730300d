"""The agent's rare moments, kept out of its loop: a connection starts, the dictionary grows, a
gateway asks for a dictionary or starts (or stops) sending delivery receipts.

- `announce`: on every (re)connection, the retained "online" state, the births (those of earlier
  runs that spooled batches still need, then the current one) and the subscriptions (the device's
  delivery receipts, its command topics);
- `publish_birth`: the birth message (the series dictionary), when it grew or on connecting; with
  a spool also archived there (edge_agent/spool.py), before any batch that needs it;
- `rebirth`: a gateway lacks the dictionary of one of our batches: the births again, or, when no
  birth of that batch's run is left, the batches of that run given up and counted lost;
- `remember_receipts` / `forget_receipts`: "auto" delivery switches to the gateway's receipts, or
  back to the broker's PUBACK when a gateway stops sending them (docs/reliability.md).

Part of the MicroPython-compatible core. The agent imports this module when one of these happens
and unloads it afterwards (edge_agent.unload): on a small MicroPython heap its code is not resident.
Out of memory here is survived as in the loop: what failed is tried again at the next pass.
"""

from edge_agent import wire


def announce(agent):
    agent.connect_due = False
    try:
        agent.transport.publish(agent.topics["state"], b"online", 1, True)
        agent.transport.subscribe(agent.topics["delivery"], 0)  # receipts: QoS 0, a lost one costs a resend
        if agent.commands is not None:
            for topic in agent.commands.topics():
                agent.transport.subscribe(topic, 1)
        publish_births(agent)
    except MemoryError:  # all of it again at the next pass
        agent.connect_due = True
        agent.out_of_memory("connect")
        return
    agent.log("connected", device=agent.device)


def publish_births(agent, bases=None):
    """The archived births of earlier runs (`bases`, default: every one a spooled batch needs; not
    retained: the retained birth is the current run's), then the current birth."""
    spool = agent.spool
    if spool is not None:
        for base in spool.needed(agent.table.base) if bases is None else bases:
            try:
                pieces = spool.birth(base)
            except OSError:
                continue
            agent.transport.publish(agent.topics["birth"], pieces if agent.chunked else b"".join(pieces), 1, False)
    if agent.table.base is not None:
        publish_birth(agent)


def birth_payload(agent):
    info = dict(agent.info)
    info["interval_ms"] = agent.base_interval_ms()
    info["sampling"] = agent.sampler.snapshot()
    if not agent.chunked:
        return wire.encode_birth(info, agent.table)
    out = wire.Chunks()
    wire.encode_birth_into(out, info, agent.table)
    return out.pieces()


def publish_birth(agent):
    """Send the birth now (and archive it); when memory is short it is tried again at the next pass
    (birth_due); when the transport cannot take it now, too. Offline, `announce` sends it."""
    agent.birth_due = False
    connected = agent.transport.connected
    if not agent.table.series or not (connected or agent.archive_due):
        return
    try:
        payload = birth_payload(agent)
    except MemoryError:
        agent.birth_due = True
        agent.out_of_memory("birth")
        return
    if agent.archive_due:
        agent.archive_due = False
        try:
            agent.spool.keep_birth(agent.table.base, payload)
        except OSError as exc:  # spooled batches of this run may then find no birth after a restart
            agent.log("state_error", what="birth", error=str(exc))
    if connected:
        if agent.transport.publish(agent.topics["birth"], payload, 1, True) is None:
            agent.birth_due = True  # not taken now (its window is full): data waits for it
            return
        agent.stats["births"] += 1


def rebirth(agent):
    """A gateway lacks the dictionary of our batch `agent.wanted`: send the births that cover it.

    Without a birth for its run (an archive lost to a failed disk), that run's batches can never be
    resolved: they are given up, counted lost, rather than sent again forever."""
    seq = agent.wanted
    mine = False
    for entries in agent.outbox.lists():
        for entry in entries:
            mine = mine or entry.seq == seq
    if not mine:
        return  # delivered meanwhile (through another gateway), or not ours
    current = agent.table.base
    if current is not None and seq >= current:
        publish_birth(agent)
        return
    spool = agent.spool
    bases = spool.bases if spool is not None else []
    older = [b for b in bases if b <= seq]
    if older:
        publish_births(agent, [older[-1]])
        return
    end = [b for b in bases if b > seq] + ([current] if current is not None else [])
    end = min(end) if end else seq + 1
    before = agent.outbox.lost()
    agent.outbox.confirm(0, end, True)
    if spool is not None:
        for name in spool.segments():
            if int(name[:20]) < end and name != agent.outbox.front_segment:
                spool.discard(name)
    lost = agent.outbox.lost()
    agent.log("dictionary_lost", seq=seq, batches=lost[0] - before[0], samples=lost[1] - before[1])


def remember_receipts(agent):
    """A gateway sends receipts for this device: a batch now leaves only on its receipt."""
    agent.log("delivery", ack="gateway receipt")
    state_dir = agent.config["state_dir"]
    if state_dir:
        from edge_agent.statefile import write_atomic

        try:
            write_atomic(state_dir + "/delivery", "receipts")
        except OSError as exc:
            agent.log("state_error", what="delivery", error=str(exc))


def forget_receipts(agent):
    """No receipt for `delivery.fallback_s` while the broker acknowledged: the gateway stopped
    sending them (an older gateway, or receipts turned off). The broker's PUBACK is delivery again."""
    released = agent.outbox.release()
    agent.log("delivery", ack="broker puback", reason="no receipt for %d s" % (agent.fallback_ms // 1000),
              released=released)
    state_dir = agent.config["state_dir"]
    if state_dir:
        import os

        try:
            os.remove(state_dir + "/delivery")
        except OSError:
            pass
