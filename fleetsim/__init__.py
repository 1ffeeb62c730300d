"""A fleet simulator: thousands of devices speaking the agent's protocol to a broker (`edge-fleet-sim`).

mqtt.py is the per-device MQTT client, replay.py the recorded values, device.py one device's
behaviour (the agent's outbox and receipts), cli.py the command. Used by bench/fleet.py and the
cluster tests; it reuses the agent's encoder and outbox, and imports nothing of the gateway.
"""
