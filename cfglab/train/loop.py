"""Stage 5: the training loop, read top to bottom. `train(cfg)` learns a grammar; that is all.

`train` is five named parts, in the order they run:
  1. `setup`: resolve everything that can fail (device, world size, grammar, objective, model
     variant, the checkpoint to resume) before any sampling, so a bad config fails in a second;
     then the model, AdamW, the data sources, the compile / DDP wrappers;
  2. `train_step`: fresh windows -> grad-accumulated forward/backward (bf16 autocast on CUDA)
     -> clip -> step; a NaN/inf loss stops the run and keeps the last good checkpoint;
  3. `log_step`: every log_every steps a metrics.jsonl line (the record; TensorBoard, if
     installed, is a view of the same numbers);
  4. `validate`: every eval_every steps and at the end, the validation loss on a fixed held-out
     set (`steps.validation_loss`, which other stages call on a loaded checkpoint);
  5. `save_checkpoint`: every ckpt_every steps, at train.keep_steps and at the end, atomically.
Ctrl-C (`CtrlC`): finish the current step, save, exit 130 (resume with --resume); a second
Ctrl-C stops at once without saving. The pieces of a step itself live in steps.py.

Same code for 1 process or N under torchrun (see dist.py): each rank computes its slice of the
fixed global batch, DDP averages gradients, rank 0 alone writes files.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager, ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cfglab import rundir
from cfglab.config import ExperimentConfig, kept_steps
from cfglab.data.dataset import TRAIN
from cfglab.data.metadata import model_vocab_size
from cfglab.data.vocab import Vocab
from cfglab.errors import CfglabError, ConfigError
from cfglab.grammar import Grammar
from cfglab.model import build_model, gpt_config
from cfglab.seeds import stream_seed
from cfglab.train import checkpoint as ckpt
from cfglab.train import dist
from cfglab.train.objectives import get_objective
from cfglab.train.steps import (
    CtrlC,
    autocast_for,
    forward_backward,
    lr_at,
    make_data,
    make_optimizer,
    out_of_language,
    step_probe,
    validation_loss,
    validation_windows,
    wrap_model,
)
from cfglab.train.steps import training_noise as training_noise  # imported from here elsewhere
from cfglab.train.threads import apply_threads


class DivergedError(CfglabError):
    """The loss became NaN or infinite."""


# ---- 1. setup ----------------------------------------------------------------------------------
@dataclass
class Setup:
    """Everything `train` resolves before its first step (`setup` builds it)."""

    cfg: ExperimentConfig
    run_dir: Path
    info: dist.DistInfo  # rank, world size, device
    grammar: Grammar
    vocab: Vocab
    objective: Any  # objectives.py: NextToken or MaskedLM
    raw_model: nn.Module  # the GPT itself: what checkpoints save
    model: nn.Module  # raw_model, compiled and/or DDP-wrapped: what the steps call
    optimizer: torch.optim.AdamW
    autocast: AbstractContextManager  # bf16 autocast or a no-op (steps.autocast_for)
    train_data: Any  # FreshStream or SavedDataset: iterate(start, end) -> (B_local, T+1) each
    val_windows: list[torch.Tensor]  # the fixed held-out set (steps.validation_windows)
    start: int  # the first step to train: 0, or the resumed checkpoint's step
    changes: dict[str, list]  # training settings changed on resume: {key: [old, new]}
    keep_steps: frozenset[int]  # checkpoints never pruned: train.keep_steps, this and past runs

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.model.block_size


def setup(
    cfg: ExperimentConfig, run_dir: Path, *, resume: bool, allow_changes: bool
) -> Setup | None:
    """Resolve and build everything for `train`, checking all that can fail before any
    sampling. None when resuming a run already trained to train.max_steps (nothing to do)."""
    t = cfg.train
    env = dist.torchrun_env()  # checked before joining a process group, so a bad batch
    local_batch = dist.local_batch(t.batch_size, env[2] if env else 1)  # fails fast, alone
    info = dist.setup(t.device)
    if local_batch % t.grad_accum:
        raise ConfigError(
            f"per-process batch {local_batch} (train.batch_size {t.batch_size} / "
            f"{info.world_size} processes) is not divisible by train.grad_accum "
            f"{t.grad_accum}"
        )
    grammar = cfg.grammar.load()
    vocab = Vocab.from_grammar(grammar)
    objective = get_objective(t.objective, t.mlm_prob)
    # seeded by train.seed: the analyses' random-init twin is this same draw
    size = model_vocab_size(grammar, cfg.data.metadata.levels)  # + data.metadata's tokens
    model = build_model(gpt_config(cfg.model, size), seed=t.seed)  # checks the variant
    model.to(info.device)
    optimizer = make_optimizer(model, cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; give a folder for the run")
    start, state, changes = 0, None, {}
    if resume:
        start, state, changes = _resume(cfg, run_dir, grammar, model, optimizer, allow_changes)
        if start == t.max_steps:  # finished: nothing to train, nothing to rewrite
            dist.print0(f"cfglab train: {run_dir} is already trained to step {start}")
            return None
    elif (run_dir / ckpt.CKPT_DIR / ckpt.LATEST).exists():
        raise ConfigError(
            f"{run_dir} already holds a trained run; pass --resume to continue it, "
            "or choose another run name (--set name=...) or --out"
        )
    probe = step_probe(model, cfg, vocab, objective, info.device)  # None off the CPU
    dist.print0(apply_threads(t.threads, probe, (state or {}).get("threads")))
    window = cfg.model.block_size + 1  # x = window[:-1], y = window[1:] (see objectives.py)
    train_data = make_data(cfg, grammar, window, info, TRAIN)
    val_windows = validation_windows(cfg, grammar, rank=info.rank, world_size=info.world_size)
    if state is not None:  # continue the RNG streams (dropout) and a sequential data stream
        ckpt.set_rng_state(state["rng"])
        if hasattr(train_data, "restore_stream_state"):
            train_data.restore_stream_state(start, state.get("data_stream"))
    wrapped = wrap_model(model, cfg, info)
    keep_steps = frozenset(kept_steps(t.keep_steps, t.max_steps))
    if state is not None:  # and those the run kept so far (a longer run keeps them all)
        old = rundir.read_run_config(run_dir).train
        keep_steps |= frozenset(kept_steps(old.keep_steps, old.max_steps))
    return Setup(
        cfg=cfg,
        run_dir=run_dir,
        info=info,
        grammar=grammar,
        vocab=vocab,
        objective=objective,
        raw_model=model,
        model=wrapped,
        optimizer=optimizer,
        autocast=autocast_for(cfg, info.device),
        train_data=train_data,
        val_windows=val_windows,
        start=start,
        changes=changes,
        keep_steps=keep_steps,
    )


def _resume(
    cfg: ExperimentConfig,
    run_dir: Path,
    grammar: Grammar,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    allow_changes: bool,
) -> tuple[int, dict[str, Any], dict[str, list]]:
    """Load the latest complete checkpoint into `model` and `optimizer`, refusing a changed
    model or grammar, and changed training settings unless `allow_changes`.
    Returns (its step, its state.json, the changed settings {key: [old, new]})."""
    t = cfg.train
    path = ckpt.latest_checkpoint(run_dir)
    state = ckpt.read_state(path)  # checked: step, RNG states, the folder's step
    start = int(state["step"])
    changes = resume_changes(run_dir, cfg, grammar)
    if changes and not allow_changes:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise ConfigError(
            f"--resume: the training settings differ from the run's config.json ({listed}); "
            f"resume with the run's own config ({run_dir / rundir.CONFIG}), or pass "
            "--allow-changes to continue with these (recorded in the run's history.jsonl)"
        )
    if start > t.max_steps:
        raise ConfigError(
            f"--resume: the run is at step {start}, past train.max_steps {t.max_steps}; "
            f"raise train.max_steps (with --allow-changes) or leave the run as it is"
        )
    ckpt.load_weights(model, path)
    ckpt.load_optimizer(optimizer, path)
    return start, state, changes


def resume_changes(run_dir: Path, cfg: ExperimentConfig, grammar) -> dict[str, list]:
    """The training settings of `cfg` that differ from the run's config.json: {key: [old, new]}.
    ConfigError if the model or the grammar (by content: the run's grammar.cfg) differ, which no
    resume can bridge."""
    changes = rundir.record_changes(run_dir, cfg, grammar)
    if changes.pop("grammar", None):
        raise ConfigError(
            f"--resume: the grammar differs from the one {run_dir} was trained on (its "
            f"grammar.cfg; was {cfg.grammar.name} edited?); resume with the run's own grammar: "
            f"--set grammar.name={run_dir / rundir.GRAMMAR}"
        )
    model = [k for k in changes if k.startswith("model.")]
    if model:
        k = model[0]
        raise ConfigError(
            f"--resume: {k} differs from the run's config.json ({changes[k][0]!r} vs "
            f"{changes[k][1]!r}); a checkpoint only fits its own model: start a new run"
        )
    return changes


def start_run_files(s: Setup) -> None:
    """Master only: the run folder's record (config, grammar, fingerprint), the header line, and
    metrics.jsonl cut back to the start step (a resumed run logs the steps after its checkpoint
    again; a restarted run, killed before its first checkpoint, logs every step again)."""
    if not s.info.is_master:
        return
    cfg, t = s.cfg, s.cfg.train
    rundir.write_run_record(s.run_dir, cfg, s.grammar, cfg.data.dataset)  # makes the folder
    n_params = sum(p.numel() for p in s.raw_model.parameters())
    dist.print0(
        f"cfglab train: {s.run_dir} | {n_params / 1e6:.2f}M parameters | "
        f"{s.info.world_size} process(es) on {s.info.device} | steps {s.start}->{t.max_steps} | "
        f"{s.tokens_per_step} tokens/step | grammar {s.grammar.name}"
    )
    rundir.truncate_metrics(s.run_dir, s.start)
    if s.changes:
        rundir.append_history(s.run_dir, {"step": s.start, "changed": s.changes})


# ---- the loop ----------------------------------------------------------------------------------
def train(
    cfg: ExperimentConfig,
    *,
    resume: bool = False,
    run_dir: str | Path | None = None,
    progress: bool = True,
    allow_changes: bool = False,
    stop_after: int | None = None,
) -> Path:
    """Train per `cfg`; returns the run directory. `resume`: continue from the latest complete
    checkpoint, refusing changed training settings unless `allow_changes` (then recorded in the
    run's history.jsonl). `stop_after` ends the process's work after that many steps as if
    interrupted (for tests of resume), without the exit."""
    t = cfg.train
    run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir
    s = setup(cfg, run_dir, resume=resume, allow_changes=allow_changes)
    if s is None:
        return run_dir
    start_run_files(s)
    end = t.max_steps if stop_after is None else min(t.max_steps, s.start + stop_after)
    with ExitStack() as stack:
        recorder = stack.enter_context(closing(Recorder(s)))
        bar = _progress_bar(s, progress, stack)
        s.model.train()
        p = Progress(
            step=s.start,
            end=end,
            t0=time.perf_counter(),
            first_bad=torch.full((), -1, dtype=torch.long, device=s.info.device),
            bad_loss=torch.zeros((), device=s.info.device),
        )
        batches = stack.enter_context(
            closing(s.train_data.iterate(s.start, end, prefetch=cfg.data.prefetch))
        )
        ctrl_c = stack.enter_context(CtrlC())
        while p.step < end:
            lr = lr_at(p.step, cfg)
            tw = time.perf_counter()
            windows = next(batches).to(s.info.device, non_blocking=True)  # (B_local, T+1)
            p.data_wait += time.perf_counter() - tw
            stop = train_step(s, p, windows, lr, ctrl_c)  # p.step += 1
            record = log_step(s, p, lr, bar)
            if (t.eval_every and p.step % t.eval_every == 0) or p.step == t.max_steps:
                record = validate(s, p, record, lr, bar)
            if record is not None:
                recorder.write(record)
            saved = p.step % t.ckpt_every == 0 or p.step == t.max_steps or p.step in s.keep_steps
            if saved or stop:  # a stop saves the step it finished
                save_checkpoint(s, p.step)
            if stop:
                dist.print0(
                    f"\ncfglab: interrupted; saved step {p.step} in {run_dir}; "
                    "continue with --resume"
                )
                raise KeyboardInterrupt
        if stop_after is not None and p.step % t.ckpt_every and p.step < t.max_steps:
            save_checkpoint(s, p.step)  # where stop_after ended the work
    elapsed = time.perf_counter() - p.t0
    dist.print0(
        f"cfglab train: done, step {p.step}, loss {p.last_loss:.4f}, "
        f"{(p.step - s.start) * s.tokens_per_step / max(elapsed, 1e-9):,.0f}"
        f" tokens/s, {elapsed:.0f} s"
    )
    return run_dir


@dataclass
class Progress:
    """What the step loop carries from one step to the next."""

    step: int  # optimizer steps done
    end: int  # this process stops after this step
    t0: float  # time.perf_counter() when the loop started
    first_bad: torch.Tensor  # () long, on the device: the first non-finite step (1-based), or -1
    bad_loss: torch.Tensor  # () float, on the device: its loss (0 until then)
    data_wait: float = 0.0  # seconds spent waiting for batches
    last_loss: float = math.nan  # the last loss read on the host
    due: bool = False  # whether the last step's loss was read on the host


# ---- 2. the step -------------------------------------------------------------------------------


def train_step(s: Setup, p: Progress, windows: torch.Tensor, lr: float, ctrl_c: CtrlC) -> bool:
    """One optimizer step at learning rate `lr` on this rank's windows (B_local, T+1): the
    gradient (steps.forward_backward), clipped; the loss averaged over ranks, read on the host
    only when due; DivergedError (nothing stepped or saved) if a loss so far was not finite.
    Returns whether Ctrl-C was pressed, on any rank, by the end of the step's computation."""
    cfg, info, t = s.cfg, s.info, s.cfg.train
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    gen = torch.Generator(device=info.device).manual_seed(
        stream_seed(cfg.data.seed, "objective", TRAIN, p.step, info.rank)
    )
    loss = forward_backward(
        s.model,
        s.objective,
        windows,
        s.vocab,
        gen,
        grad_accum=t.grad_accum,
        autocast=s.autocast,
        is_distributed=info.is_distributed,
    )
    if t.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), t.grad_clip)
    stop = ctrl_c.pressed
    if info.is_distributed:  # one collective: the global loss and "someone pressed Ctrl-C"
        packet = torch.stack([loss, torch.tensor(float(stop), device=info.device)])
        torch.distributed.all_reduce(packet)
        loss, stop = packet[0] / info.world_size, bool(packet[1] > 0)
    # The loss is read on the host only where it is used (a log, evaluation or checkpoint step,
    # the end, a stop; every step on CPU, where reading it is free): on a GPU a read per step
    # would wait for the step to finish. The first non-finite loss and its step are kept on the
    # device until then; nothing is saved before that check.
    is_bad = ~torch.isfinite(loss)
    p.first_bad = torch.where(is_bad & (p.first_bad < 0), p.step + 1, p.first_bad)
    p.bad_loss = torch.where(is_bad & (p.bad_loss == 0), loss, p.bad_loss)
    p.due = _loss_is_due(s, p.step + 1, p.end, stop)
    if p.due:
        p.last_loss = float(loss)
        if int(p.first_bad) >= 0:
            s.optimizer.zero_grad(set_to_none=True)
            raise DivergedError(
                f"loss is {float(p.bad_loss)} at step {int(p.first_bad)}; stopped without "
                f"saving, so the last good checkpoint in {s.run_dir / 'ckpt'} stays. Lower "
                "train.lr or raise train.warmup_steps, then --resume"
            )
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    p.step += 1
    return stop


def _loss_is_due(s: Setup, step: int, end: int, stop: bool) -> bool:
    """Whether step `step` (1-based, the one just computed) reads its loss on the host: on CPU
    always; else where a log, evaluation or checkpoint needs it, at the end, or on a stop."""
    t = s.cfg.train
    return bool(
        s.info.device.type == "cpu"
        or stop
        or step % t.log_every == 0
        or step % t.ckpt_every == 0
        or (t.eval_every and step % t.eval_every == 0)
        or step in (end, t.max_steps)
        or step in s.keep_steps
    )


# ---- 3. log, 4. validate, 5. checkpoint --------------------------------------------------------


def log_step(s: Setup, p: Progress, lr: float, bar) -> dict[str, Any] | None:
    """The progress bar, and the metrics line of step `p.step` if it is a log step (every
    log_every steps and the last), else None."""
    cfg, t = s.cfg, s.cfg.train
    elapsed = time.perf_counter() - p.t0
    tok_s = (p.step - s.start) * s.tokens_per_step / elapsed
    if bar is not None:
        bar.update(1)
        if p.due:
            bar.set_postfix(loss=f"{p.last_loss:.4f}", tok_s=f"{tok_s:,.0f}")
    if p.step % t.log_every and p.step != t.max_steps:
        return None
    record = {
        "step": p.step,
        "loss": p.last_loss,
        "lr": lr,
        "tokens": p.step * s.tokens_per_step,
        "tokens_per_s": tok_s,
        "elapsed_s": elapsed,
        "data_wait_frac": p.data_wait / elapsed,
    }
    if s.info.is_master and cfg.data.noise.fraction > 0:
        record.update(out_of_language(s.train_data, p.step - 1, s.grammar) or {})
    return record


def validate(
    s: Setup, p: Progress, record: dict[str, Any] | None, lr: float, bar
) -> dict[str, Any]:
    """`record` (or a short one for a step that logs nothing else) with the validation loss."""
    record = record or {"step": p.step, "loss": p.last_loss, "lr": lr}
    record["val_loss"] = validation_loss(
        s.model,
        s.cfg,
        s.grammar,
        device=s.info.device,
        rank=s.info.rank,
        world_size=s.info.world_size,
        windows=s.val_windows,
    )
    if bar is not None:
        bar.write(f"step {p.step}: loss {p.last_loss:.4f}, val {record['val_loss']:.4f}")
    return record


def save_checkpoint(s: Setup, step: int) -> None:
    """The checkpoint of `step`, written by the master; every rank waits for it."""
    t = s.cfg.train
    if s.info.is_master:
        ckpt.save_checkpoint(
            s.run_dir,
            step,
            s.raw_model,
            s.optimizer,
            {
                "tokens": step * s.tokens_per_step,
                "rng": ckpt.rng_state(),
                # where a sequential data stream (data.sampler physicslm4) continues
                "data_stream": getattr(s.train_data, "stream_state", lambda _: None)(step),
                # the threads the run trains with: a resumed run keeps them (the last digits
                # of float reductions depend on the thread count)
                "threads": torch.get_num_threads(),
            },
            keep_last=t.keep_last,
            protect=s.keep_steps,
        )
    dist.barrier()


# ---- around the loop ---------------------------------------------------------------------------


class Recorder:
    """The run's metrics: metrics.jsonl (the record) and, if train.tensorboard and TensorBoard
    is installed, a view of the same numbers. Master only: elsewhere `write` does nothing."""

    def __init__(self, s: Setup) -> None:
        self.file = rundir.MetricsLog(s.run_dir) if s.info.is_master else None
        self.tb = None
        if s.info.is_master and s.cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: a resumed run logs the steps after its checkpoint again, and
                # TensorBoard drops the earlier events from there (no step shown twice)
                self.tb = SummaryWriter(str(s.run_dir / "tb"), purge_step=s.start + 1)
            except ImportError:  # tensorboard not installed: metrics.jsonl is the record anyway
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(record)
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _progress_bar(s: Setup, progress: bool, stack: ExitStack):
    """A tqdm bar on the master (closed with `stack`), or None. It draws only on a terminal:
    in a log or a pipe (disable=None) no carriage-return redraws, bar.write's lines only."""
    if not (progress and s.info.is_master):
        return None
    from tqdm import tqdm

    bar = tqdm(total=s.cfg.train.max_steps, initial=s.start, unit="step", disable=None)
    stack.callback(bar.close)
    return bar
