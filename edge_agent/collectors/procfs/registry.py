"""The /proc collectors as a registry, plus the whole-file parsers for the readers outside them.

    name     class (module)                    reads                 options (defaults)
    cpu      CpuCollector (procfs_cpu)         stat                  per_cpu=True
    memory   MemoryCollector (procfs_memory)   meminfo               -
    load     LoadCollector (procfs_load)       loadavg               -
    network  NetworkCollector (procfs_net)     net/dev               include=[], exclude=[], counter_bits=None
    system   SystemCollector (procfs_system)   uptime, boot_id       -

Every collector takes the /proc root (`root`, default "/proc"), so tests point it at fixture trees,
and keeps it in `self.root`. Each module has a pure `parse_*(text)` beside its collector and
documents its metrics and options in its docstring.

Needed only to build collectors: no collector imports this module, so a device can release it once
they are built (and load only the collector modules a config enables). MicroPython-compatible
core: plain classes, stdlib subset only. Files are read with one `read()` (MicroPython reads a text
file line by line one byte at a time).
"""

# name, module, class, options it takes (lists: MicroPython loads a constant tuple's strings as
# separate str objects)
REGISTRY = [
    ["cpu", "cpu", "CpuCollector", ["per_cpu"]],
    ["memory", "memory", "MemoryCollector", []],
    ["load", "load", "LoadCollector", []],
    ["network", "net", "NetworkCollector", ["include", "exclude", "counter_bits"]],
    ["system", "system", "SystemCollector", []],
]


def read_text(root, name):
    """The whole text of `root/name` in one read; raises OSError when it is missing."""
    with open(root + "/" + name) as f:
        return f.read()


def parse_stat(text):
    """/proc/stat -> {"cpu": {"total": [8 ints], "cpu0": [...]}, "btime", "procs_running",
    "procs_blocked", "ctxt"} (ints; a missing line gives 0). The cpu lines as procfs_cpu reads them."""
    from edge_agent.collectors.procfs.cpu import scan_cpus

    result = {"cpu": dict(scan_cpus(text)), "btime": 0, "procs_running": 0, "procs_blocked": 0, "ctxt": 0}
    for line in text.split("\n"):
        # only these few lines are split: the intr and softirq lines are long
        if line.startswith("btime") or line.startswith("procs_") or line.startswith("ctxt"):
            tokens = line.split()
            if len(tokens) == 2 and tokens[0] in result:
                result[tokens[0]] = int(tokens[1])
    return result


def parse_net_dev(text):
    """/proc/net/dev -> {iface: {"rx_bytes", "rx_packets", "rx_errs", "rx_drop", "tx_bytes", ...}}
    (the columns procfs_net reads)."""
    from edge_agent.collectors.procfs.net import scan_net_dev

    result = {}
    for name, columns in scan_net_dev(text):
        fields = {}
        for i, suffix in enumerate(["bytes", "packets", "errs", "drop"]):
            fields["rx_" + suffix] = columns[i]
            fields["tx_" + suffix] = columns[8 + i]
        result[name] = fields
    return result


def procfs_collectors(root="/proc", options=None, names=None):
    """name -> collector instance for cpu, memory, load, network and system (or only `names`).

    `options` maps a collector name to its keyword options, e.g.
    {"cpu": {"per_cpu": True}, "network": {"include": [], "exclude": ["lo"]}}.
    An unknown collector name or option raises ValueError naming it. Only the modules of the
    collectors built are imported.
    """
    options = options or {}
    known = [entry[0] for entry in REGISTRY]
    for name in options:
        if name not in known:
            raise ValueError("procfs: unknown collector %r (known: %s)" % (name, ", ".join(known)))
    collectors = {}
    for name, module, cls, allowed in REGISTRY:
        opts = options.get(name) or {}
        for key in opts:
            if key not in allowed:
                raise ValueError(
                    "procfs.%s: unknown option %r (known: %s)" % (name, key, ", ".join(allowed) or "none")
                )
        if names is None or name in names:
            loaded = __import__("edge_agent.collectors.procfs." + module, None, None, (cls,))
            collectors[name] = getattr(loaded, cls)(root, **opts)
    return collectors


def enabled_procfs(section, root="/proc"):
    """The collectors a config's `collectors` section enables, all read from /proc.

    Returns (list of collectors, {name: "procfs"}); `enabled` and `backend` are the section's own
    keys, everything else is passed to the collector as an option.
    """
    options = {}
    enabled = []
    for name in section:
        # enabled/backend belong to the section, top_processes to the eBPF backend only
        options[name] = dict([(k, v) for k, v in section[name].items()
                              if k not in ["enabled", "backend", "top_processes"]])
        if section[name].get("enabled", True):
            enabled.append(name)
    built = procfs_collectors(root, options, enabled)
    chosen = [built[name] for name in section if name in built]
    return chosen, dict([(c.name, c.source) for c in chosen])
