"""Stage 5: the training loop, read top to bottom. `train(cfg)` learns a grammar; that is all.

Order of work (each numbered block below):
  1. resolve everything that can fail (device, world size, grammar, objective, model variant,
     the checkpoint to resume) before any sampling, so a bad config fails in a second;
  2. build the model, AdamW (decay on matrices only), the learning-rate schedule;
  3. the step loop: fresh windows -> grad-accumulated forward/backward (bf16 autocast on CUDA)
     -> clip -> step; a NaN/inf loss stops the run and keeps the last good checkpoint;
  4. every log_every steps a metrics.jsonl line (the record; TensorBoard, if installed, is a
     view of the same numbers), every eval_every steps a validation loss on a fixed held-out
     set, every ckpt_every steps and at the end an atomic checkpoint;
  5. Ctrl-C: finish the current step, save, exit 130 (resume with --resume).

Same code for 1 process or N under torchrun (see dist.py): each rank computes its slice of the
fixed global batch, DDP averages gradients, rank 0 alone writes files.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cfglab import rundir
from cfglab.config import ExperimentConfig, kept_steps
from cfglab.data.dataset import TRAIN, VAL, FreshStream
from cfglab.data.noise import TrainingNoise
from cfglab.data.saved import SavedDataset
from cfglab.data.vocab import Vocab
from cfglab.errors import CfglabError, ConfigError
from cfglab.model import build_model, gpt_config
from cfglab.seeds import stream_seed
from cfglab.train import checkpoint as ckpt
from cfglab.train import dist
from cfglab.train.objectives import get_objective, loss_fn


class DivergedError(CfglabError):
    """The loss became NaN or infinite."""


def lr_at(step: int, cfg) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then decay to min_lr."""
    t = cfg.train if hasattr(cfg, "train") else cfg
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.decay == "constant":
        return t.lr
    span = max(1, t.max_steps - t.warmup_steps)
    frac = min(1.0, (step - t.warmup_steps) / span)  # 0 -> 1 over the decay
    shape = {"linear": 1.0 - frac, "cosine": 0.5 * (1.0 + math.cos(math.pi * frac))}[t.decay]
    return t.min_lr + (t.lr - t.min_lr) * shape


def make_optimizer(model: nn.Module, cfg: ExperimentConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2) only, as GPT-2 / nanoGPT do."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused on CUDA (one kernel for every parameter), foreach elsewhere; the state is the same
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(
        groups,
        lr=cfg.train.lr,
        betas=(cfg.train.beta1, cfg.train.beta2),
        fused=fused or None,
        foreach=None if fused else True,
    )


def training_noise(cfg: ExperimentConfig) -> TrainingNoise | None:
    """data.noise as the data stage's TrainingNoise (None when off)."""
    n = cfg.data.noise
    return TrainingNoise(**dataclasses.asdict(n)) if n.fraction > 0 else None


def make_data(cfg: ExperimentConfig, grammar, window: int, info: dist.DistInfo, split: int):
    """The batch source for a split: fresh samples, or a saved dataset if data.dataset is set.
    Noise (data.noise) perturbs the fresh training split only, so validation measures clean
    strings; a saved dataset carries the noise it was written with (checked against data.noise),
    and both splits read it."""
    kw = {"seed": cfg.data.seed, "rank": info.rank, "world_size": info.world_size, "split": split}
    batch = cfg.train.batch_size
    if cfg.data.dataset:
        return SavedDataset(
            cfg.data.dataset, grammar, window, batch, noise=training_noise(cfg), **kw
        )
    noise = training_noise(cfg) if split == TRAIN else None
    return FreshStream(
        grammar,
        window,
        batch,
        max_len=cfg.data.max_len,
        sampler=cfg.data.sampler,
        noise=noise,
        **kw,
    )


def out_of_language(train_data, step: int, grammar) -> dict[str, float] | None:
    """The share of step `step`'s training strings outside the language (exact recognizer),
    overall and among the perturbed ones; None for a saved dataset (its meta records it)."""
    from cfglab.exact import cyk

    if not hasattr(train_data, "step_strings"):
        return None
    batch, perturbed = train_data.step_strings(step)
    outside = ~np.asarray(cyk.recognize(grammar, batch.strings()), dtype=bool)
    return {
        "train_strings": len(outside),
        "train_out_of_language": float(outside.mean()),
        "train_perturbed": float(perturbed.mean()),
    }


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
    # ---- 1. resolve everything before any work --------------------------------------------
    env = dist.torchrun_env()  # checked before joining a process group, so a bad batch
    local_batch = dist.local_batch(t.batch_size, env[2] if env else 1)  # fails fast, alone
    info = dist.setup(t.device)
    if local_batch % t.grad_accum:
        raise ConfigError(
            f"per-process batch {local_batch} (train.batch_size {t.batch_size} / "
            f"{info.world_size} processes) is not divisible by train.grad_accum "
            f"{t.grad_accum}"
        )
    run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir
    grammar = cfg.grammar.load()
    vocab = Vocab.from_grammar(grammar)
    objective = get_objective(t.objective, t.mlm_prob)
    dist.set_threads(t.threads)
    # seeded by train.seed: the analyses' random-init twin is this same draw
    model = build_model(gpt_config(cfg.model, vocab.size), seed=t.seed)  # checks the variant
    device = info.device
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    start = 0
    resume_from = None
    changes: dict[str, list] = {}
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; give a folder for the run")
    if resume:
        resume_from = ckpt.latest_checkpoint(run_dir)
        state = ckpt.read_state(resume_from)  # checked: step, RNG states, the folder's step
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
        ckpt.load_weights(model, resume_from)
        ckpt.load_optimizer(optimizer, resume_from)
        if start == t.max_steps:  # finished: nothing to train, nothing to rewrite
            dist.print0(f"cfglab train: {run_dir} is already trained to step {start}")
            return run_dir
    elif (run_dir / ckpt.CKPT_DIR / ckpt.LATEST).exists():
        raise ConfigError(
            f"{run_dir} already holds a trained run; pass --resume to continue it, "
            "or choose another run name (--set name=...) or --out"
        )
    window = cfg.model.block_size + 1  # x = window[:-1], y = window[1:] (see objectives.py)
    train_data = make_data(cfg, grammar, window, info, TRAIN)
    val_data = make_data(cfg, grammar, window, info, VAL)

    # ---- 2. wrappers, precision --------------------------------------------------------------
    if resume_from is not None:
        ckpt.set_rng_state(state["rng"])
        if hasattr(train_data, "restore_stream_state"):
            train_data.restore_stream_state(start, state.get("data_stream"))
    raw_model = model
    if t.compile:
        model = torch.compile(model)
    if info.is_distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    use_bf16 = t.dtype == "bfloat16" or (t.dtype == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    n_params = sum(p.numel() for p in raw_model.parameters())
    tokens_per_step = t.batch_size * cfg.model.block_size
    keep_steps = frozenset(kept_steps(t.keep_steps, t.max_steps))  # checkpoints never pruned
    if resume_from is not None:  # and those the run kept so far (a longer run keeps them all)
        old = rundir.read_run_config(run_dir).train
        keep_steps |= frozenset(kept_steps(old.keep_steps, old.max_steps))

    # ---- master-only files -------------------------------------------------------------------
    writer = None
    if info.is_master:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_run_record(run_dir, cfg, grammar, cfg.data.dataset)
        if t.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard not installed: metrics.jsonl is the record anyway
                writer = None
        dist.print0(
            f"cfglab train: {run_dir} | {n_params / 1e6:.2f}M parameters | "
            f"{info.world_size} process(es) on {device} | steps {start}->{t.max_steps} | "
            f"{tokens_per_step} tokens/step | grammar {grammar.name}"
        )
    if info.is_master:
        # a resumed run logs the steps after its checkpoint again; a restarted run (killed
        # before its first checkpoint) logs every step again
        rundir.truncate_metrics(run_dir, start)
        if changes:
            rundir.append_history(run_dir, {"step": start, "changed": changes})
    metrics_file = rundir.MetricsLog(run_dir) if info.is_master else None

    def log(record: dict[str, Any]) -> None:
        if metrics_file is not None:
            metrics_file.write(record)
        if writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, record["step"])

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        total = torch.zeros((), device=device)
        for i in range(t.eval_batches):
            w = val_data.batch(i).to(device)
            gen = torch.Generator(device=device).manual_seed(
                stream_seed(cfg.data.seed, "objective", VAL, i, info.rank)
            )
            x, y = objective.make_batch(w, vocab.eos, vocab.mask, gen)
            with autocast:
                total += loss_fn(model(x), y)
        model.train()
        return float(dist.all_reduce_mean(total / t.eval_batches))

    def save(step: int) -> None:
        if info.is_master:
            ckpt.save_checkpoint(
                run_dir,
                step,
                raw_model,
                optimizer,
                {
                    "tokens": step * tokens_per_step,
                    "rng": ckpt.rng_state(),
                    # where a sequential data stream (data.sampler physicslm4) continues
                    "data_stream": getattr(train_data, "stream_state", lambda s: None)(step),
                },
                keep_last=t.keep_last,
                protect=keep_steps,
            )
        dist.barrier()

    # Ctrl-C sets a flag; the step in flight finishes, then we save and exit 130
    interrupted = {"flag": False}

    def on_sigint(signum, frame) -> None:
        if interrupted["flag"]:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        interrupted["flag"] = True

    in_main = threading.current_thread() is threading.main_thread()  # signals: main thread only
    old_handler = signal.signal(signal.SIGINT, on_sigint) if in_main else None

    # ---- 3. the loop -------------------------------------------------------------------------
    bar = None
    if progress and info.is_master:
        from tqdm import tqdm

        bar = tqdm(total=t.max_steps, initial=start, unit="step", dynamic_ncols=True)
    model.train()
    micro = local_batch // t.grad_accum
    t0 = time.perf_counter()
    data_wait = 0.0
    last_loss = float("nan")
    end = t.max_steps if stop_after is None else min(t.max_steps, start + stop_after)
    step = start
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step
    bad_loss = torch.zeros((), device=device)  # its loss
    batches = train_data.iterate(start, end, prefetch=cfg.data.prefetch)
    try:
        while step < end:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            tw = time.perf_counter()
            windows = next(batches).to(device, non_blocking=True)  # (B_local, T+1)
            data_wait += time.perf_counter() - tw
            gen = torch.Generator(device=device).manual_seed(
                stream_seed(cfg.data.seed, "objective", TRAIN, step, info.rank)
            )
            loss_sum = torch.zeros((), device=device)
            for k in range(t.grad_accum):
                x, y = objective.make_batch(
                    windows[k * micro : (k + 1) * micro], vocab.eos, vocab.mask, gen
                )
                # gradients are all-reduced on the last micro-step only
                sync = (
                    nullcontext()
                    if not info.is_distributed or k == t.grad_accum - 1
                    else model.no_sync()
                )
                with sync:
                    with autocast:
                        loss = loss_fn(model(x), y) / t.grad_accum
                    loss.backward()
                loss_sum += loss.detach()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            stop = interrupted["flag"]
            if info.is_distributed:  # one collective: the global loss and "someone pressed Ctrl-C"
                packet = torch.stack([loss_sum, torch.tensor(float(stop), device=device)])
                torch.distributed.all_reduce(packet)
                loss_sum, stop = packet[0] / info.world_size, bool(packet[1] > 0)
            # The loss is read on the host only where it is used (a log, evaluation or checkpoint
            # step, the end, a stop; every step on CPU, where reading it is free): on a GPU a read
            # per step would wait for the step to finish. The first non-finite loss and its step
            # are kept on the device until then; nothing is saved before that check.
            is_bad = ~torch.isfinite(loss_sum)
            first_bad = torch.where(is_bad & (first_bad < 0), step + 1, first_bad)
            bad_loss = torch.where(is_bad & (bad_loss == 0), loss_sum, bad_loss)
            due = (
                device.type == "cpu"
                or stop
                or (step + 1) % t.log_every == 0
                or (step + 1) % t.ckpt_every == 0
                or (t.eval_every and (step + 1) % t.eval_every == 0)
                or step + 1 in (end, t.max_steps)
                or step + 1 in keep_steps
            )
            if due:
                last_loss = float(loss_sum)
                if int(first_bad) >= 0:
                    optimizer.zero_grad(set_to_none=True)
                    raise DivergedError(
                        f"loss is {float(bad_loss)} at step {int(first_bad)}; stopped without "
                        f"saving, so the last good checkpoint in {run_dir / 'ckpt'} stays. Lower "
                        "train.lr or raise train.warmup_steps, then --resume"
                    )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            # ---- 4. record, evaluate, checkpoint ---------------------------------------------
            elapsed = time.perf_counter() - t0
            tok_s = (step - start) * tokens_per_step / elapsed
            if bar is not None:
                bar.update(1)
                if due:
                    bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tok_s:,.0f}")
            record = None
            if step % t.log_every == 0 or step == t.max_steps:
                record = {
                    "step": step,
                    "loss": last_loss,
                    "lr": lr,
                    "tokens": step * tokens_per_step,
                    "tokens_per_s": tok_s,
                    "elapsed_s": elapsed,
                    "data_wait_frac": data_wait / elapsed,
                }
                if info.is_master and cfg.data.noise.fraction > 0:
                    record.update(out_of_language(train_data, step - 1, grammar) or {})
            if (t.eval_every and step % t.eval_every == 0) or step == t.max_steps:
                record = record or {"step": step, "loss": last_loss, "lr": lr}
                record["val_loss"] = val_loss()
                if bar is not None:
                    bar.write(f"step {step}: loss {last_loss:.4f}, val {record['val_loss']:.4f}")
            if record is not None:
                log(record)
            if step % t.ckpt_every == 0 or step == t.max_steps or step in keep_steps:
                save(step)
            if stop:
                if step % t.ckpt_every and step != t.max_steps:
                    save(step)
                dist.print0(
                    f"\ncfglab: interrupted; saved step {step} in {run_dir}; continue with --resume"
                )
                raise KeyboardInterrupt
        if step == end and stop_after is not None and step % t.ckpt_every and step < t.max_steps:
            save(step)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, old_handler)
        batches.close()
        if bar is not None:
            bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if writer is not None:
            writer.close()
    if info.is_master:
        dist.print0(
            f"cfglab train: done, step {step}, loss {last_loss:.4f}, "
            f"{(step - start) * tokens_per_step / max(time.perf_counter() - t0, 1e-9):,.0f}"
            f" tokens/s, {time.perf_counter() - t0:.0f} s"
        )
    return run_dir
