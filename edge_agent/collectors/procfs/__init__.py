"""The /proc collectors (registry: names, options, the whole-file parsers)."""
