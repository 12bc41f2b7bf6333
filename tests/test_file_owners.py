"""One owner per file (DESIGN.md): only the modules in OWNERS open, read, write, move or delete
files; every other module of cfglab goes through them (a run's files through cfglab.rundir, an
experiment folder's through cfglab.expdir, checkpoints through train/checkpoint.py, ...).

The scan parses every module with `ast` and finds the calls that touch the file system: the
builtin `open`, Path's read/write/open/unlink/mkdir/rename/replace/..., os's open/replace/
remove/makedirs/..., anything of shutil, tempfile and pickle, NumPy's load/save/fromfile/
memmap and `.tofile`, torch.save/load, json.load/dump, safetensors, matplotlib's `savefig`,
TensorBoard's SummaryWriter and `save_pretrained`. A call on an in-memory buffer
(io.BytesIO / io.StringIO: `fig.savefig(png)` where `png = io.BytesIO()`) is not a file.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cfglab"

# module -> (the kinds of call it may make, None: any; why it may touch files)
OWNERS: dict[str, tuple[set[str] | None, str]] = {
    "cfglab.rundir": (None, "the run directory: every run file, atomic writes, scratch folders"),
    "cfglab.expdir": (
        None,
        "the experiment folder: experiment.json, status.json, a run's status, lock and log, "
        "the comparison's CSVs",
    ),
    "cfglab.train.checkpoint": (None, "ckpt/: safetensors weights, optimizer state, state.json"),
    "cfglab.config.load": (None, "the YAML configs the user gives"),
    "cfglab.grammar.builtin": (None, "grammar files: the built-in JSON and the user's files"),
    "cfglab.data.lines": (None, "strings and prompts files, and the tool commands' outputs"),
    "cfglab.data.saved": (None, "saved datasets (cfglab data): the .npy arrays and meta.json"),
    "cfglab.analyze.states": (None, "hidden states spilled into a scratch folder (no run file)"),
    "cfglab.train.loop": (
        {"SummaryWriter"},
        "the TensorBoard view of metrics.jsonl (run_dir/tb), written by torch's SummaryWriter",
    ),
    "cfglab.model.export": (
        {"save_pretrained", "safetensors"},
        "a Hugging Face or TransformerLens export into the user's folder (safetensors: the "
        "TransformerLens weights, its error type, a full disk)",
    ),
}

PATH_METHODS = {
    "read_text",
    "write_text",
    "read_bytes",
    "write_bytes",
    "open",
    "unlink",
    "mkdir",
    "rmdir",
    "touch",
    "rename",
    "symlink_to",
    "hardlink_to",
    "tofile",
    "savefig",
    "save_pretrained",
}
MODULE_CALLS = {  # module name -> its functions that touch files (None: every one)
    "os": {"open", "fdopen", "replace", "rename", "remove", "unlink", "makedirs", "mkdir"}
    | {"rmdir", "truncate", "chmod", "symlink", "link"},
    "io": {"open"},
    "shutil": None,
    "tempfile": None,
    "pickle": None,
    "safetensors": None,
    "np": {"load", "save", "savez", "savez_compressed", "fromfile", "memmap", "savetxt"}
    | {"loadtxt", "genfromtxt"},
    "numpy": {"load", "save", "savez", "savez_compressed", "fromfile", "memmap", "savetxt"},
    "torch": {"save", "load"},
    "json": {"load", "dump"},
}
NAMES = {"open", "SummaryWriter", "safe_open", "save_file", "load_file"}
BUFFERS = {"BytesIO", "StringIO"}


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _is_buffer(node: ast.AST, buffers: set[str]) -> bool:
    """An in-memory buffer: io.BytesIO() / io.StringIO() itself, or a name bound to one."""
    if isinstance(node, ast.Call):
        name = _dotted(node.func) or ""
        return name.split(".")[-1] in BUFFERS
    return isinstance(node, ast.Name) and node.id in buffers


def file_calls(source: str) -> list[tuple[int, str]]:
    """(line, kind) of every call in `source` that touches the file system."""
    tree = ast.parse(source)
    buffers = {
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and _is_buffer(node.value, set())
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            wanted = MODULE_CALLS.get(root, set())
            if wanted is None or {a.name for a in node.names} & wanted:
                found.append((node.lineno, root))  # e.g. from tempfile import mkdtemp
            continue
        if not isinstance(node, ast.Call):
            continue
        kind = _call_kind(node)
        if kind and not (node.args and _is_buffer(node.args[0], buffers)):
            found.append((node.lineno, kind))
    return found


def _call_kind(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id if func.id in NAMES else None
    if not isinstance(func, ast.Attribute):
        return None
    dotted = _dotted(func)
    if dotted is not None and "." in dotted:
        root, name = dotted.split(".")[0], dotted.split(".")[-1]
        if root in ("rundir", "expdir"):  # through the owners themselves
            return None
        if root in MODULE_CALLS:
            wanted = MODULE_CALLS[root]
            return dotted if wanted is None or name in wanted else None
    if func.attr in PATH_METHODS or func.attr in NAMES:
        return func.attr
    # Path.replace(target) takes one argument; str.replace takes two
    if func.attr == "replace" and len(node.args) == 1 and not node.keywords:
        return "replace"
    return None


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def violations(module: str, source: str) -> list[str]:
    """`module:line kind` of each file call the module may not make."""
    allowed, _ = OWNERS.get(module, (set(), ""))
    return [
        f"{module}:{line} {kind}"
        for line, kind in file_calls(source)
        if allowed is not None and kind.split(".")[0] not in allowed and kind not in allowed
    ]


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_only_owners_touch_files(module, path):
    bad = violations(module, path.read_text())
    assert not bad, (
        f"file access outside the files' owners: {', '.join(bad)}; read and write a run's files "
        "through cfglab.rundir, an experiment folder's through cfglab.expdir (or add the module "
        "to OWNERS with its reason, if it owns a kind of file of its own)"
    )


def test_every_owner_exists_and_touches_files():
    """No stale entry: each owner is a module of cfglab that makes at least one such call."""
    found = dict(modules())
    for module in OWNERS:
        assert module in found, f"OWNERS names {module}, which is not a module of cfglab"
        assert file_calls(found[module].read_text()), f"{module} touches no file: drop it"


def test_the_scan_finds_planted_file_access():
    planted = (
        "import io, json, os, shutil, tempfile\n"
        "import numpy as np\n"
        "from pathlib import Path\n"
        "def f(fig, p, arrays):\n"
        "    Path(p).write_text('x')\n"  # 5
        "    with open(p) as fh:\n"  # 6
        "        json.load(fh)\n"  # 7
        "    np.save(p, arrays)\n"  # 8
        "    os.replace(p, p + '.old')\n"  # 9
        "    shutil.rmtree(p)\n"  # 10
        "    fig.savefig(p)\n"  # 11
        "    png = io.BytesIO()\n"
        "    fig.savefig(png)\n"  # an in-memory buffer: not a file
        "    'a-b'.replace('-', '_')\n"  # str.replace: not a file
        "    Path(p).with_suffix('.tmp').replace(p)\n"  # 15
        "    tempfile.mkdtemp()\n"  # 16
    )
    assert sorted(line for line, _ in file_calls(planted)) == [5, 6, 7, 8, 9, 10, 11, 15, 16]
    assert violations("cfglab.report.planted", planted)  # not an owner: it fails
    assert not violations("cfglab.rundir", planted)  # the run folder's owner may
    assert violations("cfglab.train.loop", planted)  # an owner of one kind only: the rest fails
