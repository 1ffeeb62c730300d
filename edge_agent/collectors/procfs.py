"""The /proc collectors as a registry, plus the two helpers they share.

    name     class (module)                    reads                 options (defaults)
    cpu      CpuCollector (procfs_cpu)         stat                  per_cpu=True
    memory   MemoryCollector (procfs_memory)   meminfo               -
    load     LoadCollector (procfs_load)       loadavg               -
    network  NetworkCollector (procfs_net)     net/dev               include=[], exclude=[], counter_bits=None
    system   SystemCollector (procfs_system)   uptime, boot_id       -

Every collector takes the /proc root (`root`, default "/proc"), so tests point it at fixture trees,
and keeps it in `self.root`. Each module has a pure `parse_*(text)` beside its reader and documents
its metrics and options in its docstring.

MicroPython-compatible core: plain classes, stdlib subset only. Files are read with one `read()`
(MicroPython reads a text file line by line one byte at a time).
"""


def read_text(root, name):
    """The whole text of `root/name` in one read; raises OSError when it is missing."""
    f = open(root + "/" + name)
    try:
        return f.read()
    finally:
        f.close()


def hundredths(token):
    """'215.06' -> 21506 without floats (the kernel prints two decimals; more are truncated)."""
    dot = token.find(".")
    if dot < 0:
        return int(token) * 100
    whole = int(token[:dot]) if dot else 0
    frac = (token[dot + 1 : dot + 3] + "00")[:2]
    return whole * 100 + int(frac)


def procfs_collectors(root="/proc", options=None):
    """name -> collector instance for cpu, memory, load, network and system.

    `options` maps a collector name to its keyword options, e.g.
    {"cpu": {"per_cpu": True}, "network": {"include": [], "exclude": ["lo"]}}.
    An unknown collector name or option raises ValueError naming it.
    """
    # imported here because the collector modules import the helpers above
    from edge_agent.collectors.procfs_cpu import CpuCollector
    from edge_agent.collectors.procfs_load import LoadCollector
    from edge_agent.collectors.procfs_memory import MemoryCollector
    from edge_agent.collectors.procfs_net import NetworkCollector
    from edge_agent.collectors.procfs_system import SystemCollector

    registry = (
        ("cpu", CpuCollector),
        ("memory", MemoryCollector),
        ("load", LoadCollector),
        ("network", NetworkCollector),
        ("system", SystemCollector),
    )
    options = options or {}
    names = [name for name, _ in registry]
    for name in options:
        if name not in names:
            raise ValueError("procfs: unknown collector %r (known: %s)" % (name, ", ".join(names)))
    collectors = {}
    for name, cls in registry:
        opts = options.get(name) or {}
        for key in opts:
            if key not in cls.OPTIONS:
                raise ValueError(
                    "procfs.%s: unknown option %r (known: %s)" % (name, key, ", ".join(cls.OPTIONS) or "none")
                )
        collectors[name] = cls(root, **opts)
    return collectors


def enabled_procfs(section, root="/proc"):
    """The collectors a config's `collectors` section enables, all read from /proc.

    Returns (list of collectors, {name: "procfs"}); `enabled` and `backend` are the section's own
    keys, everything else is passed to the collector as an option.
    """
    options = {}
    for name in section:
        # enabled/backend belong to the section, top_processes to the eBPF backend only
        options[name] = dict([(k, v) for k, v in section[name].items()
                              if k not in ("enabled", "backend", "top_processes")])
    built = procfs_collectors(root, options)
    chosen = [built[name] for name in section if name in built and section[name].get("enabled", True)]
    return chosen, dict([(c.name, c.source) for c in chosen])
