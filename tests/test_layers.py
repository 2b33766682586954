"""The house rules of the package, read from its imports: layers import downward only, no cycle,
no package import inside a function, no module over 400 lines, every module has a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "score_sde_jax"

# L0 plumbing, L1 maths, L2 infrastructure, L3 modes, L4 entry points (ARCHITECTURE.md).
LAYERS = {
    0: ("prng", "sharding", "files", "cli", "programs"),
    1: ("sde_lib", "analytic", "likelihood", "controllable_generation", "classifier_lib",
        "ode_solver", "losses", "sampling", "models", "guidance"),
    2: ("datasets", "data", "train_lib", "eval_lib", "checkpoints", "logging_utils", "preemption",
        "memory_estimate"),
    3: ("run_lib", "evaluation", "inference"),
    4: ("convert", "demos"),
}
HOME = {home: level for level, homes in LAYERS.items() for home in homes}
# The one import across L3 homes the house allows: run_lib.evaluate, the official alias.
ALLOWED_ACROSS_L3 = {("run_lib", "evaluation")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__")] = path
    return out


def _imports(path: Path) -> tuple[set[str], list[int]]:
    """Package modules imported by the file (dotted, without the package prefix) and the lines
    of package imports inside functions."""
    tree = ast.parse(path.read_text())
    found, inner = set(), []
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    nested = {id(n) for f in functions for n in ast.walk(f)}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "score_sde_jax":
                names = [a.name for a in node.names]
            elif node.module.startswith("score_sde_jax."):
                names = [node.module[len("score_sde_jax."):]]
        elif isinstance(node, ast.Import):
            names = [a.name[len("score_sde_jax."):] for a in node.names
                     if a.name.startswith("score_sde_jax.")]
        if names:
            found.update(names)
            if id(node) in nested:
                inner.append(node.lineno)
    return found, inner


def _home(module: str) -> str:
    return module.split(".")[0]


MODULES = _modules()


def test_every_module_has_a_layer():
    assert sorted({_home(m) for m in MODULES if m} - set(HOME)) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_imports_go_downward(module):
    level = HOME[_home(module)]
    imported, inner = _imports(MODULES[module])
    assert inner == [], f"{module}: package imports inside functions at lines {inner}"
    for target in imported:
        home = _home(target)
        if home == _home(module):
            continue
        assert HOME[home] != 4, f"{module} imports the entry point {target}"
        if level == 0:
            pytest.fail(f"{module} is L0 plumbing and imports {target}")
        assert HOME[home] <= level, f"{module} (L{level}) imports {target} (L{HOME[home]})"
        if level == 3 and HOME[home] == 3:
            assert (_home(module), home) in ALLOWED_ACROSS_L3, f"L3 {module} imports L3 {target}"


def test_no_module_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_no_import_cycle():
    graph = {m: {t for t in _imports(p)[0] if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ importing its own children is not a cycle of concern
    graph = {m: {t for t in ts if not (m and t.startswith(m + "."))} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, m, t]))
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
