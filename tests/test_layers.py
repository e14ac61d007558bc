"""pipeline/'s layers: imports run one way, top to bottom, and there are at most five floors.

    commands (and cli.py)  ->  execution / outputs / release  ->  tables  ->  folder  ->  settings

Every import counts, including the lazy ones inside functions and those under TYPE_CHECKING. A module may
import its own subpackage and any lower layer, never a higher one; the three peers of the middle layer import
one another only downwards in the order execution -> outputs -> release (release uses outputs, outputs use
execution), so they form no cycle; and no two modules import each other, directly or round about.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipeline"

# Bottom first. One entry per floor; the middle floor's peers in the order they may use one another.
LAYERS = [["settings", "weights"], ["folder"], ["tables"], ["execution", "outputs", "release"], ["commands", "cli"]]
RANK = {group: (floor, peer) for floor, groups in enumerate(LAYERS) for peer, group in enumerate(groups)}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group(module: str) -> str:
    """`pipeline.tables.read` -> `tables`; `pipeline.cli` -> `cli`."""
    return module.split(".")[1]


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PIPELINE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The pipeline modules `path` imports anywhere in it (a name imported from a package that is itself a
    module counts as that module)."""
    this = module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{this}: relative import (pipeline's imports are absolute)"
            base = node.module or ""
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {name for name in found if name.startswith("pipeline.") and name != this}


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imports(path, known) for name, path in modules().items()}


def test_every_module_sits_on_a_floor_and_there_are_at_most_five():
    assert len(LAYERS) <= 5
    for name in modules():
        if name != "pipeline":
            assert group(name) in RANK, f"{name} is in no layer of tests/test_layers.py"


def test_no_module_imports_a_higher_floor_or_a_later_peer():
    wrong = [
        f"{name} -> {target}"
        for name, targets in graph().items()
        if name != "pipeline"
        for target in targets
        if RANK[group(target)] > RANK[group(name)]
    ]
    assert wrong == []


def test_the_subpackages_hold_only_a_docstring():
    """No re-exports that would hide the layers: an `__init__.py` is its docstring."""
    for init in PIPELINE.glob("*/__init__.py"):
        body = ast.parse(init.read_text(encoding="utf-8")).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), init


def test_no_import_cycle_between_modules():
    edges = graph()
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges.get(name, ())):
            if state.get(target) == 1:
                raise AssertionError(" -> ".join([*path, name, target]))
            if target not in state:
                visit(target, [*path, name])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [])


# Argument parsing: a declaration per flag, long by nature.
PARSERS = {"pipeline.commands.flags.add_job_flags", "pipeline.cli.make_parser"}


def test_no_module_over_400_lines_and_no_function_over_80():
    long = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 400:
            long.append(f"{name}: {len(text.splitlines())} lines")
        functions = [n for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in functions:
            size = node.end_lineno - node.lineno + 1
            if size > 80 and f"{name}.{node.name}" not in PARSERS:
                long.append(f"{name}.{node.name}: {size} lines")
    assert long == []
