"""The eBPF collectors and our loader for their compiled programs (bpf/*.bpf.c)."""
