"""edge_agent: the device side. Its core modules run on CPython and MicroPython alike."""

import sys

__version__ = "0.1.0"


def unload(*names):
    """Forget modules imported for a while so that MicroPython can collect their code.

    On the MicroPython unix port a module's bytecode lives in the heap; rarely run code (start-up,
    connecting, commands, births) is imported when needed and unloaded after. Its qstrs stay. A
    package left holding only modules goes too (its modules stay loaded where they are in use). On
    CPython modules stay loaded: memory is not that short and imports are slower there.
    """
    if sys.implementation.name != "micropython":
        return
    for name in names:
        sys.modules.pop(name, None)
        parent, _, leaf = name.rpartition(".")
        module = sys.modules.get(parent)
        if module is not None:
            # through the dict: delattr of what is not there raises, and an exception allocates, when
            # this runs with the heap at its fullest (after a command)
            module.__dict__.pop(leaf, None)
            if "." in parent and hollow(module):
                # a package that only groups modules (edge_agent.store, .device, .collectors.procfs):
                # its module object is all it costs, and an import makes it again when it is needed
                unload(parent)


def hollow(package):
    """True when a package holds nothing but modules and dunders: nothing of it is in use."""
    for key in package.__dict__:
        if key[0] != "_" and type(package.__dict__[key]) is not type(sys):
            return False
    return True
