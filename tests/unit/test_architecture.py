"""The layout's rules, checked on the source's import graph (read with `ast`: nothing is imported).

- no import cycle among the project's modules (edge_wire, edge_agent, gateway, firmware, fleetsim);
- the gateway never imports the agent;
- edge_wire, the protocol, imports neither the agent nor the gateway;
- a device module (firmware/manifest.py's list) imports only device modules of the project.

Every import counts: at the top of a module, inside a function (a lazy import is still a dependency),
`from package import module`, relative imports, and importlib.import_module / __import__ with a
literal name. Each check is shown to fail on a small synthetic tree.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("edge_wire", "edge_agent", "gateway", "firmware", "fleetsim")


def module_files(root, packages=PACKAGES):
    """{module name: path} for every .py file under the packages (a package is its __init__)."""
    found = {}
    for package in packages:
        top = os.path.join(root, package)
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and os.path.isfile(os.path.join(folder, d, "__init__.py")))
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join(parts)] = os.path.join(folder, name)
    return found


def _literal_import(node):
    """The module name of `importlib.import_module("x")` / `import_module("x")` / `__import__("x")`."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name in ("import_module", "__import__") and node.args:
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return None


def imports_of(module, path, modules):
    """The project modules `module` (its source at `path`) imports, anywhere in its code."""
    is_package = os.path.basename(path) == "__init__.py"
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                if not is_package:
                    parts = parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                # `from package import module` depends on the module; `from module import name` on the module
                names.append(base + "." + alias.name if base + "." + alias.name in modules else base)
        elif isinstance(node, ast.Call):
            literal = _literal_import(node)
            if literal:
                names.append(literal)
    found = set()
    for name in names:
        while name and name not in modules:  # `import a.b.c` of a name inside a module: its module
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def import_graph(root, packages=PACKAGES):
    modules = module_files(root, packages)
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(start):
        # iterative: a deep import chain must not hit the recursion limit
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def forbidden(graph, source, targets):
    """["a -> b"] for every import from a module of package `source` into one of the `targets` packages."""
    def package(name):
        return name.split(".")[0]

    return sorted("%s -> %s" % (module, imported) for module in graph if package(module) == source
                  for imported in graph[module] if package(imported) in targets)


def device_modules(root):
    """firmware/manifest.py's DEVICE_MODULES names, read from its source."""
    path = os.path.join(root, "firmware", "manifest.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEVICE_MODULES" for t in node.targets):
            return [entry.elts[0].value for entry in node.value.elts]
    raise AssertionError("firmware/manifest.py has no DEVICE_MODULES list")


def off_device(graph, device):
    """["a -> b"] for every import from a device module into a project module that is not one."""
    device = set(device)
    return sorted("%s -> %s" % (module, imported) for module in sorted(device) if module in graph
                  for imported in graph[module] if imported not in device)


def check(root, packages=PACKAGES):
    """Every broken rule of the tree at `root`, one line each (empty: the layout holds)."""
    graph = import_graph(root, packages)
    problems = ["import cycle: " + " <-> ".join(c) for c in cycles(graph)]
    problems += ["the gateway imports the agent: " + p for p in forbidden(graph, "gateway", ("edge_agent",))]
    problems += ["the protocol imports a side: " + p for p in forbidden(graph, "edge_wire", ("edge_agent", "gateway"))]
    if os.path.isfile(os.path.join(root, "firmware", "manifest.py")):
        device = device_modules(root)
        problems += ["a device module the project does not have: " + m for m in device if m not in graph]
        problems += ["a device module imports a non-device module: " + p for p in off_device(graph, device)]
    return problems


# ---------------------------------------------------------------------------- the project


def test_the_project_layout_holds():
    problems = check(ROOT)
    assert not problems, "\n".join(problems)


def test_the_graph_sees_the_project():
    graph = import_graph(ROOT)
    # so that an empty or unresolved graph cannot pass the test above
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    assert sum(len(imported) for imported in graph.values()) > 2 * len(graph)
    assert len(device_modules(ROOT)) > 20


# ---------------------------------------------------------------------------- each check can fail


def write_tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in ("edge_wire", "edge_agent", "gateway", "firmware", "fleetsim"):
        init = root / folder / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        if not init.exists():
            init.write_text("")


MANIFEST = 'DEVICE_MODULES = [("edge_agent", 1), ("edge_agent.core", 1), ("edge_wire", 1), ("edge_wire.pack", 1)]\n'


def test_a_clean_synthetic_tree_passes(tmp_path):
    write_tree(tmp_path, {
        "edge_wire/pack.py": "import struct\n",
        "edge_agent/core.py": "from edge_wire import pack\nfrom . import helpers_missing_is_not_ours\n",
        "edge_agent/cli.py": "import argparse\nfrom edge_agent.core import x\n",
        "gateway/app.py": "from edge_wire.pack import y\n",
        "firmware/manifest.py": MANIFEST,
    })
    assert check(str(tmp_path)) == []


def test_a_cycle_through_a_function_level_import_fails(tmp_path):
    write_tree(tmp_path, {
        "edge_agent/a.py": "from edge_agent import b\n",
        "edge_agent/b.py": "def later():\n    from edge_agent.a import thing\n",
    })
    assert check(str(tmp_path)) == ["import cycle: edge_agent.a <-> edge_agent.b"]


def test_a_cycle_through_importlib_or_a_relative_import_fails(tmp_path):
    write_tree(tmp_path, {
        "gateway/cli.py": "import importlib\n\ndef run():\n    importlib.import_module('gateway.tune')\n",
        "gateway/tune.py": "from .cli import common\n",
        "fleetsim/x.py": "__import__('fleetsim.y')\n",
        "fleetsim/y.py": "from . import x\n",
    })
    assert check(str(tmp_path)) == ["import cycle: fleetsim.x <-> fleetsim.y", "import cycle: gateway.cli <-> gateway.tune"]


def test_the_gateway_importing_the_agent_fails(tmp_path):
    write_tree(tmp_path, {"edge_agent/model.py": "", "gateway/app.py": "def f():\n    import edge_agent.model\n"})
    assert check(str(tmp_path)) == ["the gateway imports the agent: gateway.app -> edge_agent.model"]


def test_the_protocol_importing_a_side_fails(tmp_path):
    write_tree(tmp_path, {
        "edge_agent/model.py": "", "gateway/records.py": "",
        "edge_wire/decode.py": "from edge_agent.model import Series\nfrom gateway import records\n",
    })
    assert check(str(tmp_path)) == ["the protocol imports a side: edge_wire.decode -> edge_agent.model",
                                    "the protocol imports a side: edge_wire.decode -> gateway.records"]


def test_a_device_module_importing_a_host_module_fails(tmp_path):
    write_tree(tmp_path, {
        "edge_agent/core.py": "def start():\n    from edge_agent.cli import main\n",
        "edge_agent/cli.py": "",
        "edge_wire/pack.py": "",
        "firmware/manifest.py": MANIFEST.replace('("edge_wire.pack", 1)]', '("edge_wire.pack", 1), ("edge_agent.gone", 2)]'),
    })
    assert check(str(tmp_path)) == ["a device module the project does not have: edge_agent.gone",
                                    "a device module imports a non-device module: edge_agent.core -> edge_agent.cli"]
