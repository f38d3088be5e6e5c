"""The code's shape limits: no function in src/paradec is longer than 80 lines (decorators and
signature included), and no public function takes more than 8 parameters besides self/cls (a
config dataclass carries the rest)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "paradec"
MAX_LINES = 80
MAX_PARAMS = 8


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def length(node: ast.FunctionDef) -> int:
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return node.end_lineno - start + 1


def parameters(node: ast.FunctionDef) -> int:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    return len(names) - (1 if names and names[0] in ("self", "cls") else 0)


def offenders(root: Path = SRC) -> tuple[list[str], list[str]]:
    long, wide = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        for f in functions(path):
            if length(f) > MAX_LINES:
                long.append(f"{rel}:{f.lineno} {f.name} ({length(f)} lines)")
            if not f.name.startswith("_") and parameters(f) > MAX_PARAMS:
                wide.append(f"{rel}:{f.lineno} {f.name} ({parameters(f)} parameters)")
    return long, wide


def test_no_function_over_80_lines():
    long, _ = offenders()
    assert not long, "functions over 80 lines (split them into named steps):\n" + "\n".join(long)


def test_no_public_function_over_8_parameters():
    _, wide = offenders()
    assert not wide, "public functions over 8 parameters (take a config object):\n" + "\n".join(wide)


def test_the_checks_catch_a_planted_offender(tmp_path):
    pkg = tmp_path / "paradec"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (pkg / "bad.py").write_text(
        f"def long():\n{body}\n\n\n"
        "def wide(self, a, b, c, d, e, f, g, h, i):\n    pass\n\n\n"
        "def _private_wide(a, b, c, d, e, f, g, h, i):\n    pass\n\n\n"
        "def fine(self, a, b, c, d, e, f, g, h):\n    pass\n"
    )
    long, wide = offenders(pkg)
    assert [x.split()[1] for x in long] == ["long"]
    assert [x.split()[1] for x in wide] == ["wide"]
