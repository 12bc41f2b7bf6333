"""The stages of an experiment: each one function of (config, run directory), one dict of them.

    STAGES["eval"](cfg, Path("runs/quickstart"))   # -> runs/quickstart/eval

`cfglab run CONFIG` runs `cfg.stages` in order on one run directory; `cfglab eval RUN`,
`cfglab analyze RUN`, ... run the same function on the run's saved config.json, their flags
being shorthands for `--set` overrides (`load_run_config`). `check_config` checks, before any
work, everything about the stages that the config alone tells (the run command, the sweep's
every grid point and each stage command call it). Every setting comes from the config
(`cfglab.config`), every file is written through `cfglab.rundir`, and every stage after training
reads the run's own copies (config.json, grammar.cfg, checkpoints), never the files the run was
made from. Each returns the path it wrote.

This module sits above every stage package (it may import any of them); only the CLI and the
experiment runner sit above it.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from cfglab import expdir, rundir
from cfglab.config import NOT_TRAINING, STAGE_NAMES, ExperimentConfig, flat
from cfglab.errors import CfglabError, ConfigError
from cfglab.stages.analysis import check_probe_targets, run_analyze, run_report
from cfglab.stages.common import (
    check_dataset,
    check_results_have_checkpoint,
    load_run_config,
    say,
)
from cfglab.stages.dynamics import check_dynamics, run_dynamics
from cfglab.stages.evaluation import check_eval, generate_from_run, run_eval
from cfglab.stages.interventions import check_intervene, run_intervene


def run_train(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    allow_changes: bool = False,
    progress: bool = True,
) -> Path:
    """Train per cfg.train (also under torchrun); the run's checkpoints -> run_dir/ckpt."""
    from cfglab.train.loop import train

    train(cfg, resume=resume, run_dir=run_dir, progress=progress, allow_changes=allow_changes)
    return Path(run_dir) / "ckpt"


# name -> run(cfg, run_dir) -> Path, in the order `cfglab run` runs them
# (config.STAGE_NAMES is the torch-free list of these names; a test keeps the two equal)
STAGES: dict[str, Callable[[ExperimentConfig, Path], Path]] = {
    "train": run_train,
    "eval": run_eval,
    "analyze": run_analyze,
    "intervene": run_intervene,  # opt-in: never in config.DEFAULT_STAGES
    "dynamics": run_dynamics,
    "report": run_report,
}
if tuple(STAGES) != STAGE_NAMES:  # config validates stage names torch-free, from STAGE_NAMES
    raise ImportError(f"STAGES {tuple(STAGES)} differ from config.STAGE_NAMES {STAGE_NAMES}")


# the folders of a run each stage writes into (rundir's layout)
STAGE_FOLDERS = {
    "train": ("ckpt",),  # train/checkpoint.py's CKPT_DIR (a torch module: not imported here)
    "eval": (rundir.EVAL,),
    "analyze": (rundir.ANALYZE,),
    "intervene": (rundir.ANALYZE,),
    "dynamics": (rundir.ANALYZE,),
    "report": (rundir.REPORT, f"{rundir.REPORT}/figures"),
}


def check_config(cfg: ExperimentConfig, stages: list[str] | None = None) -> None:
    """Everything about the stages that the config alone tells, before any work: an encoder
    asked to generate, prompts that do not fit the window, probe targets the grammar does not
    have, unknown family names, noise the grammar cannot take, an encoder asked to intervene.
    `stages`: those to check (default cfg.stages)."""
    import dataclasses

    from cfglab.data.noise import TrainingNoise

    stages = cfg.stages if stages is None else stages
    grammar = cfg.grammar.load()
    if cfg.data.in_context is not None:  # every window its own grammar: no fixed-grammar stage
        from cfglab.data.in_context import check_stages

        check_stages(cfg, grammar, stages)
    check_language(cfg, grammar, stages)
    if "train" in stages and cfg.data.exclude:  # rule names, each part still seen on its own
        from cfglab.data.exclude import check_combinations

        check_combinations(grammar, cfg.data.exclude, cfg.data.max_len)
    if "eval" in stages and cfg.eval.compositions:
        from cfglab.data.exclude import parse_combinations

        parse_combinations(grammar, cfg.eval.compositions, "eval.compositions")
    if cfg.data.metadata.levels or cfg.eval.metadata:  # trees to read, tokens to prompt with
        from cfglab.data.metadata import check_metadata

        check_metadata(cfg, grammar)
    if "train" in stages and cfg.data.noise.fraction > 0:
        TrainingNoise(**dataclasses.asdict(cfg.data.noise)).check(grammar)
    if "eval" in stages:
        check_eval(cfg)
    if "analyze" in stages or "dynamics" in stages:
        check_probe_targets(cfg, grammar)
    if "dynamics" in stages:
        check_dynamics(cfg)
    if "intervene" in stages:
        check_intervene(cfg, grammar)


def check_language(cfg: ExperimentConfig, grammar, stages: list[str]) -> None:
    """A language beyond context-free (cfglab.languages) has no trees and no rules: refuse,
    before any work, every setting that needs them."""
    from cfglab.grammar.cfg import Grammar

    if isinstance(grammar, Grammar):
        return
    needs_trees = {
        "data.sampler physicslm4 (the authors' generator of CFG strings)": (
            cfg.data.sampler != "fast"
        ),
        "data.noise (perturbed pretraining edits strings by the grammar)": (
            cfg.data.noise.fraction > 0
        ),
        "data.exclude (held-out rule combinations)": bool(cfg.data.exclude),
        "eval.compositions (held-out rule combinations)": bool(cfg.eval.compositions),
        "eval.corrupt (robustness references repair strings by the grammar)": (
            "eval" in stages and bool(cfg.eval.corrupt)
        ),
        "the intervene stage (it erases tree labels)": "intervene" in stages,
    }
    for what, asked in needs_trees.items():
        if asked:
            raise ConfigError(
                f"{what} needs a context-free grammar, and {grammar.name!r} is a language beyond "
                "context-free (no trees, no rules): drop it for this run"
            )


# the config sections a stage's results depend on, beside the training record
STAGE_SECTIONS = {
    "train": (),
    "eval": ("eval",),
    "analyze": ("analyze", "probe", "attention"),
    "intervene": ("analyze", "intervene"),
    "dynamics": ("dynamics", "eval", "probe", "attention"),
    "report": ("report",),
}


# settings added after runs were made, with the value at which each changes nothing (the
# feature is off): a stage key leaves them out at that value, so that a run made before the
# setting existed stays current (its stages are not redone after an upgrade)
ADDED_OFF = {
    "data.metadata.levels": ("data.metadata", []),
    "data.in_context": ("data.in_context", None),
    "model.pos_init": ("model.pos_init", "uniform"),
    "eval.metadata": ("eval.metadata", None),
}


def _keyed_settings(cfg: ExperimentConfig, stage: str) -> tuple[dict, dict]:
    settings = flat(cfg.to_dict())
    record = {
        k: v
        for k, v in settings.items()
        if k.split(".")[0] in ("grammar", "data", "model", "train") and k not in NOT_TRAINING
    }
    own = {
        k: v
        for k, v in settings.items()
        if k.split(".")[0] in STAGE_SECTIONS[stage]
        and k.split(".")[-1] not in ("device", "threads")
    }
    return record, own


def _off_prefixes(settings: dict) -> list[str]:
    """The ADDED_OFF settings that are off here (their whole section: prefix and below)."""
    return [
        prefix
        for key, (prefix, off) in ADDED_OFF.items()
        if key in settings and settings[key] == off
    ]


def _without(settings: dict, prefixes: Sequence[str]) -> dict:
    return {
        k: v
        for k, v in settings.items()
        if not any(k == p or k.startswith(p + ".") for p in prefixes)
    }


def stage_key(cfg: ExperimentConfig, stage: str) -> str:
    """A hash of the settings a stage's result depends on: the training record (every grammar,
    data, model and train setting but those that change nothing learned), plus the stage's own
    sections (STAGE_SECTIONS) without devices and threads, less the ADDED_OFF settings that are
    off. Equal keys: the stage's result would be the same."""
    record, own = _keyed_settings(cfg, stage)
    off = _off_prefixes({**record, **own})
    return rundir.sha256(json.dumps([_without(record, off), _without(own, off)], sort_keys=True))


def stage_is_done(marks: dict[str, str], cfg: ExperimentConfig, stage: str) -> bool:
    """Whether a run's stage marks (stages.json) hold `stage` as done under cfg's settings: its
    key, or the key an earlier cfglab wrote with some of the ADDED_OFF settings present at
    their off value (a run made while they were being added)."""
    mark = marks.get(stage)
    if mark is None:
        return False
    if mark == stage_key(cfg, stage):
        return True
    record, own = _keyed_settings(cfg, stage)
    off = _off_prefixes({**record, **own})
    for n in range(len(off)):
        for dropped in itertools.combinations(off, n):
            keyed = [_without(record, dropped), _without(own, dropped)]
            if mark == rundir.sha256(json.dumps(keyed, sort_keys=True)):
                return True
    return False


def check_run_folder(name: str, cfg: ExperimentConfig, run_dir: Path) -> None:
    """Before any work, what the run folder tells about stage `name`: no file where one of its
    folders goes, every folder it writes takes a file (a read-only or unwritable folder fails
    now, not after the work), a folder holding results but no checkpoint is not trained over,
    and a saved dataset the stage reads is still there."""
    advice = f"the {name} stage writes there: make it writable, or work on a copy of the run"
    for folder in ("", *STAGE_FOLDERS.get(name, ())):
        path = run_dir / folder
        if path.exists() and not path.is_dir():
            raise ConfigError(
                f"{path} is a file where the {name} stage writes a folder; move it away"
            )
        rundir.check_writable(path, advice)
    if name == "train":
        check_results_have_checkpoint(run_dir)
    if name in ("eval", "dynamics"):
        check_dataset(cfg, run_dir, name)


_HELD: set[Path] = set()  # the run folders whose lock this process holds


@contextlib.contextmanager
def run_held(run_dir: Path) -> Iterator[str | None]:
    """The run's lock (expdir.run_lock), taken once per process: yields None when this process
    holds it (taken now, or already: a sweep's worker holds its run, then runs the stages,
    which hold it too), else the pid of the process that holds it."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        yield None
        return
    with expdir.run_lock(Path(run_dir)) as owner:
        if owner is not None:
            yield owner
            return
        _HELD.add(key)
        try:
            yield None
        finally:
            _HELD.discard(key)


@contextlib.contextmanager
def holding_run(run_dir: Path) -> Iterator[None]:
    """The run's lock for a command that writes into it: CfglabError naming the process that
    holds it. Under torchrun rank 0 holds it for every rank."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    with run_held(run_dir) as owner:
        if owner is not None:
            raise CfglabError(
                f"{run_dir} is in use by another cfglab process (pid {owner}: a sweep's worker or "
                "another command writing into it); wait for it to end, or stop it"
            )
        yield


def run_stage(
    name: str, cfg: ExperimentConfig, run_dir: Path, *, skip_done: bool = False, **options
) -> Path | None:
    """STAGES[name] on a run, recorded in the run's stages.json when it completes; with
    `skip_done`, a stage already completed under the same settings (stage_key) is skipped
    (None). Training resumes from its checkpoint when one exists (and skip_done). Option
    `only` (analyze): run these analysis families only (the stage is then not recorded). The
    run is held (holding_run) while the stage works; a failed read or write (a full disk) is
    one CfglabError naming it."""
    run_dir = Path(run_dir)
    check_config(cfg, [name])
    check_run_folder(name, cfg, run_dir)
    with one_line_os_errors(f"the {name} stage", run_dir), holding_run(run_dir):
        return _run_stage_held(name, cfg, run_dir, skip_done, options)


@contextlib.contextmanager
def one_line_os_errors(what: str, run_dir: Path):
    """A failed read or write while a stage works (a full disk, a folder made read-only since
    the check) as one CfglabError naming the file, not a traceback. Ctrl-C passes through, and
    freezes the objects alive (gc.freeze): the process ends next, and the interpreter's shutdown
    then skips collecting torch's and Numba's objects one by one (measured: 0.6 of the 0.85 s
    an eval takes to exit after Ctrl-C; 2.6 s of it on two busy cores, now 0.6 s)."""
    try:
        yield
    except KeyboardInterrupt:
        gc.freeze()
        raise
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES)
        fix = "free disk space or fix the folder's permissions, then run" if full else "run"
        raise CfglabError(
            f"{what} on {run_dir} failed: {exc.strerror or exc}{where}; every file is written "
            f"whole or not at all: {fix} it again"
        ) from None


def _run_stage_held(
    name: str, cfg: ExperimentConfig, run_dir: Path, skip_done: bool, options: dict
) -> Path | None:
    from cfglab.train import checkpoint as ckpt

    key = stage_key(cfg, name)
    if skip_done and stage_is_done(rundir.read_stage_marks(run_dir), cfg, name):
        say(f"== {name}: done earlier with these settings, skipped")
        return None
    if name == "train":
        if skip_done and (run_dir / ckpt.CKPT_DIR / ckpt.LATEST).exists():
            options["resume"] = True
        wrote = run_train(cfg, run_dir, **options)
    else:
        wrote = STAGES[name](cfg, run_dir, **options)
    from cfglab.train import dist

    if dist.is_master() and options.get("only") is None:
        rundir.mark_stage_done(run_dir, name, key)
    return wrote


def run_stages(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    allow_changes: bool = False,
    progress: bool = True,
    skip_done: bool = False,
) -> list[Path | None]:
    """cfg.stages in order on one run directory (`cfglab run`, and each run of a sweep with
    skip_done); under torchrun every rank trains and rank 0 alone runs the later stages."""
    check_config(cfg)  # before training, not after it
    for name in cfg.stages:  # and the folder's side, before the lock makes the folder
        check_run_folder(name, cfg, Path(run_dir))
    # one process from the first stage to the last
    with one_line_os_errors("cfglab run", Path(run_dir)), holding_run(Path(run_dir)):
        return _run_stages_held(cfg, Path(run_dir), resume, allow_changes, progress, skip_done)


def _run_stages_held(
    cfg: ExperimentConfig,
    run_dir: Path,
    resume: bool,
    allow_changes: bool,
    progress: bool,
    skip_done: bool,
) -> list[Path | None]:
    from cfglab.train import dist

    wrote: list[Path | None] = []
    for name in cfg.stages:
        if name != "train" and not dist.is_master():
            break
        if dist.is_master():
            say(f"== cfglab run: {name}")
        options = {}
        if name == "train":
            options = {"resume": resume, "allow_changes": allow_changes, "progress": progress}
        # a stage is skipped only while every stage before it was: one that ran made the
        # results after it stale
        fresh = skip_done and all(w is None for w in wrote)
        wrote.append(run_stage(name, cfg, run_dir, skip_done=fresh, **options))
    return wrote


__all__ = [
    "STAGES",
    "check_config",
    "generate_from_run",
    "load_run_config",
    "run_held",
    "run_stage",
    "run_stages",
    "stage_key",
    "stage_is_done",
]
