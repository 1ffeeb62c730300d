"""The eBPF programs: C sources (*.bpf.c, built once by `python -m bpf.build`) and the compiled
objects (*.bpfel.o, *.bpfeb.o) shipped as package data and loaded by edge_agent/collectors/ebpf/loader.py."""
