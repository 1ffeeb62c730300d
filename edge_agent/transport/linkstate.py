"""The agent's connection story: one log line per change, the same names and fields whatever the
transport (paho on CPython, umqtt on MicroPython), so an operator reads one story everywhere.

    mqtt_connected     broker client_id offline_s       a connection is up (offline_s: how long it was down,
                                                        or since the start for the first one)
    mqtt_disconnected  broker reason retry_s            a live connection broke; the next attempt in retry_s
    mqtt_error         broker error attempt retry_s     a connection attempt failed (attempt: failures in a
                                                        row); the next attempt in retry_s
    mqtt_flapping      broker client_id drops           the broker keeps closing the connection right after
                                                        accepting it: another client with the same client id
    buffering          batches offline_s lost           offline and holding data: at the first batch held,
                                                        then every BUFFERING_EVERY_S (lost: dropped so far)
    backlog_delivered  batches offline_s took_s         what was held while offline has been delivered

The core logs them: the agent's loop notices that something changed (Agent.link_news) and only then
loads this module (`watch`), so on a small heap its code is not resident. A transport only keeps
counters (one without them, such as a test's, is reported connected once, when it says it is):
`connected`, `reconnects` (connections made so far), `errors` (failed attempts so far), `last_error`
(why the latest attempt failed or the connection broke, one line) and `retry_in_ms` (the wait before
the next attempt), plus `client_id`.

The delays between connection attempts are the transport's (edge_wire.paho.Backoff on CPython:
1 s doubling to 16 s, minus up to half at random).

MicroPython-compatible.
"""

from edge_agent.clock import mono_ms

BUFFERING_EVERY_S = 30
QUICK_DROP_MS = 5000  # a connection the broker closes sooner than this after accepting it...
QUICK_DROPS = 3  # ...this many times in a row: another client takes it over (same client id)


def watch(agent):
    """Log what changed since the last call (agent.link holds what was told: agent.LinkState)."""
    transport, outbox, link = agent.transport, agent.outbox, agent.link
    log, broker = agent.log, agent.config["broker"]
    client_id = getattr(transport, "client_id", "")
    now = mono_ms()
    reconnects = getattr(transport, "reconnects", 0)
    errors = getattr(transport, "errors", 0)
    if reconnects != link.reconnects or (transport.connected and not link.up):  # connected (perhaps lost again)
        link.reconnects = reconnects
        link.attempts = 0
        log("mqtt_connected", broker=broker, client_id=client_id, offline_s=_seconds(now - link.down_ms))
        if len(outbox):
            link.mark = (outbox.sent, len(outbox), now - link.down_ms)
        link.up, link.up_ms, link.buffering_ms = True, now, 0
    if link.up and not transport.connected:
        link.up = False
        link.down_ms = now
        log("mqtt_disconnected", broker=broker, reason=getattr(transport, "last_error", None) or "closed",
            retry_s=_seconds(getattr(transport, "retry_in_ms", 0)))
        link.quick = link.quick + 1 if now - link.up_ms < QUICK_DROP_MS else 0
        if link.quick == QUICK_DROPS:
            log("mqtt_flapping", broker=broker, client_id=client_id, drops=link.quick,
                hint="another client uses this client id, or the broker refuses it")
    if errors != link.errors:
        link.attempts += errors - link.errors
        link.errors = errors
        log("mqtt_error", broker=broker, error=transport.last_error, attempt=link.attempts,
            retry_s=_seconds(transport.retry_in_ms))
    if link.up and link.mark is not None:
        sent, held, offline_ms = link.mark
        if outbox.sent - sent >= held or not len(outbox):
            link.mark = None
            log("backlog_delivered", batches=outbox.sent - sent, offline_s=_seconds(offline_ms),
                took_s=_seconds(now - link.up_ms))
    elif not link.up and len(outbox) and now >= link.buffering_ms:
        link.buffering_ms = now + BUFFERING_EVERY_S * 1000
        log("buffering", batches=len(outbox), offline_s=_seconds(now - link.down_ms), lost=outbox.lost()[0])


def _seconds(ms):
    return round((ms or 0) / 1000, 1)
