"""Delivery receipts, the agent's side of them (docs/reliability.md, docs/wire-format.md), apart from
its loop: the settings, the switch of "auto" delivery to the gateway's receipts and back, and the
births a gateway asks for. (Outbox.receipt, resident, settles the batches a receipt lists.)

- `start`: "gateway" waits for receipts; "auto" does when a gateway sent this device receipts
  before (<state_dir>/delivery);
- `receipt`: after a receipt, "auto" delivery waits for receipts from now on; the births a gateway
  lacks are sent (at most every 10 s);
- `release`: no receipt for `delivery.fallback_s` while the broker acknowledged: the broker's
  PUBACK is delivery again.

Part of the MicroPython-compatible core, imported for these moments and unloaded afterwards. Every
name in a module loaded on a device stays interned for good, so it uses few of its own.
"""

from edge_agent.clock import mono_ms


def start(agent):
    delivery = agent.config["delivery"]
    outbox = agent.outbox
    outbox.resend_ms = int(delivery["resend_s"] * 1000)
    outbox.receipts = delivery["ack"] == "gateway"
    outbox.log = agent.log
    if delivery["ack"] == "auto":
        agent.fallback_ms = delivery["fallback_s"] * 1000 or 1 << 60  # 0: never (36 million years)
        try:
            with open(agent.config["state_dir"] + "/" + "delivery") as f:
                outbox.receipts = f.read() == "receipts"
        except OSError:
            pass


def receipt(agent, seq=None):
    """`seq`: a batch of ours whose dictionary the gateway lacks."""
    outbox = agent.outbox
    state_dir = agent.config["state_dir"]
    if agent.fallback_ms and not outbox.receipts:  # a gateway that sends receipts serves this device
        outbox.receipts = True
        agent.log("delivery", ack="gateway receipt")
        if state_dir:
            from edge_agent.store.statefile import write_atomic

            try:
                write_atomic(state_dir + "/" + "delivery", "receipts")
            except OSError as exc:
                agent.log("state_error", at="delivery", error=str(exc))
    now = mono_ms()
    if seq is None or now < agent.rebirth_ms:
        return
    agent.rebirth_ms = now + 10000
    from edge_agent.lifecycle import publish_birth

    current = agent.table.base
    if current is not None and seq >= current:
        publish_birth(agent)
    elif agent.spool is not None:  # a batch of an earlier run: its archived birth, if any is left
        base = outbox.rebirth(seq, current)
        if base is not None:
            publish_birth(agent, base)


def release(agent):
    """The gateway stopped sending receipts (an older gateway, or receipts turned off): what the
    broker has is delivered as far as we can know."""
    outbox = agent.outbox
    n = 0
    for entries in outbox.lists():
        keep = [e for e in entries if e.token != -1]  # -1: at the broker, its receipt awaited
        n += len(entries) - len(keep)
        entries[:] = keep
    outbox.sent += n
    outbox.receipts = False
    outbox.waiting_ms = None
    outbox.settled()
    agent.log("delivery", ack="broker puback", reason="no receipt for %d s" % (agent.fallback_ms // 1000),
              batches=n)
    if agent.config["state_dir"]:
        import os

        try:
            os.remove(agent.config["state_dir"] + "/" + "delivery")
        except OSError:
            pass
