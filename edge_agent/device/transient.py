"""The modules a device imports for a while and releases: generated from firmware/manifest.py
(`python -m firmware.manifest`; tests/test_architecture.py checks it is current)."""

TRANSIENT = (
    "edge_agent.device.setup",
    "edge_agent.compose",
    "edge_agent.store.statefile",
    "edge_agent.config",
    "edge_agent.collectors.procfs.registry",
    "edge_agent.collectors.procfs.load",
    "edge_agent.collectors.procfs.system",
    "edge_agent.lifecycle",
    "edge_agent.store.receipts",
    "edge_agent.transport.linkstate",
    "edge_wire.birth",
    "edge_wire.broker",
    "edge_agent.transport.umqtt_connect",
    "edge_wire.command",
    "edge_agent.commands",
    "edge_agent.commands.handler",
    "edge_agent.sampling",
    "edge_agent.sampling.rules",
    "edge_agent.commands.collector_changes",
    "edge_agent.sampling.sampler",
    "edge_agent.sampling.loadwatch",
    "edge_agent.store.spool",
    "edge_agent.device.transient",
)
