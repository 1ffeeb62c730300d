"""The agent's rare moments, kept out of its loop: a connection starts, the dictionary grows.

- `announce`: on every (re)connection, the retained "online" state, the latest birth and the
  command subscriptions;
- `publish_birth`: the birth message (the series dictionary), when it grew or on connecting.

Part of the MicroPython-compatible core. The agent imports this module when one of these happens
and unloads it afterwards (edge_agent.unload): on a small MicroPython heap its code is not resident.
Out of memory here is survived as in the loop: what failed is tried again at the next pass.
"""

from edge_agent import wire


def announce(agent):
    agent.connect_due = False
    try:
        agent.transport.publish(agent.topics["state"], b"online", 1, True)
        if agent.table.base is not None:
            publish_birth(agent)
        if agent.commands is not None:
            for topic in agent.commands.topics():
                agent.transport.subscribe(topic, 1)
    except MemoryError:  # all of it again at the next pass
        agent.connect_due = True
        agent.out_of_memory("connect")


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
    """Send the birth now; when memory is short it is tried again at the next pass (birth_due)."""
    agent.birth_due = False
    if agent.transport.connected and agent.table.series:
        try:
            agent.transport.publish(agent.topics["birth"], birth_payload(agent), 1, True)
        except MemoryError:
            agent.birth_due = True
            agent.out_of_memory("birth")
            return
        agent.stats["births"] += 1
