"""The layout stays what harness/__init__.py describes: no import cycle between
project modules, every import in the direction the rooms allow, and no module or
function too long to hold in one's head. Imports inside functions count too: a
lazy import hides a cycle from Python, not from a reader."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("harness", "coir_kernels", "backbones", "benches")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Functions allowed to be longer, each with the reason written beside it in the code.
LONG_ON_PURPOSE = {("coir_kernels/triton_ops/mixed.py", "_mixed_rank_count_kernel")}  # one fused loop

# room -> the rooms its modules may import (a room is a module path prefix)
ALLOWED = {
    "coir_kernels": ("coir_kernels",),
    "backbones": ("backbones", "harness.core"),
    "harness.core": ("harness.core",),
    "harness.suites": ("harness.core", "harness.suites"),
    "harness.evaluation": ("harness.core", "harness.suites", "harness.evaluation", "coir_kernels", "backbones"),
    "harness.training": ("harness.core", "harness.suites", "harness.training", "backbones"),
    "harness.mixing": ("harness.core", "harness.suites", "harness.evaluation", "harness.mixing", "coir_kernels",
                       "harness.training.losses"),
    "harness.similarity": ("harness.core", "harness.suites", "harness.evaluation", "harness.mixing",
                           "harness.similarity", "coir_kernels", "harness.training.losses"),
    "harness.rerank": ("harness.core", "harness.suites", "harness.evaluation", "harness.mixing", "harness.similarity",
                       "harness.training", "harness.rerank", "coir_kernels", "backbones"),
    "harness.reports": ("harness.core", "harness.evaluation", "harness.reports", "harness.config"),
}


def project_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: Path, module: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `module` imports, anywhere in its file."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def room_of(module: str) -> str | None:
    return max((room for room in ALLOWED if module == room or module.startswith(room + ".")), key=len, default=None)


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def test_no_import_cycles():
    edges = graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_go_the_allowed_way():
    wrong = []
    for module, targets in graph().items():
        room = room_of(module)
        if room is None:
            continue  # entry points (harness.run, .pipeline, .config, ...) and benches may import anything
        for target in targets:
            if not any(target == allowed or target.startswith(allowed + ".") for allowed in ALLOWED[room]):
                wrong.append(f"{module} imports {target} ({room} may import {', '.join(ALLOWED[room])})")
    assert not wrong, "\n".join(sorted(wrong))


def test_modules_and_functions_stay_short():
    too_long = []
    for path in sorted(p for d in (*PACKAGES, "tests") for p in (REPO / d).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {text.count(chr(10))} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in LONG_ON_PURPOSE:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {length} lines (at most {MAX_FUNCTION_LINES})")
    assert not too_long, "\n".join(too_long)


def test_the_checker_sees_a_cycle_and_a_wrong_way_import(tmp_path):
    """The checks themselves: a made-up pair of modules importing each other, and a
    kernel module importing the harness, are both found."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import b\nfrom harness.core import errors\n")
    b.write_text("def f():\n    import a\n")
    modules = {"a": a, "b": b, "harness.core.errors": REPO / "harness/core/errors.py"}
    assert imports_of(a, "a", modules) == {"b", "harness.core.errors"}
    assert imports_of(b, "b", modules) == {"a"}
    assert room_of("coir_kernels.reference") == "coir_kernels"
    assert "harness.core" not in ALLOWED["coir_kernels"]


def test_no_other_installed_distribution_claims_a_package_name():
    """Our top-level names are ours alone: transformers 5.25 made Hugging Face's
    `kernels` distribution a dependency, and a project package of that name shadowed
    it, so importing any transformers model failed (hence `coir_kernels`)."""
    from importlib.metadata import packages_distributions

    claimed = packages_distributions()
    clashes = {name: others for name in PACKAGES
               if (others := sorted(set(claimed.get(name, ())) - {"coir-bench", "coir_bench"}))}
    assert not clashes, f"installed distributions that also provide these top-level packages: {clashes}"
