"""The package's layout: wings with one face each, imports running one way, small modules.

The wings, lowest first (a wing may import only wings below it, and only through their
face, the ``__init__.py``):

    core (gateway/*.py)  <-  mail, emulator  <-  classify, rules, deliver  <-  pipeline
        <-  smtp, milter  <-  ops  <-  cli  <-  gateway.testing, gateway.__main__

The test reads the source (``ast``), so it sees lazy imports inside functions and
``TYPE_CHECKING`` imports too.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"

RANK = {
    "core": 0,
    "mail": 1,
    "emulator": 1,
    "classify": 2,
    "rules": 2,
    "deliver": 2,
    "pipeline": 3,
    "smtp": 4,
    "milter": 4,
    "ops": 5,
    "cli": 6,
    "testing": 7,
    "__main__": 7,
}
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _parse(path: Path) -> ast.Module:
    """``ast.parse``, tried again on CPython 3.11's SystemError "AST constructor recursion
    depth mismatch": 3.11 keeps that depth in interpreter-wide state, so another thread
    building an AST at the same moment trips it (CPython gh-106905; 3.11's traceback
    formatting parses the failing line, and the test servers run in threads). The source
    is the same each time, so a retry changes no verdict."""
    for _ in range(4):
        with contextlib.suppress(SystemError):
            return ast.parse(path.read_text(), str(path))
    return ast.parse(path.read_text(), str(path))


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """(absolute module imported, line) for every import in the file, lazy ones included;
    ``from PKG import x`` counts as importing ``PKG.x`` when that is a module."""
    modules = _modules()
    package = name if _is_package(path) else name.rpartition(".")[0]
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gateway":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "gateway":
                continue
            submodules = [
                f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules
            ]
            yield from ((s, node.lineno) for s in submodules)
            if len(submodules) < len(node.names):
                yield target, node.lineno


def wing(module: str) -> str:
    """The wing a module belongs to: a subpackage's name, or ``core`` for the top level."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    if (PACKAGE / parts[1]).is_dir():
        return parts[1]
    if parts[1] in ("testing", "__main__"):
        return parts[1]
    return "core"


def _face(module: str) -> str:
    """The module others must import: the wing's ``__init__`` (core: each public module)."""
    w = wing(module)
    if w == "core" or w in ("testing", "__main__"):
        return module
    return f"gateway.{w}"


def test_every_module_belongs_to_a_known_wing() -> None:
    unknown = {wing(m) for m in _modules()} - set(RANK)
    assert not unknown, f"wings without a place in the order: {sorted(unknown)}"


def test_imports_run_down_the_wing_order_through_faces() -> None:
    problems = []
    for name, path in _modules().items():
        here = wing(name)
        for target, line in _imports(name, path):
            there = wing(target)
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if there == here:
                continue
            if RANK[there] >= RANK[here]:
                problems.append(f"{where}: {here} imports {target} ({there} is not below it)")
            elif target != _face(target):
                problems.append(f"{where}: imports {target}; use the face {_face(target)}")
            elif there == "core" and target.rpartition(".")[2].startswith("_"):
                problems.append(f"{where}: imports the core's private {target}")
    assert not problems, "\n".join(problems)


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {
        name: {t for t, _ in _imports(name, path) if t in modules} for name, path in modules.items()
    }
    # A package's face importing its own private modules is how a face works; what must
    # not happen is a module importing back into the face of its own wing.
    for name in graph:
        graph[name] -= {name}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


def _assigned_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                assert node.value is not None
                return list(ast.literal_eval(node.value))
    return None


def _defined(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.parametrize("wing_name", sorted(w for w in RANK if (PACKAGE / w).is_dir()))
def test_each_wing_has_a_face_with_all(wing_name: str) -> None:
    tree = _parse(PACKAGE / wing_name / "__init__.py")
    assert ast.get_docstring(tree), f"gateway/{wing_name}/__init__.py says what the wing does"
    exported = _assigned_all(tree)
    assert exported is not None, f"gateway/{wing_name}/__init__.py has no __all__"


def _from_private_core(tree: ast.Module) -> set[str]:
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway._")
        for alias in node.names
    }


def test_names_have_one_import_path() -> None:
    """Only a face re-exports: a wing's ``__init__``, or a core module for the core's
    private module behind it (``config`` for ``_config_sections``). Any other module's
    ``__all__`` lists what it defines."""
    problems = []
    for name, path in _modules().items():
        if _is_package(path):
            continue
        tree = _parse(path)
        exported = _assigned_all(tree) or []
        allowed = _defined(tree) | (_from_private_core(tree) if wing(name) == "core" else set())
        foreign = sorted(set(exported) - allowed)
        if foreign:
            problems.append(f"{name} re-exports {foreign}")
    assert not problems, "\n".join(problems)


def test_modules_stay_under_the_size_limit() -> None:
    big = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"
