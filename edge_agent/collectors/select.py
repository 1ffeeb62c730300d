"""Choose each collector's backend (ebpf, netlink, procfs) from the config, with fallbacks.

    collectors, effective = build_collectors(config["collectors"], proc_root="/proc", log=print)

`config` maps a collector name to its section, e.g. {"cpu": {"enabled": true, "backend": "auto",
"per_cpu": true}, "network": {"enabled": true, "backend": "auto", "include": [], "exclude": []}}.
The result is the list of collector objects (model.Collector contract) and `effective`, name ->
backend actually used, for the birth message and `edge-agent once`.

    collector  auto tries          other backends
    cpu        ebpf, procfs        -
    network    ebpf, netlink, procfs
    memory, load, system: procfs only

When a preferred backend cannot be used (no privileges, tracefs or a tracepoint absent, an old
kernel, the objects not built, the kernel refusing a program, pyroute2 missing) `log` gets ONE line
saying what is missing and which backend is used instead. Asking explicitly for an unavailable backend falls back
the same way (with the same kind of line) rather than failing: the agent never stops for it.

The eBPF network collector keeps a netlink (else procfs) collector as companion for the per-device
errors and drops no tracepoint sees, and for link events (`poll_events()`, `fileno()`); the eBPF
cpu collector keeps the procfs cpu collector for system.cpu.time and .utilization (the kernel's
accounting states, whatever the backend).

Nothing of eBPF is imported unless it can run: bpf_check.missing() is asked first, and only then
the loader (ctypes). EDGE_AGENT_BPF_LOADER=libbpf loads the same objects with Debian's libbpf
instead of our loader (development and cross-checks; bpf_libbpf.py).

Options beyond the procfs ones: cpu.top_processes (0: off) reports the N commands with the most
CPU time from eBPF.
"""

from edge_agent.collectors import BACKENDS

PREFERENCE = {"cpu": ("ebpf", "procfs"), "network": ("ebpf", "netlink", "procfs")}
EBPF_PROGRAM = {"cpu": "cpu", "network": "net"}
EXTRA_OPTIONS = {"cpu": ("top_processes",)}


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _loader():
    import os

    if os.environ.get("EDGE_AGENT_BPF_LOADER") == "libbpf":
        from edge_agent.collectors.ebpf.libbpf import load
    else:
        from edge_agent.collectors.ebpf.loader import load
    return load


def _ebpf(name, section, proc_root, companion):
    """(collector, None) or (None, what is missing). `companion()` gives the procfs (cpu) or
    netlink/procfs (network) collector the eBPF one is built around."""
    from edge_agent.collectors.ebpf.check import missing

    reason = missing(EBPF_PROGRAM[name])
    if reason:
        return None, reason
    from edge_agent.collectors.ebpf import loader as bpf_loader

    program = None
    try:
        if name == "cpu":
            from edge_agent.collectors.ebpf.cpu import EbpfCpuCollector

            top_n = int(section.get("top_processes") or 0)
            program = bpf_loader.CpuProgram(top_pids=4096 if top_n else 0, loader=_loader())
            return EbpfCpuCollector(program, companion(name), per_cpu=section.get("per_cpu", True), top_n=top_n,
                                    proc_root=proc_root), None
        from edge_agent.collectors.ebpf.net import EbpfNetCollector

        program = bpf_loader.NetProgram(loader=_loader())
        return EbpfNetCollector(program, companion(name), section.get("include"), section.get("exclude")), None
    except Exception as e:  # relocation, verifier or attach failure: report and fall back
        if program is not None:
            program.close()
        return None, "the eBPF program failed to load (%s)" % _first_line(e)


def _netlink(section):
    import importlib.util

    if importlib.util.find_spec("pyroute2") is None:  # without importing it: netlink.py takes only its parts
        return None, "pyroute2 is not installed"
    try:
        from edge_agent.collectors.netlink import NetlinkCollector

        return NetlinkCollector(section.get("include"), section.get("exclude")), None
    except Exception as e:  # no netlink socket (sandbox, non-Linux)
        return None, "netlink failed (%s)" % _first_line(e)


def build_collectors(collectors_config, proc_root="/proc", log=print):
    from edge_agent.collectors.procfs.registry import procfs_collectors

    enabled = {}
    for name, section in (collectors_config or {}).items():
        section = section or {}
        if section.get("enabled", True):
            enabled[name] = section
    options = {}
    for name, section in enabled.items():
        extra = EXTRA_OPTIONS.get(name, ())
        options[name] = dict([(k, v) for k, v in section.items() if k not in ("enabled", "backend") and k not in extra])
    procfs = procfs_collectors(proc_root, options)

    def companion(name):
        if name == "network":
            collector, _ = _netlink(enabled.get("network", {}))
            if collector is not None:
                return collector
        kept.add(name)
        return procfs[name]

    kept = set()

    collectors, effective = [], {}
    for name, section in enabled.items():
        wanted = section.get("backend", "auto")
        if wanted not in BACKENDS:
            raise ValueError("collectors.%s.backend: %r is not one of %s" % (name, wanted, ", ".join(BACKENDS)))
        order = PREFERENCE.get(name, ("procfs",))
        if wanted != "auto":
            order = (wanted,) + tuple(b for b in order if b != wanted) if wanted in order else order
        chosen, problems = None, []
        for backend in order:
            if backend == "procfs":
                chosen = procfs[name]
            elif backend == "ebpf":
                chosen, why = _ebpf(name, section, proc_root, companion)
                if chosen is None:
                    problems.append("eBPF unavailable (%s)" % why)
            elif backend == "netlink" and name == "network":
                chosen, why = _netlink(section)
                if chosen is None:
                    problems.append("netlink unavailable (%s)" % why)
            if chosen is not None:
                break
        if wanted not in ("auto", "procfs") and wanted not in PREFERENCE.get(name, ()):
            problems.insert(0, "%s has no %s backend" % (name, wanted))
        if problems:
            log("collector %s: %s; using %s" % (name, ", ".join(problems), chosen.source))
        if chosen.source == "procfs":
            kept.add(name)
        collectors.append(chosen)
        effective[name] = chosen.source
    for name in procfs:
        if name not in kept and effective.get(name) != "procfs":
            procfs[name].close()
    return collectors, effective
