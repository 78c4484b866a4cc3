"""The project's modules import each other without a circle: each concern has one home (read from the source, so
imports inside functions count too)."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("data", "models", "utils")
LAYERS = ("models", "utils", "data")  # each may import its own layer and those before it, never one after it


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


def test_imports_flow_one_way():
    """models <- utils <- data <- flags.py and the scripts: no package imports the flags, a script, a study or a
    package of a later layer (utils once loaded the data from below it)."""
    modules = project_modules()
    top = {name[:-3]: os.path.join(ROOT, name) for name in os.listdir(ROOT) if name.endswith(".py")}
    studies = {f"studies.{n[:-3]}": os.path.join(ROOT, "studies", n) for n in os.listdir(os.path.join(ROOT, "studies"))
               if n.endswith(".py")}
    assert "flags" in top and "blind_knowledge_dist_training" in top
    everything = {**modules, **top, **studies, "studies": ""}
    wrong = []
    for module, path in modules.items():
        layer = LAYERS.index(module.split(".")[0])
        for imported in imports_of(module, path, everything):
            package = imported.split(".")[0]
            if package not in LAYERS or LAYERS.index(package) > layer:
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.slow
def test_the_suite_starts_beside_a_stray_tests_package(tmp_path):
    """Some PyPI packages install a top-level tests/__init__.py (mvlearn 0.5.0 does): the suite, a package of its own,
    still collects, and its modules still import tests.conftest from this folder."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "tests/test_findings.py", "tests/test_data.py"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    summary = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and "collected" in summary and "error" not in summary, r.stdout[-2000:] + r.stderr[-2000:]
