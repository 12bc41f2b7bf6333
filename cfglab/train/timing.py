"""What a run's training costs, measured on the training loop's own code path (a sweep's plan).

`measure_training(cfg)` builds the run as `loop.setup` does (model, AdamW, the data source with
the config's batch shape, sampler and prefetch, the compile / DDP wrappers, torch threads by the
run's rule under $CFGLAB_MAX_THREADS), then times, in this process:
  - `loop.train_step` on windows drawn from the run's own data source, after WARMUP_STEPS
    untimed steps (the first steps pay one-off costs: AdamW's state, allocator growth, a
    compile), until TIMED_STEPS steps or TIMED_SECONDS have passed;
  - one `loop.validate` (the validation loss on the run's held-out windows);
  - one `loop.save_checkpoint`, written into a scratch folder (rundir.scratch_folder).
`TrainingCost.seconds(cfg)` adds them up as the loop spends them: setup, max_steps steps, a
validation every eval_every steps and at the end, a checkpoint every ckpt_every steps, at each
kept step and at the end. Nothing of the run's own folder is read or written.

Not counted: with data.noise, the exact recognizer's share of out-of-language strings at every
log step (`steps.out_of_language`), and the first compilation of cfglab.exact's kernels.
"""

from __future__ import annotations

import io
import os
import time
from contextlib import closing, contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch

from cfglab import rundir
from cfglab.config import ExperimentConfig, kept_steps
from cfglab.train import loop
from cfglab.train.steps import CtrlC, lr_at

WARMUP_STEPS = 3  # untimed: their cost is the first steps' one-off work, not the steady rate
TIMED_STEPS = 20  # at most this many timed steps ...
TIMED_SECONDS = 1.0  # ... or as many as fit in this time (at least one)


@dataclass
class TrainingCost:
    """Measured seconds of the parts of one run's training."""

    setup_s: float  # loop.setup: model, optimizer, data source, validation windows
    step_s: float  # one optimizer step, its batch included (mean over the timed steps)
    validate_s: float  # one validation loss
    checkpoint_s: float  # one checkpoint
    threads: int  # torch threads the steps ran with (the run's)

    def seconds(self, cfg: ExperimentConfig, steps_done: int = 0) -> float:
        """The training's seconds from step `steps_done` to train.max_steps (the loop's
        schedule: a validation every eval_every steps and at the end, a checkpoint every
        ckpt_every steps, at each kept step and at the end)."""
        t = cfg.train
        left = range(steps_done + 1, t.max_steps + 1)  # the steps still to train (1-based)
        keep = set(kept_steps(t.keep_steps, t.max_steps)) | {t.max_steps}
        n_val = sum(1 for s in left if (t.eval_every and s % t.eval_every == 0) or s == t.max_steps)
        n_ckpt = sum(1 for s in left if s % t.ckpt_every == 0 or s in keep)
        return (
            self.setup_s
            + len(left) * self.step_s
            + n_val * self.validate_s
            + n_ckpt * self.checkpoint_s
        )


@contextmanager
def _max_threads(cap: int | None):
    """$CFGLAB_MAX_THREADS set to `cap` (a sweep worker's share of the cores) for the block,
    and torch's thread count restored after it (setup sets it by the run's rule)."""
    old_env, old_threads = os.environ.get("CFGLAB_MAX_THREADS"), torch.get_num_threads()
    if cap is not None:
        os.environ["CFGLAB_MAX_THREADS"] = str(cap)
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("CFGLAB_MAX_THREADS", None)
        else:
            os.environ["CFGLAB_MAX_THREADS"] = old_env
        torch.set_num_threads(old_threads)


def measure_training(cfg: ExperimentConfig, max_threads: int | None = None) -> TrainingCost:
    """Time the parts of a run's training (see the module docstring) as the run would run them,
    with at most `max_threads` torch threads (a sweep worker's cap; None: the config's own)."""
    with _max_threads(max_threads), rundir.scratch_folder("cfglab-timing-") as scratch:
        run_dir = Path(scratch) / "run"  # never created by setup: nothing to resume or refuse
        t0 = time.perf_counter()
        with redirect_stdout(io.StringIO()):  # what setup says (threads) is the run's to say
            s = loop.setup(cfg, run_dir, resume=False, allow_changes=False)
        setup_s = time.perf_counter() - t0
        p = loop.Progress(
            step=0,
            end=cfg.train.max_steps,
            t0=time.perf_counter(),
            first_bad=torch.full((), -1, dtype=torch.long, device=s.info.device),
            bad_loss=torch.zeros((), device=s.info.device),
        )
        n_max = WARMUP_STEPS + TIMED_STEPS
        batches = s.train_data.iterate(0, n_max, prefetch=cfg.data.prefetch)
        ctrl_c = CtrlC()  # not entered: Ctrl-C keeps interrupting the plan at once
        with closing(batches):
            for _ in range(WARMUP_STEPS):
                _step(s, p, next(batches), ctrl_c)
            t0 = time.perf_counter()
            timed = 0
            while timed < TIMED_STEPS and (timed == 0 or time.perf_counter() - t0 < TIMED_SECONDS):
                _step(s, p, next(batches), ctrl_c)
                timed += 1
            step_s = (time.perf_counter() - t0) / timed
        t0 = time.perf_counter()
        loop.validate(s, p, None, lr_at(p.step, cfg), None)
        _synchronize(s.info.device)
        validate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loop.save_checkpoint(s, p.step)
        checkpoint_s = time.perf_counter() - t0
        return TrainingCost(setup_s, step_s, validate_s, checkpoint_s, torch.get_num_threads())


def _step(s: loop.Setup, p: loop.Progress, windows: torch.Tensor, ctrl_c: CtrlC) -> None:
    """One step as the loop takes it: the batch to the device, train_step, finished."""
    loop.train_step(
        s, p, windows.to(s.info.device, non_blocking=True), lr_at(p.step, s.cfg), ctrl_c
    )
    _synchronize(s.info.device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
