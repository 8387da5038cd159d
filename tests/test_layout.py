"""The layout's rules (DESIGN.md), read from the source's import graph: one installed namespace, floors
(spaces/ and storage/ at the bottom, reports/ above them, search/ on top), no import cycles, TensorFlow
never in spaces/ or reports/, one errors module per package, and Optuna's private API only where a comment
names the public API that is missing."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hpo_testkit import ROOT

PACKAGES = ("spaces", "storage", "reports", "search")
# What each package may import from the others (a floor imports only floors below it).
ALLOWED = {
    "spaces": {"spaces"},
    "storage": {"storage"},
    "reports": {"reports", "spaces", "storage"},
    "search": {"search", "spaces", "storage", "reports"},
}
PRIVATE_OPTUNA = re.compile(r"optuna(\.\w+)*\._\w+|\._storage\b|\._study_id\b|\._backend\b|oracle\._\w+|\._trial_id\b")
MISSING_API_NOTE = re.compile(r"no public (API|accessor)", re.IGNORECASE)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["cifar_hpo", *parts])


def source_files() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every cifar_hpo module ``path`` imports, at the top or inside functions (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = source_files()
    modules = set(files)
    return {name: imported_modules(path, modules) - {name} for name, path in files.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module are import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def package_of(module: str) -> str:
    return module.split(".")[1]


def test_no_import_cycles() -> None:
    # A package's __init__ re-exporting its submodules is not a cycle of behaviour; leave those edges out.
    graph = {m: {d for d in deps if not (m.endswith(package_of(m)) and d.startswith(m + "."))}
             for m, deps in import_graph().items()}
    assert strongly_connected(graph) == []


def test_no_arrow_runs_back_up() -> None:
    upward = sorted(f"{m} imports {d}" for m, deps in import_graph().items() for d in deps
                    if package_of(d) not in ALLOWED[package_of(m)])
    assert upward == []


@pytest.mark.parametrize("package", ["spaces", "reports", "storage"])
def test_no_tensorflow_below_search(package: str) -> None:
    heavy = re.compile(r"^\s*(import|from)\s+(tensorflow|keras)\b", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py") if heavy.search(p.read_text())]
    assert offenders == []


def test_one_errors_module_per_package() -> None:
    """Public exception classes live in the package's errors module (private control-flow ones may not)."""
    misplaced = []
    for name, path in source_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and path.name != "errors.py":
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if any(b.endswith(("Error", "Exception")) or b == "Exception" for b in bases):
                    misplaced.append(f"{name}.{node.name}")
    assert misplaced == []
    assert all((ROOT / package / "errors.py").is_file() for package in PACKAGES)


def test_private_optuna_api_only_with_a_note_naming_the_missing_public_one() -> None:
    undocumented = []
    for path in source_files().values():
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            code = line.split("#")[0]
            if PRIVATE_OPTUNA.search(code) and not any(MISSING_API_NOTE.search(l) for l in lines[max(0, number - 2):number + 1]):
                undocumented.append(f"{path.relative_to(ROOT)}:{number + 1}: {line.strip()}")
    assert undocumented == []


def test_only_the_namespace_is_installed(tmp_path: Path) -> None:
    """Outside the repository, the bare folder names are not importable: the distribution owns cifar_hpo only."""
    probe = "import importlib.util as u; print([n for n in ('search', 'spaces', 'storage', 'reports') if u.find_spec(n)])"
    bare = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert bare.stdout.strip() == "[]"
    namespaced = subprocess.run([sys.executable, "-c", "import cifar_hpo.search.cli, cifar_hpo.spaces, "
                                 "cifar_hpo.storage, cifar_hpo.reports"], cwd=tmp_path, capture_output=True, text=True)
    assert namespaced.returncode == 0, namespaced.stderr


def test_no_test_imported_a_bare_package_name() -> None:
    """The suite runs against the installed namespace: nothing imported `search`, `spaces`, ... through the
    repository root (pytest's importlib mode inserts no root on sys.path)."""
    assert [name for name in ("search", "spaces", "storage", "reports") if name in sys.modules] == []
