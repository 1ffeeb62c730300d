"""edge_agent: the device side. Its core modules run on CPython and MicroPython alike."""

__version__ = "0.1.0"
