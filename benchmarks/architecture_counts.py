"""Counts of the package's shape (issue 19 "Measure"): import circles, upward arrows, function-level
imports, the longest function, files that build an ONNX Runtime session, and the modules
``training.fit`` pulls in.

Static (``ast``, nothing imported); the layering rules and the import parser are the ones of
``tests/test_architecture.py``. Run from the repository root::

    python benchmarks/architecture_counts.py [--src src/fetalplanes] [--label after]

Prints a table and writes ``benchmarks/results/architecture_counts_<label>.json``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker(src: Path):  # noqa: ANN202 - the test module, loaded against ``src``
    spec = importlib.util.spec_from_file_location("_arch", ROOT / "tests" / "test_architecture.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_arch"] = module
    source = (ROOT / "tests" / "test_architecture.py").read_text()
    source = source.replace('PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fetalplanes"',
                            f"PACKAGE = Path({str(src)!r})")
    exec(compile(source, str(ROOT / "tests" / "test_architecture.py"), "exec"), module.__dict__)  # noqa: S102
    return module


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _function_imports(tree: ast.AST) -> int:
    """Import statements inside a function body, each counted once (nested functions included)."""
    return len({id(node) for fn in _functions(tree) for node in ast.walk(fn)
                if isinstance(node, (ast.Import, ast.ImportFrom))})


def _closure(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def measure(src: Path) -> dict:
    arch = _checker(src)
    files = sorted(src.rglob("*.py"))
    trees = {f: ast.parse(f.read_text(), str(f)) for f in files}
    longest = max(((fn.end_lineno - fn.lineno + 1, f"{f.relative_to(src.parent)}:{fn.lineno} {fn.name}")
                   for f, t in trees.items() for fn in _functions(t)), default=(0, ""))
    ort = sorted(str(f.relative_to(src.parent)) for f in files if "InferenceSession(" in f.read_text())
    edges: dict[str, set[str]] = {}
    for imp in arch.ALL_IMPORTS:
        if imp.target in arch.MODULES and imp.target != imp.source:
            edges.setdefault(imp.source, set()).add(imp.target)
    fit = "fetalplanes.training.fit"
    fit_closure = sorted(_closure(fit, edges)) if fit in arch.MODULES else []
    return {
        # the tree's last two parts only: a machine's paths do not belong in a committed result
        "src": "/".join(src.parts[-2:]),
        "import_circles": len(arch.cycles()),
        "upward_arrows": len(arch.violations()),
        "function_level_imports": sum(_function_imports(t) for t in trees.values()),
        "longest_function_lines": longest[0],
        "longest_function": longest[1],
        "files_building_ort_session": len(ort),
        "ort_session_files": ort,
        "training_fit_import_closure_files": len(fit_closure),
        "files": len(files),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src" / "fetalplanes")
    parser.add_argument("--label", default="current")
    args = parser.parse_args()
    result = measure(args.src.resolve())
    for key, value in result.items():
        if not isinstance(value, list):
            print(f"{key:36s} {value}")
    out = ROOT / "benchmarks" / "results" / f"architecture_counts_{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
