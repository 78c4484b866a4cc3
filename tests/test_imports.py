"""The project's modules import each other without a circle: each concern has one home (read from the source, so
imports inside functions count too)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("data", "models", "utils")


def project_modules():
    """{module name: path} of the packages' modules."""
    modules = {}
    for package in PACKAGES:
        for name in os.listdir(os.path.join(ROOT, package)):
            if name.endswith(".py"):
                modules[package if name == "__init__.py" else f"{package}.{name[:-3]}"] = os.path.join(ROOT, package, name)
    return modules


def imports_of(module, path, modules):
    """The project modules `module` imports, anywhere in its source."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(modules)
            found.update(submodules)  # `from package import submodule` needs the submodule, not the package's names
            if len(submodules) < len(node.names):
                found.add(base)
    return {name for name in found if name in modules and name != module}


def find_cycle(graph):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state:
                cycle = visit(child, stack + [child])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_no_module_imports_itself_through_others():
    modules = project_modules()
    graph = {m: imports_of(m, path, modules) for m, path in modules.items()}
    assert graph["utils.engine"] and graph["data.arrays"], "the import graph was not read"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
