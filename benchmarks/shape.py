"""The package's shape in numbers, so a restructuring can be compared before and after.

    python benchmarks/shape.py [--over 60]

Prints the lines of nbbatch/, its largest classes and modules, the functions longer than
``--over`` lines, and the import circles (as tests/test_architecture.py finds them).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nbbatch"


def span(node: ast.AST) -> int:
    """Lines from a definition's first line (its decorators included) to its last."""
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])  # type: ignore[attr-defined]
    return int(node.end_lineno or node.lineno) - first + 1  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--over", type=int, default=60, help="function length to report")
    args = parser.parse_args()

    classes: list[tuple[int, str, int]] = []
    functions: list[tuple[int, str]] = []
    modules: list[tuple[int, str]] = []
    total = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        lines = text.count("\n")
        total += lines
        modules.append((lines, rel))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods = sum(
                    isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in node.body
                )
                classes.append((span(node), f"{rel}::{node.name}", methods))
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        n = span(item)
                        if n > args.over:
                            functions.append((n, f"{rel}::{node.name}.{item.name}"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and span(node) > args.over:
                functions.append((span(node), f"{rel}::{node.name}"))

    print(f"nbbatch/: {total:,} lines in {len(modules)} modules")
    print("largest classes (lines, methods):")
    for n, name, methods in sorted(classes, reverse=True)[:5]:
        print(f"  {n:5d} {methods:3d}  {name}")
    print("largest modules:")
    for n, name in sorted(modules, reverse=True)[:5]:
        print(f"  {n:5d}  {name}")
    print(f"functions over {args.over} lines: {len(functions)}")
    for n, name in sorted(functions, reverse=True):
        print(f"  {n:5d}  {name}")

    sys.path.insert(0, str(ROOT / "tests"))
    import test_architecture as arch

    found = arch.circles(arch.import_graph())
    print(f"import circles: {len(found)}")
    for group in found:
        print(f"  {', '.join(group)}")
    # Type-only imports do not run, but a reader still follows them.
    typed = arch.circles(arch.import_graph(typing=True))
    print(f"import circles counting type-only imports: {len(typed)}")
    for group in typed:
        print(f"  {', '.join(group)}")


if __name__ == "__main__":
    main()
