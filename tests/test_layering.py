"""The architecture's two import rules (DESIGN.md), checked on the source:

1. a stage imports only from stages to its left (plus `config` and `errors`);
2. `grammar`, `data` (but its tensor edge `data/dataset.py`), `exact`, `report` and `config`
   never import torch, so they load and run on machines without it.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cfglab"
STAGE_ORDER = ["grammar", "data", "exact", "model", "train", "evaluate", "analyze", "report"]
RANK = {name: i for i, name in enumerate(STAGE_ORDER)}
RANK["analyze"] = RANK["evaluate"]  # 6a and 6b: siblings, neither imports the other
ALWAYS_ALLOWED = {"errors", "config"}
TORCH_FREE_EDGES = {"cfglab.data.dataset"}  # the one place in data/ that makes tensors


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def cfglab_imports(path: Path) -> set[str]:
    """Every cfglab module a file imports, at any depth (lazy imports inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n == "cfglab" or n.startswith("cfglab.")}


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_imports_point_left(module, path):
    stage = stage_of(module)
    if stage not in RANK:  # cli, __main__, errors, config, the package root
        return
    for imported in cfglab_imports(path):
        target = stage_of(imported)
        if target is None or target in ALWAYS_ALLOWED or target == stage:
            continue
        assert target in RANK, f"{module} imports {imported}, which is not a pipeline stage"
        assert RANK[target] < RANK[stage], (
            f"{module} (stage {stage}) imports {imported} (stage {target}): a stage may only "
            f"import stages to its left: {' -> '.join(STAGE_ORDER)}"
        )


TORCH_FREE = [
    m
    for m, _ in modules()
    if stage_of(m) in {"grammar", "data", "exact", "report", "config"} and m not in TORCH_FREE_EDGES
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
