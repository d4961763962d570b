"""The package's layering (docs/architecture.md): doors open downward only, no import
circles, and ``core`` / ``runtime`` stay torch-free.

Every module under src/fetalplanes is parsed with ``ast`` (nothing is imported), collecting its
imports at module level and inside functions. Imports under ``if TYPE_CHECKING:`` are for type
checkers only and are ignored.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fetalplanes"
ROOT = "fetalplanes"
ANY = "*"

# Which top-level parts of fetalplanes each part may import: (at module level, additionally
# inside functions only). The root package (``fetalplanes.__version__``) is open to everyone.
# ``workflow`` is the train-then-calibrate pipeline shared by cli, demo and reproduce.
ALLOWED: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "core": (frozenset(), frozenset()),
    "runtime": (frozenset({"core"}), frozenset({"models"})),
    "data": (frozenset({"core"}), frozenset()),
    # models.torch_backend builds on runtime.predictor; runtime names it only as a string (loader).
    "models": (frozenset({"runtime", "core"}), frozenset()),
    "training": (frozenset({"models", "data", "runtime", "core"}), frozenset()),  # runtime: the one core count
    "evaluation": (frozenset({"runtime", "data", "core"}), frozenset({"models"})),
    "explain": (frozenset({"models", "runtime", "data", "core"}), frozenset()),
    "deploy": (frozenset({"models", "runtime", "data", "core"}), frozenset()),
    "serve": (frozenset({"runtime", "core"}), frozenset()),
    "node": (frozenset({"runtime", "core"}), frozenset()),
    "workflow": (frozenset({"training", "evaluation", "models", "data", "core"}), frozenset()),
    "reproduce": (frozenset({"workflow", "training", "evaluation", "models", "data", "core"}), frozenset()),
    "cli": (frozenset({ANY}), frozenset()),
    "demo": (frozenset({ANY}), frozenset()),
    "__main__": (frozenset({ANY}), frozenset()),
}

# Known violations on the way out: (importing module, imported module).
EXPECTED_VIOLATIONS: set[tuple[str, str]] = set()

# Known circles on the way out (each a set of modules).
EXPECTED_CYCLES: set[frozenset[str]] = set()

TORCH_FAMILY = ("torch", "torchvision", "torchmetrics", "timm", "lightning", "pytorch_lightning", "pytorch_grad_cam")
TORCH_FREE = ("core", "runtime")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module (a fetalplanes module or package when it is one), dotted
    lazy: bool  # inside a function (or lambda)
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, source: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative import: resolve against the importing module's package
        pkg = source.split(".") if is_package else source.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    # `from pkg import mod` imports the module pkg.mod when there is one, else a name of pkg.
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def imports_of(name: str) -> list[Import]:
    path = MODULES[name]
    out: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse, lazy)
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.extend(Import(name, t, lazy, child.lineno)
                           for t in _targets(child, name, path.name == "__init__.py"))
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return out


ALL_IMPORTS: list[Import] = [imp for name in MODULES for imp in imports_of(name)]


def part(module: str) -> str:
    """Top-level part of fetalplanes a dotted module belongs to ('' for the root package)."""
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else ""


def violations() -> set[tuple[str, str]]:
    found = set()
    for imp in ALL_IMPORTS:
        if not imp.target.startswith(ROOT + ".") and imp.target != ROOT:
            continue
        src, dst = part(imp.source), part(imp.target)
        if dst in ("", src):
            continue
        eager, lazy = ALLOWED[src]
        if ANY in eager or dst in eager or (imp.lazy and dst in lazy):
            continue
        found.add((imp.source, imp.target))
    return found


def cycles() -> list[frozenset[str]]:
    """Strongly connected groups of >1 module in the graph of all runtime imports (Tarjan)."""
    edges: dict[str, set[str]] = {}
    for imp in ALL_IMPORTS:
        if imp.target in MODULES and imp.target != imp.source:
            edges.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(frozenset(group))

    for v in sorted(MODULES):
        if v not in index:
            connect(v)
    return found


def test_every_part_has_a_place_in_the_matrix() -> None:
    parts = {part(m) for m in MODULES} - {""}
    assert parts <= set(ALLOWED), f"add the new part(s) {sorted(parts - set(ALLOWED))} to ALLOWED"
    root_imports = [i.target for i in ALL_IMPORTS if i.source == ROOT and i.target.startswith(ROOT)]
    assert root_imports == [], "fetalplanes/__init__.py must stay import-free (everyone may import it)"


def test_doors_open_downward_only() -> None:
    unexpected = violations() - EXPECTED_VIOLATIONS
    lines = [f"{i.source}:{i.line} imports {i.target}{' (in a function)' if i.lazy else ''}"
             for i in ALL_IMPORTS if (i.source, i.target) in unexpected]
    assert not unexpected, "imports against ARCHITECTURE.md's layering:\n" + "\n".join(sorted(lines))


def test_expected_violations_are_still_real() -> None:
    """Delete an entry of EXPECTED_VIOLATIONS once its import is gone, so the list only shrinks."""
    stale = EXPECTED_VIOLATIONS - violations()
    assert not stale, f"no longer violated, delete from EXPECTED_VIOLATIONS: {sorted(stale)}"


def test_no_import_circles() -> None:
    found = set(cycles())
    unexpected = found - EXPECTED_CYCLES
    assert not unexpected, "import circles (module level or inside functions): " + "; ".join(
        " <-> ".join(sorted(c)) for c in unexpected)
    stale = EXPECTED_CYCLES - found
    assert not stale, f"circle gone, delete from EXPECTED_CYCLES: {[sorted(c) for c in stale]}"


def test_training_imports_nothing_from_above() -> None:
    """Issue 10: training never reaches into evaluation, serve, explain or deploy (not even lazily)."""
    above = {"evaluation", "serve", "explain", "deploy", "reproduce", "workflow", "cli", "demo"}
    bad = [f"{i.source}:{i.line} -> {i.target}" for i in ALL_IMPORTS
           if part(i.source) == "training" and part(i.target) in above]
    assert not bad, bad


@pytest.mark.parametrize("layer", TORCH_FREE)
def test_torch_free_layers_import_no_torch_at_module_level(layer: str) -> None:
    bad = [f"{i.source}:{i.line} imports {i.target}" for i in ALL_IMPORTS
           if part(i.source) == layer and not i.lazy and i.target.split(".")[0] in TORCH_FAMILY]
    assert not bad, bad


# Imports every core and runtime module in a fresh interpreter where torch cannot be imported.
_BLOCKED = """
import importlib, json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(name + " is blocked: core and runtime must not need torch")
        return None
sys.meta_path.insert(0, Block())
for name in {modules!r}:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})))
"""


def test_core_and_runtime_import_with_torch_blocked() -> None:
    modules = sorted(m for m in MODULES if part(m) in TORCH_FREE)
    code = _BLOCKED.format(blocked=set(TORCH_FAMILY), modules=modules)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_the_checker_sees_what_it_should() -> None:
    """The parser finds module-level, function-level, relative and TYPE_CHECKING imports right."""
    by_source = {(i.target, i.lazy) for i in ALL_IMPORTS if i.source == "fetalplanes.core.dicom"}
    assert ("fetalplanes.core.errors", False) in by_source  # dicom.py: from fetalplanes.core.errors import ...
    io_imports = {(i.target, i.lazy) for i in ALL_IMPORTS if i.source == "fetalplanes.core.io"}
    assert ("fetalplanes.core.dicom", False) in io_imports  # io.py: from fetalplanes.core.dicom import ...
    artifact = {(i.target, i.lazy) for i in ALL_IMPORTS if i.source == "fetalplanes.runtime.artifact"}
    assert any(t.startswith("fetalplanes.models") and lazy for t, lazy in artifact)  # inside a function
    service = {i.target for i in ALL_IMPORTS if i.source == "fetalplanes.serve.service"}
    assert "fetalplanes.serve.app" not in service  # only under TYPE_CHECKING


def _defined_twice(tree: ast.Module) -> list[str]:
    """Top-level functions and classes a module defines more than once (the later one silently wins)."""
    seen: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            seen[node.name] = seen.get(node.name, 0) + 1
    return sorted(name for name, n in seen.items() if n > 1)


def test_no_module_defines_a_name_twice() -> None:
    """A merge that keeps both copies of a class or function (core/errors.py once held two
    ModelFileError classes) shadows the first silently; in a test module it drops a test."""
    tests = Path(__file__).resolve().parent
    found = {str(p): _defined_twice(ast.parse(p.read_text(encoding="utf-8")))
             for root in (PACKAGE, tests) for p in sorted(root.rglob("*.py"))}
    assert {p: names for p, names in found.items() if names} == {}
    assert _defined_twice(ast.parse("class A: pass\nclass A: pass\ndef f(): pass")) == ["A"]
