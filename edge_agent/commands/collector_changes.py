"""The set_collectors command: validate a change and rebuild the collectors (the handler persists it).

Apart from edge_agent.commands.handler so that a small device loads it only for this one command
(CommandHandler.handle imports it). MicroPython-compatible.
"""

from edge_agent.collectors import BACKENDS, COLLECTORS


def set_collectors(agent, changes):
    """A set_collectors command: {name: {"enabled": bool, "backend": str}} -> the problems, empty when applied.

    The collectors are rebuilt through the agent's factory; the handler saves an applied change with the
    overrides (edge_agent.commands.handler.save_overrides).
    """
    if not isinstance(changes, dict) or not changes:
        return ["args must map collector names to {enabled, backend}"]
    errors = []
    for name in changes:
        change = changes[name]
        if name not in COLLECTORS:
            errors.append("%s: unknown collector (known: %s)" % (name, ", ".join(COLLECTORS)))
        elif not isinstance(change, dict):
            errors.append("%s: must be an object" % name)
        else:
            for key in change:
                value = change[key]
                if key == "enabled" and not isinstance(value, bool):
                    errors.append("%s.enabled: must be true or false" % name)
                elif key == "backend" and value not in BACKENDS:
                    errors.append("%s.backend: must be one of %s" % (name, ", ".join(BACKENDS)))
                elif key not in ("enabled", "backend"):
                    errors.append("%s.%s: cannot be changed remotely" % (name, key))
    if not errors and agent.collector_factory is None:
        errors = ["collectors cannot be changed on this platform"]
    if errors:
        return errors
    section = {}
    for name in agent.config["collectors"]:
        section[name] = dict(agent.config["collectors"][name])
        section[name].update(changes.get(name, {}))
    try:
        collectors, effective = agent.collector_factory(section)
    except (OSError, ValueError) as exc:
        return ["collectors: %s" % exc]
    for old in agent.collectors.values():
        try:
            old.close()
        except OSError:
            pass
    agent.collectors = dict([(c.name, c) for c in collectors])
    agent.event_sources = [c for c in collectors if hasattr(c, "poll_events")]
    agent.config["collectors"] = section
    agent.info["collectors"] = effective
    return []
