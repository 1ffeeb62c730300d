"""The eBPF programs (C for bcc), shipped as package data next to the agent."""
