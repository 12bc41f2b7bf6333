"""A sweep's plan as printed before any work: its runs, tokens, and how long it will take.

The time is what each run has left, scheduled over the workers as the local pool runs them
(each next run to the first free worker), plus the comparison at the end:
- training, measured on the training loop's own code path (`cfglab.train.timing`): for each
  distinct training shape (model, batch, window, grammar, data source, device), setup, steps
  of `train_step` on the run's own batches, one validation and one checkpoint, in this
  process, with the torch threads a worker gives the run; scaled to the steps the run has
  left (a run resumed from its checkpoint trains the rest) on the loop's schedule;
- the stages after training: rough figures for small models on 2 CPU cores (STAGE_START_S
  once a process, then per run: eval by the strings it generates and scores, analyze by the
  probes' steps, layers and width), stated as rough in the plan;
- a worker's start (a fresh interpreter importing torch and the stages): measured when this
  process imported them, else rough; none with one worker (the runs run in this process);
- the workers sharing the cores: measured alone, a run goes slower when the sweep's workers
  and the machine's other load (the load average) want more cores than there are
  (`contention`).
GPU-sized models (over MEASURE_MAX_PARAMS parameters) get a FLOP count instead: 6 N per
training token at an assumed 40% of an H100's bf16 peak.

Why measure this way: a step timed on another batch shape, without the loop's data, validation
and checkpoints, or with more threads than the run will have (cores // workers, where on a
loaded machine two threads can be many times slower than one), misses the run's real rate,
and the first steps of a process pay one-off costs that the rate must not include.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from cfglab.config import ExperimentConfig, kept_steps
from cfglab.errors import CfglabError
from cfglab.experiment.grid import Experiment, RunSpec

MEASURE_MAX_PARAMS = 5_000_000  # larger models: a FLOP count instead of measured steps
H100_BF16_FLOPS, ASSUMED_MFU = 989e12, 0.4  # for GPU-sized runs' cost, stated as such
# Rough seconds of the stages after training, for small models on 2 CPU cores, measured on the
# smoke grid's model (2 layers of 32) and the quickstart's (4 of 96): a stage's first call in a
# process (imports, loading the exact algorithms' compiled kernels, matplotlib) apart from its
# later calls, which for small models take a fraction of that.
STAGE_START_S = {"eval": 0.7, "analyze": 0.5, "intervene": 0.5, "dynamics": 0.7, "report": 0.2}
EVAL_PER_STRING_S = 1e-3  # per generated or scored string, 2 layers of <= 64 (scaled by size)
ANALYZE_PER_UNIT_S = 1.5e-3  # per probe step x (layers + 1) x (1 + twin) x (1 + n_embd / 128)
INTERVENE_PER_UNIT_S = 5.3e-4  # per hooked string-pass unit (intervene_seconds), scaled by size
REPORT_S, REPORT_ANALYSES_S = 0.3, 1.8  # the report; more with the analyses' figures
DYNAMICS_ANALYSES_SHARE = 0.56  # a checkpoint's analyses / one analyze stage (bench dynamics)
WORKER_START_S = 3.0  # rough, when not measured: a spawned worker importing torch + stages
SPAWN_S = 1.0  # rough: a spawned interpreter's own start and exit, and the pool's hand-offs
COMPARE_S, COMPARE_PER_RUN_S = 1.0, 0.1  # the comparison at the end
_MEASURED_START: list[float] = []  # a worker's start, once measured in this process


def n_params(cfg: ExperimentConfig) -> int:
    """Parameters of a config's model (built on the meta device: no memory, no time)."""
    import torch

    from cfglab.data.vocab import Vocab
    from cfglab.model import build_model, gpt_config

    with torch.device("meta"):
        model = build_model(gpt_config(cfg.model, Vocab.from_grammar(cfg.grammar.load()).size))
    return sum(p.numel() for p in model.parameters())


def _eval_strings_seconds(cfg: ExperimentConfig, strings: int) -> float:
    """Rough: generating or scoring `strings` strings with the run's model."""
    m = cfg.model
    return EVAL_PER_STRING_S * strings * (m.n_layer / 2) * max(1.0, m.n_embd / 64)


def eval_seconds(cfg: ExperimentConfig) -> float:
    """Rough: the eval stage, by the strings it generates and scores."""
    e = cfg.eval
    generated = len(e.cuts) * len(e.temperatures) * (1 + len(e.corrupt)) * e.n_samples
    strings = generated + min(e.n_fixed_prompt, e.n_samples) + (e.n_kl or e.n_samples)
    return _eval_strings_seconds(cfg, strings)


def analyze_seconds(cfg: ExperimentConfig) -> float:
    """Rough: the analyze stage, by the probes' steps, the layers probed and the width."""
    p, m = cfg.probe, cfg.model
    units = p.steps * (m.n_layer + 1) * (1 + p.baseline) * (1 + m.n_embd / 128)
    return ANALYZE_PER_UNIT_S * units


def intervene_seconds(cfg: ExperimentConfig) -> float:
    """Rough: the intervene stage, by its hooked forward passes (erasers per layer and target
    with their random controls, patched cells per pair, ablated heads) and the width. Measured
    on the quickstart (4 x 96, defaults): 23 CPU seconds."""
    iv, m = cfg.intervene, cfg.model
    layers = m.n_layer + 1
    units = iv.n_strings * layers * (1 + iv.random_draws) * 4  # ~4 targets x levels
    units += iv.n_pairs * layers * iv.window * 2  # per level, ~2 levels
    units += iv.n_strings * m.n_layer * m.n_head
    units += iv.n_pairs * 2 * m.n_layer * m.n_head  # patched heads
    units += iv.n_generate * layers * 4 * 2 * 2  # generations per cell: LEACE and random
    return INTERVENE_PER_UNIT_S * units * (1 + m.n_embd / 128)


def later_seconds(cfg: ExperimentConfig, stages: list[str]) -> float:
    """Rough seconds of the stages after training among `stages`, once each has been called in
    the process (STAGE_START_S apart)."""
    total = 0.0
    if "eval" in stages:
        total += eval_seconds(cfg)
    if "analyze" in stages:
        total += analyze_seconds(cfg)
    if "dynamics" in stages:
        d = cfg.dynamics
        per_ckpt = _eval_strings_seconds(cfg, d.n_samples + d.n_kl)
        per_ckpt += DYNAMICS_ANALYSES_SHARE * analyze_seconds(cfg) * bool(d.analyses)
        total += per_ckpt * len(kept_steps(cfg.train.keep_steps, cfg.train.max_steps))
    if "intervene" in stages:
        total += intervene_seconds(cfg)
    if "report" in stages:
        has_analyses = "analyze" in cfg.stages or "dynamics" in cfg.stages
        total += REPORT_S + REPORT_ANALYSES_S * has_analyses
    return total


def _training_shape(cfg: ExperimentConfig) -> str:
    """What a training step's cost depends on (not seeds, not the schedule)."""
    d, t = cfg.to_dict(), cfg.train
    data = {k: v for k, v in d["data"].items() if k != "seed"}
    train = [t.batch_size, t.grad_accum, t.device, t.dtype, t.compile, t.threads, t.objective]
    return json.dumps([d["model"], d["grammar"], data, train, t.eval_batches], sort_keys=True)


def _steps_done(spec: RunSpec) -> int:
    """The step of the run's latest checkpoint (0 if none): a resumed run trains the rest."""
    from cfglab.train import checkpoint as ckpt

    try:
        return int(ckpt.read_state(ckpt.latest_checkpoint(spec.dir))["step"])
    except CfglabError:
        return 0


def _worker_start_seconds() -> tuple[float, bool]:
    """(seconds a fresh worker takes to import torch and the stages, whether measured): timed
    here if this process has not imported them yet, else an earlier measurement or rough.
    Either way this process is then as warm as a worker before its first run."""
    t0 = time.perf_counter()
    is_fresh = "torch" not in sys.modules
    import torch

    import cfglab.stages  # noqa: F401  (what a worker imports before its first run)
    from cfglab.train import loop  # noqa: F401

    # AdamW's first construction imports torch's compiler stack (~1 s on 2 cores): paid once a
    # process, so it belongs to the start, not to the first measured run's setup
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    if is_fresh:
        _MEASURED_START.append(time.perf_counter() - t0)
    if _MEASURED_START:
        return _MEASURED_START[0], True
    return WORKER_START_S, False


def run_costs(
    exp: Experiment, todo: list[RunSpec], threads: int
) -> tuple[list, list[float], set[int]]:
    """Per run left: (training seconds or None when GPU-sized, later stages' seconds); the
    training FLOPs of the GPU-sized runs; the torch threads the measured runs train with (at
    most `threads`, a worker's cap)."""
    from cfglab.experiment.launch import pending_stages
    from cfglab.train.timing import measure_training

    measured: dict[str, Any] = {}  # training shape -> TrainingCost, or None: not measurable
    costs, flops = [], []
    for spec in todo:
        c, stages = spec.config, pending_stages(spec)
        train_s = 0.0
        if "train" in stages:
            done = _steps_done(spec)
            n = n_params(c)
            key = _training_shape(c)
            if n <= MEASURE_MAX_PARAMS and key not in measured:
                try:
                    measured[key] = measure_training(c, max_threads=threads)
                except CfglabError:  # e.g. a CUDA run planned on a machine without one
                    measured[key] = None
            if n > MEASURE_MAX_PARAMS or measured[key] is None:
                tokens = (c.train.max_steps - done) * c.train.batch_size * c.model.block_size
                flops.append(6 * n * tokens)
                costs.append((None, later_seconds(c, stages)))
                continue
            train_s = measured[key].seconds(c, done)
        costs.append((train_s, later_seconds(c, stages)))
    used = {cost.threads for cost in measured.values() if cost is not None}
    return costs, flops, used


def schedule(run_seconds: list[float], workers: int, start_s: float) -> float:
    """The wall time of runs taken in order by `workers` workers, each next run by the first
    free worker (as the local pool does), each worker starting after `start_s`."""
    free = [start_s] * max(1, min(workers, len(run_seconds)))
    for seconds in run_seconds:
        i = free.index(min(free))
        free[i] += seconds
    return max(free)


def contention(workers: int, threads: int) -> tuple[float, float]:
    """(how much slower the runs go when `workers` processes of `threads` threads share the
    cores than they went when measured alone here, the other processes' load): each runnable
    thread gets min(1, cores / (others + ours)) of a core, `others` being the 1-minute load
    average (os.getloadavg), which counts the other work on the machine before the sweep."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    others = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

    def share(ours: int) -> float:
        return min(1.0, (cores or 1) / (others + ours))

    return share(threads) / share(workers * threads), others


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:,.1f} min"


def plan_lines(exp: Experiment, todo: list[RunSpec], estimate: bool = True) -> list[str]:
    """The plan: runs, tokens and (with `estimate` and runs left) the time they will take."""
    tokens = sum(
        s.config.train.max_steps * s.config.train.batch_size * s.config.model.block_size
        for s in exp.runs
    )
    lines = [
        f"experiment {exp.name}: {len(exp.runs)} runs ({len(todo)} with stages left) in "
        f"{exp.out}, stages {', '.join(exp.stages)}, executor {exp.executor['kind']}"
        + (f" x {exp.executor['workers']} workers" if exp.executor["kind"] == "local" else ""),
        f"  axes: {', '.join(exp.axes) or '-'}; {tokens / 1e6:,.1f}M training tokens in all",
    ]
    if estimate and todo:
        lines += _estimate_lines(exp, todo)
    if exp.executor["kind"] == "slurm" and todo:  # what sbatch will be given, SLURM or not here
        from cfglab.experiment.launch import sbatch_lines

        lines.append(f"  sbatch settings of the job array (submitit; {len(todo)} runs):")
        lines += [f"    {line}" for line in sbatch_lines(exp, len(todo))]
    return lines


def _estimate_lines(exp: Experiment, todo: list[RunSpec]) -> list[str]:
    from cfglab.experiment.launch import pending_stages, worker_threads

    is_local = exp.executor["kind"] == "local"
    # SLURM: one job per run, at most array_parallelism at a time, each timed as here
    workers = exp.executor["workers"] if is_local else exp.executor.get("array_parallelism", 0)
    workers = workers or len(todo)
    threads = worker_threads(workers) if is_local else exp.executor.get("cpus_per_run", 2)
    # first, as a worker does: so that the first measured setup is not charged with imports
    imports_s, imports_measured = _worker_start_seconds()
    spawn_s = imports_s + SPAWN_S
    if not (is_local and workers > 1):  # one worker: the runs run in this started process
        spawn_s = 0.0
    costs, flops, used = run_costs(exp, todo, threads)
    # every worker calls each later stage a first time (imports, compiled kernels' load)
    pending = {stage for spec in todo for stage in pending_stages(spec)}
    first_calls = sum(STAGE_START_S.get(stage, 0.0) for stage in pending)
    slower, load = contention(workers, max(used, default=1)) if is_local else (1.0, 0.0)
    lines = []
    measured = [(t, later) for t, later in costs if t is not None]
    if measured:
        total = schedule([t + later for t, later in measured], workers, spawn_s + first_calls)
        total = total * slower + COMPARE_S + COMPARE_PER_RUN_S * len(exp.all_runs)
        train_s = sum(t for t, _ in measured)
        later_s = sum(later for _, later in measured) + first_calls * min(workers, len(measured))
        how = "its imports measured" if imports_measured else "rough"
        start = f", worker start {spawn_s:.1f} s ({how})"
        per_run = "/".join(map(str, sorted(used))) or "-"
        lines.append(
            f"  estimated time {_duration(total)} on {min(workers, len(measured))} worker(s)"
            + ("" if is_local else " (timed here; the queue's wait comes on top)")
            + f": training {_duration(train_s)} in all (measured on the training loop, "
            f"{per_run} thread(s) per run), later stages {_duration(later_s)} in all (rough)"
            + (start if is_local and workers > 1 else "")
            + (
                f"; x{slower:.2f} for {workers} workers sharing the cores at load {load:.1f}"
                if slower > 1.005
                else ""
            )
        )
    if flops:
        gpu_h = sum(flops) / (H100_BF16_FLOPS * ASSUMED_MFU) / 3600
        lines.append(
            f"  GPU-sized runs: {sum(flops):.2e} training FLOPs (6 N per token) = {gpu_h:,.0f} "
            f"H100-hours at {ASSUMED_MFU:.0%} of its bf16 peak (measured on an H200: 39%, "
            "README 'GPUs')"
        )
    return lines
