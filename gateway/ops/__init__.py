"""Operating the gateway and the fleet: health and metrics over HTTP, logs, the client identity, and
the operator's subcommands (tune, devices, keygen) with what they read from the broker (fleet)."""
