"""The package's import graph follows its layers, with no upward import and no cycle.

Layers, bottom to top (the README's layout section is the map):

0. bottom: array backends, seeds and row hashing, scoring, memory, metrics
1. stages: stage adapters and their cost models
2. exit heads
3. router
4. threshold tables
5. fit passes
6. estimators (and the routing base they share)
7. datasets, models, command line, the package's entry point

Every import is read from the source (function-local imports included), so a
lazy import cannot hide an upward dependency.
"""

import ast
from pathlib import Path

import pytest

import sklearn_e2cm

ROOT = Path(sklearn_e2cm.__file__).parent
PKG = "sklearn_e2cm"

#: Module name prefix -> layer (the longest matching prefix wins).
LAYERS = {
    "_backend": 0,
    "_hashing": 0,
    "_scoring": 0,
    "_memory": 0,
    "metrics": 0,
    "stages": 1,
    "_flops": 1,
    "_torch_flops": 1,
    "exits": 2,
    "_routing": 3,
    "_thresholds": 4,
    "_fitting": 5,
    "_exit_estimator": 6,
    "_search_folds": 6,
    "_incremental": 6,
    "early_exit": 6,
    "internal": 6,
    "cluster": 6,
    "plotting": 6,
    "search": 6,
    "datasets": 7,
    "persistence": 7,
    "models": 7,
    "__main__": 7,
    "_cli": 7,
    "": 7,  # the package's __init__
}


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PKG, *parts])


def _is_package(path):
    return path.name == "__init__.py"


def _modules():
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(module, path, node, known):
    """Package modules imported by one import node."""
    out = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PKG or alias.name.startswith(PKG + "."):
                out.append(alias.name)
        return out
    if node.level:
        base = module.split(".")
        # a package's __init__ is its own base; a module's base is its parent package
        base = base if _is_package(path) else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
        if not (target == PKG or target.startswith(PKG + ".")):
            return out
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in known else target)
    return out


def _graph():
    known = _modules()
    graph = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(d for d in _resolve(module, path, node, known) if d != module)
        graph[module] = deps
    return graph


def _layer(module):
    rel = module[len(PKG) + 1:] if module != PKG else ""
    best = None
    for prefix, layer in LAYERS.items():
        if rel == prefix or (prefix and rel.startswith(prefix + ".")):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    if best is None:
        if rel == "":
            return LAYERS[""]
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the README).")
    return best[1]


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_no_upward_import():
    upward = []
    for module, deps in _graph().items():
        for dep in deps:
            if _layer(dep) > _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) imports {dep} "
                              f"(layer {_layer(dep)})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "active"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "active":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["_backend", "_hashing", "_scoring", "_memory", "metrics"])
def test_bottom_layer_imports_nothing_of_the_package(module):
    assert not _graph()[f"{PKG}.{module}"]


def test_the_checker_sees_a_function_local_upward_import(tmp_path):
    code = "def f():\n    from .search import FlopBudgetSearchCV\n"
    node = next(n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.ImportFrom))
    deps = _resolve(f"{PKG}._routing", ROOT / "_routing.py", node, _modules())
    assert deps == [f"{PKG}.search"]
    assert _layer(deps[0]) > _layer(f"{PKG}._routing")
