"""Readable functions: no function or method in cfglab/ is over 100 lines (by `ast`: from its
`def` line to its last line, decorators aside). A longer one is split along its concepts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cfglab"
MAX_FUNCTION_LINES = 100


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function of a file longer than `limit` lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                out.append((node.name, node.lineno, length))
    return out


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_function_is_over_100_lines(path):
    found = long_functions(path)
    assert not found, ", ".join(f"{path.name}:{line} {name} ({n} lines)" for name, line, n in found)


def test_the_check_finds_a_planted_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path / "m.py") == [("long", 5, MAX_FUNCTION_LINES + 1)]
