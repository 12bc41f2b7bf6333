"""The run directory: its layout and the one reader and writer of each file in it (no torch).

    runs/<name>/
      config.json      the resolved config (config.load.config_json): enough to rebuild the run
      grammar.cfg      the grammar as trained; later stages read this copy, never the source
      metrics.jsonl    one JSON object per logged training step: the record
      history.jsonl    accepted changes of training settings on resume (--allow-changes)
      fingerprint.json hashes of config.json, grammar.cfg (and a saved dataset's meta.json)
      stages.json      the stages completed, each with a hash of the settings it ran under
      ckpt/            checkpoints: step_XXXXXXX/ folders and the `latest` pointer (their names are
                       here, torch-free; their files' format is cfglab.train.checkpoint's)
      eval/            <family>.json per metric family and summary.json (cfglab eval)
      analyze/         <family>.json per analysis family (cfglab analyze: probe, attention,
                       ...), dynamics.json (cfglab dynamics: rows per kept checkpoint)
      report/          report.md, report.html, figures/*.png (cfglab report)

Every result file is JSON with a `schema` header {"kind", "version"}; `write_result` writes
it atomically (a temporary file renamed over the old one, so a reader or a crash never sees
half a file) and `read_result` refuses a file of another kind or version with a message naming
the command that rewrites it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cfglab.errors import CfglabError, ConfigError

SCHEMA_VERSION = 1
CONFIG, GRAMMAR, METRICS = "config.json", "grammar.cfg", "metrics.jsonl"
HISTORY, FINGERPRINT, STAGE_MARKS = "history.jsonl", "fingerprint.json", "stages.json"
EVAL, ANALYZE, REPORT = "eval", "analyze", "report"
# result kind -> the command that writes it (named in error messages)
WRITERS = {EVAL: "cfglab eval", ANALYZE: "cfglab analyze / cfglab dynamics"}
CKPT, LATEST = "ckpt", "latest"
# the only names cfglab writes in ckpt/: a checkpoint folder, and one being written (renamed
# when complete); anything else there is a user's, never read or deleted
CHECKPOINT_NAME = re.compile(r"step_(\d{7,})")
CHECKPOINT_TMP_NAME = re.compile(r"step_\d{7,}\.tmp")


def checkpoint_name(step: int) -> str:
    """The folder of a step's checkpoint in ckpt/: step_0000500."""
    return f"step_{step:07d}"


def checkpoint_step(name: str) -> int | None:
    """The step of a folder name cfglab gives a checkpoint (step_0000500 -> 500), else None
    (a user's step_0000500.bak, step_old, ...)."""
    match = CHECKPOINT_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def latest_step(run_dir: str | Path) -> int | None:
    """The step of the checkpoint ckpt/latest names (read from its name: no torch), or None when
    the run has no checkpoint (no pointer, or one naming no checkpoint folder)."""
    ckpt = Path(run_dir) / CKPT
    try:
        name = (ckpt / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    step = checkpoint_step(name)
    return step if step is not None and (ckpt / name).is_dir() else None


def held_results(run_dir: str | Path) -> list[str]:
    """What a run folder holds of its stages' results (eval/*.json, analyze/*.json, report/,
    stages done in stages.json), as relative names: [] for a fresh or half-trained folder."""
    root = Path(run_dir)
    held = [
        p.relative_to(root).as_posix()
        for folder in (EVAL, ANALYZE)
        for p in sorted((root / folder).glob("*.json*"))
    ]
    if (root / REPORT / "report.md").is_file():
        held.append(f"{REPORT}/report.md")
    if read_stage_marks(root):
        held.append(STAGE_MARKS)
    return held


def check_writable(folder: str | Path, advice: str) -> None:
    """Before a stage's work: `folder` (or, while it does not exist, the nearest existing folder
    above it, where it would be made) takes a new file. A file is made and dropped to tell,
    unnamed (O_TMPFILE where the system has it): permission bits do not tell (root ignores them,
    a read-only mount or a full quota sets none). CfglabError naming the folder otherwise."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CfglabError(f"{folder}: {existing} is a file, not a folder; {advice}")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".cfglab-write-check-"):
            pass
    except OSError as exc:
        raise CfglabError(f"cannot write in {existing} ({exc.strerror or exc}); {advice}") from None


def result_path(run_dir: str | Path, kind: str) -> Path:
    """The file of a result kind, e.g. 'eval/accuracy' -> run_dir/eval/accuracy.json."""
    return Path(run_dir) / f"{kind}.json"


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 1) -> Path:
    """Write JSON to `path` through a temporary file and a rename (never half a file)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, allow_nan=True) + "\n")


def write_text_atomic(path: Path, text: str) -> Path:
    """Write text through a temporary file and a rename."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write bytes (e.g. a figure's PNG) through a temporary file and a rename, creating the
    folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no half-written temporary file left behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_bytes(path: Path) -> bytes:
    """A file written by write_bytes_atomic (a report's figure, to embed it)."""
    return Path(path).read_bytes()


@contextlib.contextmanager
def scratch_folder(prefix: str = "cfglab-") -> Iterator[Path]:
    """A temporary folder outside every run, deleted after the block: scratch space (a measured
    checkpoint, hidden states spilled to disk), never a run file."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def write_result(run_dir: str | Path, kind: str, body: dict[str, Any]) -> Path:
    """Write a result file (kind like 'eval/accuracy', 'analyze/probe') with its schema header."""
    data = {"schema": {"kind": kind, "version": SCHEMA_VERSION}, **body}
    return write_json_atomic(result_path(run_dir, kind), data)


def read_result(run_dir: str | Path, kind: str) -> dict[str, Any] | None:
    """A result file's body (schema header removed), or None if the run has none."""
    path = result_path(run_dir, kind)
    if not path.is_file():
        return None
    writer = WRITERS.get(kind.split("/")[0], "the stage that writes it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CfglabError(
            f"{path}: not valid JSON ({type(exc).__name__}); re-run {writer} on {run_dir}"
        ) from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != {"kind": kind, "version": SCHEMA_VERSION}:
        found = (
            f"kind {schema.get('kind')!r} version {schema.get('version')!r}"
            if isinstance(schema, dict)
            else "no schema header"
        )
        raise CfglabError(
            f"{path}: written by another cfglab version ({found}, expected {kind!r} version "
            f"{SCHEMA_VERSION}); re-run {writer} on {run_dir}"
        )
    return {k: v for k, v in data.items() if k != "schema"}


@contextlib.contextmanager
def result_shape(run_dir: str | Path) -> Iterator[None]:
    """Around code that reads a run's result files: a file that parses but is not in the shape
    this cfglab writes (a key missing, a table a level short) becomes one CfglabError naming
    the run, instead of the KeyError / ValueError of the line that tripped on it."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise CfglabError(
            f"{run_dir}: a result file is not in the shape this cfglab writes ({type(exc).__name__}"
            f": {exc}); rerun the stage that wrote it (cfglab eval / probe / attention / dynamics "
            f"{run_dir})"
        ) from None


def read_results(run_dir: str | Path, folder: str) -> dict[str, dict[str, Any]]:
    """Every result file of a folder (eval, analyze) by name: {"accuracy": body, ...}."""
    root = Path(run_dir) / folder
    names = sorted(p.stem for p in root.glob("*.json")) if root.is_dir() else []
    return {name: read_result(run_dir, f"{folder}/{name}") for name in names}


def remove_result(run_dir: str | Path, kind: str) -> None:
    """Delete a result that a newer run of its stage made stale."""
    result_path(run_dir, kind).unlink(missing_ok=True)


# ---- config and grammar: the run's own copies -------------------------------------------------
def sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def write_config(run_dir: str | Path, cfg) -> str:
    """config.json of a run (the resolved config as JSON, atomically); returns its text."""
    from cfglab.config.load import config_json

    text = config_json(cfg)
    write_text_atomic(Path(run_dir) / CONFIG, text)
    return text


def write_run_record(run_dir: str | Path, cfg, grammar, dataset: str | None = None) -> None:
    """config.json, grammar.cfg and fingerprint.json (their hashes, and the saved dataset's
    meta.json hash when training reads one), creating the run folder: what later stages read
    instead of the sources."""
    root = Path(run_dir)
    config_text = write_config(root, cfg)
    text = grammar.to_text()
    write_text_atomic(root / GRAMMAR, text)
    fingerprint = {"config": sha256(config_text), "grammar": sha256(text)}
    if dataset:  # read, not written: the dataset's files are data.saved's
        fingerprint["dataset_meta"] = sha256((Path(dataset) / "meta.json").read_bytes())
    write_json_atomic(root / FINGERPRINT, fingerprint)


def read_fingerprint(run_dir: str | Path) -> dict[str, str]:
    """fingerprint.json: the hashes of the training record ({} for a run that has none yet);
    every result file carries it, so a result is tied to the run it was measured on."""
    path = Path(run_dir) / FINGERPRINT
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CfglabError(f"{path} is corrupt; re-create the run") from None
    if not isinstance(data, dict):
        raise CfglabError(f"{path} is corrupt; re-create the run")
    return data


def read_run_config(run_dir: str | Path):
    """The ExperimentConfig of a run (ConfigError if config.json is missing or corrupt)."""
    from cfglab.config.load import config_from_json

    root = Path(run_dir)
    if not root.is_dir():
        what = (
            f"{root} is a file, not a run directory"
            if root.exists()
            else f"no run directory {root}"
        )
        raise CfglabError(f"{what}; give the folder `cfglab train` wrote (runs/<name>)")
    path = root / CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no config.json at {path}; is {root} a run directory?") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: corrupt config.json ({exc}); re-create the run") from None
    return config_from_json(text, path)


def read_run_grammar(run_dir: str | Path, name: str = ""):
    """The run's own grammar (grammar.cfg as trained), named `name`."""
    from cfglab.grammar import Grammar

    path = Path(run_dir) / GRAMMAR
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CfglabError(
            f"{path} is missing: the run's grammar as trained; re-create the run"
        ) from None
    except UnicodeDecodeError:
        raise CfglabError(f"{path}: not UTF-8 text; re-create the run") from None
    fingerprint = Path(run_dir) / FINGERPRINT
    if fingerprint.is_file():
        try:
            expected = json.loads(fingerprint.read_text())["grammar"]
        except (ValueError, KeyError, TypeError):
            raise CfglabError(f"{fingerprint} is corrupt; re-create the run") from None
        if sha256(text) != expected:
            raise CfglabError(
                f"{path} was changed after training (its hash is not the one in "
                f"{FINGERPRINT}); the run's results describe the grammar it was trained on: "
                "restore that file, or train a new run on the new grammar"
            )
    if text.startswith("%language"):  # a language beyond context-free (cfglab.languages)
        from cfglab.languages import load_language

        return load_language(text)
    return Grammar.from_text(text, name=name, source=str(path))


def record_changes(run_dir: str | Path, cfg, grammar) -> dict[str, list]:
    """How `cfg` (with its loaded `grammar`) differs from the training record of a run: {key:
    [old, new]} over the settings that change what is learned (data, model, train but
    NOT_TRAINING), plus "grammar" when the grammars differ by content (the run's grammar.cfg vs
    `grammar`). {} when `cfg` would train this same run."""
    from cfglab.config import NOT_TRAINING, flat

    old = read_run_config(run_dir)
    changes: dict[str, list] = {}
    if read_run_grammar(run_dir, old.grammar.name) != grammar:
        changes["grammar"] = [str(Path(run_dir) / GRAMMAR), cfg.grammar.name]
    a, b = flat(old.to_dict()), flat(cfg.to_dict())
    for k in a:
        if k.split(".")[0] in ("data", "train", "model") and k not in NOT_TRAINING:
            if a[k] != b.get(k):
                changes[k] = [a[k], b.get(k)]
    return changes


# ---- metrics.jsonl ----------------------------------------------------------------------------
def read_metrics(run_dir: str | Path, name: str = METRICS) -> list[dict[str, Any]]:
    """metrics.jsonl rows (or another step-record file's, e.g. analyze/dynamics.jsonl) in file
    order; a torn last line (a run killed mid-write) is skipped."""
    path = Path(run_dir) / name
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a step record")
        except ValueError:
            if i == len(lines) - 1:
                continue
            raise CfglabError(
                f"{path}:{i + 1}: not a JSON object with a step; {path.name} holds one per "
                "line (fix or delete the line)"
            ) from None
        rows.append(row)
    return rows


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Keep the records up to `step` (a resumed run logs the later ones again); also drops a
    torn last line. Atomic."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    keep = [row for row in read_metrics(run_dir) if row["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


def read_stage_marks(run_dir: str | Path) -> dict[str, str]:
    """stages.json: {stage: settings hash} of the stages completed ({} if none or unreadable:
    then every stage runs again, which loses nothing)."""
    path = Path(run_dir) / STAGE_MARKS
    try:
        marks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marks if isinstance(marks, dict) else {}


def mark_stage_done(run_dir: str | Path, stage: str, key: str) -> None:
    """Record a completed stage (atomically)."""
    marks = read_stage_marks(run_dir)
    marks[stage] = key
    write_json_atomic(Path(run_dir) / STAGE_MARKS, marks)


def append_history(run_dir: str | Path, record: dict[str, Any]) -> None:
    """history.jsonl: one line per accepted change of a run's training settings (resume with
    --allow-changes), so config.json's earlier values are never lost."""
    with open(Path(run_dir) / HISTORY, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class MetricsLog:
    """Appends step records to metrics.jsonl, one JSON object per line, flushed per record."""

    def __init__(self, run_dir: str | Path) -> None:
        self.file = open(Path(run_dir) / METRICS, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
