"""Size limits of the package: no module over 400 lines, no function over 60 lines (issue 12's acceptance).

    python scripts/check_structure.py [PATH ...] [--max-module-lines N] [--max-function-lines N]

PATH is a .py file or a folder searched recursively (default: the tfsft package). Prints one line per
offender, `path:name:lines` (name is `<module>` for a whole module, `Class.method` or `outer.inner` for
functions), and exits 1 if there is any, 0 otherwise. Reads source with `ast` only: nothing is imported.
A function's lines run from its `def` to its last line, docstring and nested functions included.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tfsft"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


@dataclass(frozen=True)
class Offender:
    path: str
    name: str
    lines: int

    def __str__(self) -> str:
        return f"{self.path}:{self.name}:{self.lines}"


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + node.name
            yield name, node
            yield from _functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")
        else:
            yield from _functions(node, prefix)


def check_file(
    path: Path,
    max_module_lines: int = MAX_MODULE_LINES,
    max_function_lines: int = MAX_FUNCTION_LINES,
    shown: str | None = None,
) -> list[Offender]:
    source = path.read_text(encoding="utf-8")
    shown = shown or str(path)
    offenders = []
    module_lines = len(source.splitlines())
    if module_lines > max_module_lines:
        offenders.append(Offender(shown, "<module>", module_lines))
    for name, node in _functions(ast.parse(source, filename=str(path))):
        lines = node.end_lineno - node.lineno + 1
        if lines > max_function_lines:
            offenders.append(Offender(shown, name, lines))
    return offenders


def python_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check(
    paths: list[Path], max_module_lines: int = MAX_MODULE_LINES, max_function_lines: int = MAX_FUNCTION_LINES
) -> list[Offender]:
    offenders = []
    for file in python_files(paths):
        offenders += check_file(file, max_module_lines, max_function_lines, shown=_shown(file))
    return offenders


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, default=[PACKAGE], help="files or folders (default: tfsft/)")
    parser.add_argument("--max-module-lines", type=int, default=MAX_MODULE_LINES)
    parser.add_argument("--max-function-lines", type=int, default=MAX_FUNCTION_LINES)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    offenders = check(args.paths, args.max_module_lines, args.max_function_lines)
    for offender in offenders:
        print(offender)
    if offenders:
        print(
            f"{len(offenders)} over the limits (modules > {args.max_module_lines} lines, functions > "
            f"{args.max_function_lines} lines).",
            file=sys.stderr,
        )
    return 1 if offenders else 0


if __name__ == "__main__":
    sys.exit(main())
