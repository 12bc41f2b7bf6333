"""The architecture's import rules (DESIGN.md), checked on the source:

1. a stage imports only from stages to its left, plus the modules every stage may use
   (`errors`, `config`, `rundir`, `expdir`, `seeds`); `stages`, `experiment` and the `cli`
   package sit above every stage;
2. `grammar`, `data` (but its tensor edge `data/dataset.py`), `exact`, `report`, `config`,
   `rundir`, `expdir` and `seeds` never import torch, so they load and run on machines without
   it;
3. no import cycle among cfglab modules (lazy imports inside functions count too);
4. no module of cfglab is over 500 lines.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cfglab"
STAGE_ORDER = [
    "languages",
    "grammar",
    "data",
    "exact",
    "model",
    "train",
    "evaluate",
    "analyze",
    "report",
]
RANK = {name: i for i, name in enumerate(STAGE_ORDER)}
RANK["analyze"] = RANK["evaluate"]  # 6a and 6b: siblings, neither imports the other
ALWAYS_ALLOWED = {"errors", "paths", "config", "rundir", "expdir", "seeds"}
ABOVE_ALL = {"stages", "experiment", "cli", "__main__"}  # may import any stage
TORCH_FREE_EDGES = {"cfglab.data.dataset", "cfglab.data.saved"}  # data/'s tensor edge
MAX_LINES = 500


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


MODULES = dict(modules())


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (imports for type hints never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def cfglab_imports(path: Path) -> set[str]:
    """Every cfglab module a file imports at run time, at any depth (lazy imports inside
    functions too), resolved to a module of the package (`from cfglab.x import name` ->
    cfglab.x.name when that is a module, else cfglab.x)."""
    names = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                names.add(sub if sub in MODULES else node.module)
    return {n for n in names if n == "cfglab" or n.startswith("cfglab.")}


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_imports_point_left(module, path):
    stage = stage_of(module)
    for imported in cfglab_imports(path):
        target = stage_of(imported)
        if target is None or target == stage:
            continue
        if stage in ALWAYS_ALLOWED:  # the shared modules import no stage, and no stage module
            assert target in ALWAYS_ALLOWED or target in {"grammar", "languages"}, (
                f"{module} is shared by every stage and may not import {imported}"
            )
            continue
        if stage in ABOVE_ALL or stage is None or target in ALWAYS_ALLOWED:
            continue
        assert target in RANK, f"{module} imports {imported}, which is not a pipeline stage"
        assert RANK[target] < RANK[stage], (
            f"{module} (stage {stage}) imports {imported} (stage {target}): a stage may only "
            f"import stages to its left: {' -> '.join(STAGE_ORDER)}"
        )


def test_no_import_cycles():
    graph = {m: {i for i in cfglab_imports(p) if i in MODULES and i != m} for m, p in modules()}
    # a package's __init__ re-exporting its modules is not a cycle with them
    for m in graph:
        graph[m] = {i for i in graph[m] if not m.startswith(i + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_cycle_check_finds_a_planted_cycle(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("from cfglab.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from cfglab.a import y\n")
    planted = {"cfglab.a": tmp_path / "a.py", "cfglab.b": tmp_path / "b.py"}
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: list(planted.items()))
    monkeypatch.setattr(sys.modules[__name__], "MODULES", planted)
    with pytest.raises(AssertionError, match="import cycle: cfglab.a -> cfglab.b -> cfglab.a"):
        test_no_import_cycles()


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_modules_stay_small(module, path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines; split it (one idea per file)"


TORCH_FREE = [
    m
    for m, _ in modules()
    if stage_of(m)
    in {
        "languages",
        "grammar",
        "data",
        "exact",
        "report",
        "config",
        "paths",
        "rundir",
        "expdir",
        "seeds",
    }
    and m not in TORCH_FREE_EDGES
]


def test_torch_free_stages_import_without_torch():
    # A fresh interpreter where `import torch` fails: every torch-free module must still import.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        f"import importlib\nfor m in {TORCH_FREE!r}:\n    importlib.import_module(m)\n"
        "print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
    assert "cfglab.grammar.cfg" in TORCH_FREE and "cfglab.data.sampler" in TORCH_FREE
    assert "cfglab.config.load" in TORCH_FREE and "cfglab.rundir" in TORCH_FREE
    assert "cfglab.expdir" in TORCH_FREE
