"""The import graph of m3ret, flows and serving: imports run one way, downward through the layers, with no cycle.

Layers, lowest first: config <- data <- models <- train / index <- eval / monitoring / engines <- stages <- cli; flows
and serving sit on top and m3ret never imports them. Within a layer a package imports only itself (train and index do
not know each other, nor do eval, monitoring and engines). Every import counts, also those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("m3ret", "flows", "serving")
RANK = {
    "m3ret.config": 0,
    "m3ret.data": 1,
    "m3ret.models": 2,
    "m3ret.train": 3,
    "m3ret.index": 3,
    "m3ret.eval": 4,
    "m3ret.monitoring": 4,
    "m3ret.engines": 4,  # where stages run their per-item work (local processes or Ray); uses data and models
    "m3ret.stages": 5,
    "m3ret.cli": 6,
    "flows": 7,
    "serving": 7,
}
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports (absolute or relative; `from a import b` counts b when b is a module)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {t for t in targets if t in known}
    return found - {name}


def _part(module: str) -> str:
    return next(key for key in sorted(RANK, key=len, reverse=True) if module == key or module.startswith(key + "."))


GRAPH = {name: _imports(path, name, set(_modules())) for name, path in _modules().items()}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m not in PACKAGES and m != "m3ret"))
def test_imports_run_downward(module: str) -> None:
    mine = _part(module)
    upward = sorted(
        target
        for target in GRAPH[module]
        if target != "m3ret"
        and (RANK[_part(target)] > RANK[mine] or (RANK[_part(target)] == RANK[mine] and _part(target) != mine))
    )
    assert not upward, f"{module} ({mine}) imports {upward}: imports must run downward ({RANK})"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target] if target in path else [module, target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_graph_sees_the_layers() -> None:
    """Guards the test itself: a known downward import is found, and every module belongs to a layer."""
    assert "m3ret.config" in GRAPH["m3ret.data.phi"]
    assert "m3ret.stages.embed" in GRAPH["m3ret.stages.refresh"]
    assert {_part(m) for m in GRAPH if m not in ("m3ret",)} <= set(RANK) | set(PACKAGES)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_modules_stay_small(module: str) -> None:
    lines = len(_modules()[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it by concept"
