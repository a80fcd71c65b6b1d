"""The package layout as a checked rule: one-way imports, no cycles, no domain in the core."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """Every module that ``path`` imports, at the top or inside a function, resolved to absolute names
    (``from package import module`` counts as the module, ``from package import name`` as the package)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    # imports under `if TYPE_CHECKING:` are for type checkers only and never run
    type_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
        for child in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found


def _graph(top: str) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / top).rglob("*.py")}
    # `zoo` itself only re-exports the Python API lazily (zoo.run, zoo.load_run) beside __version__.
    modules.pop(top, None)
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, name, set(modules)):
            # `from zoo.peft import engine` names a module; `from zoo.peft import apply` names its package
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _packages_of(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between zoo's subpackages (zoo.peft, zoo.experiment, ...); a package's __init__ counts as the package."""

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for source, targets in graph.items():
        edges.setdefault(package(source), set()).update(package(t) for t in targets if package(t) != package(source))
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_core_never_imports_a_domain():
    offenders = {
        m: sorted(t for t in targets if t.split(".")[0] == "zoo_domains") for m, targets in _graph("zoo").items()
    }
    assert not {m: t for m, t in offenders.items() if t}


def test_no_import_cycle_between_zoo_packages():
    assert _cycle(_packages_of(_graph("zoo"))) is None


def test_no_import_cycle_between_modules():
    assert _cycle(_graph("zoo")) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["zoo.experiment.config", "zoo.experiment.recipes", "zoo.errors", "zoo.cli.main"])
def test_light_modules_do_not_import_torch(module):
    """The config layer, the errors and the CLI's start-up stay light: checking a recipe needs no torch."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
        == "False"
    )


def _readme_layout() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_layout_names_every_package_and_module():
    """The README's layout is the map a newcomer reads first: each package of zoo and zoo_domains, and each
    top-level module of zoo, is named in it (a package added without a line there fails here)."""
    layout = _readme_layout()
    named = set(re.findall(r"^(zoo(?:_domains)?/[\w./]*)", layout, flags=re.MULTILINE))
    packages = {f"zoo/{p.parent.name}/" for p in (ROOT / "zoo").glob("*/__init__.py")}
    modules = {f"zoo/{p.name}" for p in (ROOT / "zoo").glob("*.py") if p.name != "__init__.py"}
    expected = packages | modules | {"zoo/recipes/", "zoo_domains/"}
    assert expected - named == set(), f"add these to the Layout section of README.md: {sorted(expected - named)}"
    assert named - expected == set(), f"the Layout section names what no longer exists: {sorted(named - expected)}"
    domains = {p.parent.name for p in (ROOT / "zoo_domains").glob("*/__init__.py")}
    described = layout.split("zoo_domains/", 1)[1].split("\n")[0]
    assert all(domain in described for domain in domains), (
        f"name every domain package on the zoo_domains line: {domains}"
    )
