"""The package's layering, read from the source: api -> stages (meta-learners) -> engine -> the
mechanics the engine runs (tasks, data, augmentation, optimizers, schedules, regularizers).

Module by module, so a meta-learner and a mechanism may share a package (``optimize`` holds both
the LR range test and the schedules): what matters is that nothing below the engine imports the
engine or a stage, that the engine imports no stage, and that no import hides inside a function
to dodge a cycle (optional dependencies such as timm are the exception: they are not ours).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "visiondojo"

STAGES = {
    "visiondojo.api", "visiondojo.cli", "visiondojo.choose", "visiondojo.prepare",
    "visiondojo.optimize.length", "visiondojo.optimize.lr_finder", "visiondojo.optimize.memory",
    "visiondojo.optimize.noise_scale", "visiondojo.optimize.probe",
    "visiondojo.regularize.choose", "visiondojo.regularize.search", "visiondojo.regularize.distance",
    "visiondojo.regularize.groups", "visiondojo.regularize.extrapolate",
}
MECHANICS_PACKAGES = ("visiondojo.tasks", "visiondojo.data", "visiondojo.augment")
MECHANICS = {
    "visiondojo.optimize.optimizers", "visiondojo.optimize.schedules", "visiondojo.optimize.batchnorm",
    "visiondojo.optimize.gradient_noise",
    "visiondojo.regularize.batch", "visiondojo.regularize.class_balance", "visiondojo.regularize.dropout",
    "visiondojo.regularize.weight_decay",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """(visiondojo modules imported at module level, [(line, module) imported inside functions])."""
    module = _module_name(path)
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    nested: list[tuple[int, str]] = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [_resolve(module, path.name == "__init__.py", node)]
            names += [f"{names[0]}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        ours = [n for n in names if n == "visiondojo" or n.startswith("visiondojo.")]
        if not ours:
            continue
        if id(node) in inside:
            nested.append((node.lineno, ours[0]))
        else:
            top.update(ours)
    return top, nested


MODULES = sorted(PACKAGE.rglob("*.py"))


def _is(name: str, group: set[str]) -> bool:
    return any(name == g or name.startswith(g + ".") for g in group)


def _below_engine(name: str) -> bool:
    return name in MECHANICS or name.startswith(MECHANICS_PACKAGES)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_follow_the_layers(path: Path) -> None:
    name = _module_name(path)
    top, nested = _imports(path)
    assert not nested, f"{name}: imports inside functions {nested}; import at module level"
    if name.startswith("visiondojo.engine"):
        stages = sorted(m for m in top if _is(m, STAGES) or m.startswith("visiondojo.ssl"))
        assert not stages, f"{name} (engine) imports stages {stages}"
    if _below_engine(name):
        upward = sorted(m for m in top if m.startswith("visiondojo.engine") or _is(m, STAGES)
                        or m.startswith("visiondojo.ssl"))
        assert not upward, f"{name} (below the engine) imports {upward}"


def test_the_layer_lists_name_real_modules() -> None:
    names = {_module_name(p) for p in MODULES}
    assert STAGES <= names and MECHANICS <= names
