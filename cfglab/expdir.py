"""The experiment folder: its layout and the one reader and writer of each file in it (no torch).

    runs/<experiment>/
      experiment.json    the expanded plan: axes, stages, executor, every run's point, seed and
                         config (`Experiment.plan()`); `cfglab compare` reads the runs from it
      status.json        every run's state: pending / running / done / failed / interrupted
      <run>/             an ordinary run directory (cfglab.rundir), plus what a sweep keeps there:
        run_status.json  the run's state, wall seconds and error line
        run.lock         held (flock) by the one process running the run; holds its pid
        log.txt          the run's output under a sweep (appended)
      compare/           results.csv, summary.csv, report.md, report.html, figures/
      submitit/          submitit's own job folders (SLURM), written by submitit

`cfglab compare A B --out DIR` writes the same files as compare/ into DIR. Every file is
written atomically (a temporary file renamed over the old one, rundir.write_*_atomic), so a
reader or a crash never sees half a file; the lock and the log are the exceptions, being held
open while a run goes on.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from cfglab import rundir
from cfglab.errors import CfglabError

try:
    import fcntl  # POSIX: run locks
except ImportError:  # Windows: no lock; one sweep per experiment folder is then up to the user
    fcntl = None

PLAN, STATUS, COMPARE = "experiment.json", "status.json", "compare"
RESULTS, SUMMARY = "results.csv", "summary.csv"  # in compare/ (or compare's --out)
RUN_STATUS, RUN_LOCK, RUN_LOG = "run_status.json", "run.lock", "log.txt"
PENDING = {"state": "pending", "seconds": None, "error": None}


def make_folder(path: Path) -> Path:
    """Create an experiment or report folder (and its parents); OSError if it cannot be."""
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- experiment.json and status.json ----------------------------------------------------------
def write_plan(folder: Path, plan: dict[str, Any]) -> Path:
    return rundir.write_json_atomic(folder / PLAN, plan)


def read_plan_text(folder: Path) -> str | None:
    """experiment.json as written (None if there is none): a sweep compares it before and after
    to tell whether the plan changed."""
    path = folder / PLAN
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def read_plan(folder: Path) -> dict[str, Any] | None:
    """experiment.json (None if `folder` has none: not an experiment folder); CfglabError if it
    is not a JSON object."""
    text = read_plan_text(folder)
    if text is None:
        return None
    try:
        plan = json.loads(text)
    except ValueError:
        plan = None
    if not isinstance(plan, dict):
        raise CfglabError(f"{folder / PLAN} is corrupt; run `cfglab sweep` again")
    return plan


def write_status(folder: Path, states: dict[str, dict]) -> Path:
    """status.json: {run folder name: its state} for every run of the experiment."""
    return rundir.write_json_atomic(folder / STATUS, states)


# ---- a run's state, lock and log under a sweep ------------------------------------------------
def read_run_status(run_dir: Path) -> dict[str, Any]:
    """run_status.json, or the pending state when the run has none (or it is unreadable: the
    run then counts as not started)."""
    try:
        status = json.loads((run_dir / RUN_STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return dict(PENDING)
    return status if isinstance(status, dict) else dict(PENDING)


def write_run_status(run_dir: Path, status: dict[str, Any]) -> Path:
    return rundir.write_json_atomic(run_dir / RUN_STATUS, status)


def clear_run_status(run_dir: Path) -> None:
    """Forget a run's state (a stale "running" left by a killed sweep is pending again), but
    keep the wall time its earlier segments took (a resumed run's seconds are their sum)."""
    seconds = read_run_status(run_dir).get("seconds")
    if isinstance(seconds, (int, float)) and seconds > 0:
        write_run_status(run_dir, {**PENDING, "seconds": seconds})
    else:
        (run_dir / RUN_STATUS).unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[str | None]:
    """Hold RUN_LOCK of the run for the duration (every command that writes into a run, and a
    sweep's worker around its stages: cfglab.stages.run_held); yields None when held, else the
    pid of the process that holds it (read from the lock file, "?" if empty). The lock file
    holds the pid only while held (empty at rest); a run folder made here for the lock is
    removed again if nothing else was put in it (a command refused after taking the lock
    leaves nothing behind)."""
    made = _missing_parents(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield None
        return
    try:
        with open(run_dir / RUN_LOCK, "a+", encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                yield f.read().strip() or "?"
                return
            try:
                f.seek(0)
                f.truncate()
                f.write(str(os.getpid()))
                f.flush()
                yield None
            finally:
                with contextlib.suppress(OSError):  # a full disk must not hide the real error
                    f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        _remove_if_only_lock(made)


def _missing_parents(folder: Path) -> list[Path]:
    """The folders from `folder` up that do not exist yet (innermost first)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_only_lock(made: list[Path]) -> None:
    """Undo run_lock's folders (innermost first) if they hold nothing but the lock file."""
    if not made:
        return
    with contextlib.suppress(OSError):
        if [p.name for p in made[0].iterdir()] == [RUN_LOCK]:
            (made[0] / RUN_LOCK).unlink()
        for folder in made:
            folder.rmdir()  # OSError once a folder is not empty: the rest stay


@contextlib.contextmanager
def open_run_log(run_dir: Path) -> Iterator[TextIO]:
    """The run's log.txt, opened for appending (a resumed run's output follows the earlier),
    line-buffered: a worker killed outright (SIGKILL, a SLURM requeue) leaves its lines."""
    with open(run_dir / RUN_LOG, "a", encoding="utf-8", buffering=1) as log:
        yield log


# ---- compare/: the tidy tables ----------------------------------------------------------------
def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    """A CSV with these columns (missing values empty, other keys ignored), written atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return rundir.write_text_atomic(path, buffer.getvalue())
