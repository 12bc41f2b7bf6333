"""The pieces `loop.train` is made of, each usable alone: what one step computes, the validation
loss, and the Ctrl-C flag.

Nothing here writes run files; every function takes plain arguments (and the run's config), so
other stages reuse them, e.g. the validation loss of a model loaded from a checkpoint:

    from cfglab import rundir
    from cfglab.train.checkpoint import load_model
    from cfglab.train.steps import validation_loss

    model, cfg = load_model(run_dir)
    grammar = rundir.read_run_grammar(run_dir, cfg.grammar.name)
    loss = validation_loss(model, cfg, grammar, device="cpu")  # == metrics.jsonl's val_loss

- `lr_at`, `make_optimizer`: the learning-rate schedule and AdamW;
- `make_data`, `training_noise`: a split's batch source (fresh strings, or a saved dataset);
  `out_of_language`: the share of a step's training strings outside the language (noise);
- `autocast_for`, `wrap_model`: the precision, torch.compile and DDP the steps run under;
- `forward_backward`: one step's gradient, accumulated over micro-batches (the DDP sync toggle);
- `validation_windows`, `validation_loss`: the fixed held-out set and the loss on it;
- `CtrlC`: Ctrl-C as a flag the loop reads between steps (a second one stops at once).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cfglab.config import ExperimentConfig
from cfglab.data.dataset import TRAIN, VAL, FreshStream, InContextStream
from cfglab.data.in_context import InContextSpec
from cfglab.data.metadata import from_config as metadata_from_config
from cfglab.data.noise import TrainingNoise
from cfglab.data.saved import SavedDataset
from cfglab.data.vocab import Vocab
from cfglab.seeds import stream_seed
from cfglab.train import dist
from cfglab.train.objectives import get_objective, loss_fn


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
    and both splits read it. Held-out rule combinations (data.exclude) are rejected from the
    fresh training split only: validation, like evaluation, draws the full grammar."""
    kw = {"seed": cfg.data.seed, "rank": info.rank, "world_size": info.world_size, "split": split}
    batch = cfg.train.batch_size
    if cfg.data.in_context is not None:  # each window its own grammar (cfglab.data.in_context)
        return InContextStream(InContextSpec.from_config(cfg), grammar, window, batch, **kw)
    if cfg.data.dataset:
        return SavedDataset(
            cfg.data.dataset, grammar, window, batch, noise=training_noise(cfg), **kw
        )
    noise = training_noise(cfg) if split == TRAIN else None
    exclude = cfg.data.exclude if split == TRAIN else ()
    # metadata conditioning: the training split only, so validation measures plain strings
    metadata = metadata_from_config(grammar, cfg.data.metadata) if split == TRAIN else None
    return FreshStream(
        grammar,
        window,
        batch,
        max_len=cfg.data.max_len,
        sampler=cfg.data.sampler,
        noise=noise,
        exclude=exclude,
        metadata=metadata,
        **kw,
    )


def autocast_for(cfg: ExperimentConfig, device: torch.device) -> AbstractContextManager:
    """bf16 autocast if train.dtype asks for it (auto: on CUDA only), else a no-op context.
    The same object may be entered again and again."""
    t = cfg.train
    use_bf16 = t.dtype == "bfloat16" or (t.dtype == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def wrap_model(model: nn.Module, cfg: ExperimentConfig, info: dist.DistInfo) -> nn.Module:
    """The module the steps call: torch.compile (train.compile), then DDP for several processes."""
    if cfg.train.compile:
        model = torch.compile(model)
    if info.is_distributed:
        device = info.device
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model


def forward_backward(
    model: nn.Module,
    objective,
    windows: torch.Tensor,
    vocab: Vocab,
    generator: torch.Generator,
    *,
    grad_accum: int,
    autocast: AbstractContextManager,
    is_distributed: bool,
) -> torch.Tensor:
    """Accumulate into .grad the gradient of the mean loss over one step's windows
    (B_local, T+1), in `grad_accum` micro-batches of B_local / grad_accum windows; returns this
    rank's loss (a 0-dim tensor on the device, not read on the host). Under DDP (`model` is the
    wrapper) the gradients are all-reduced once, on the last micro-batch."""
    micro = windows.size(0) // grad_accum
    loss_sum = torch.zeros((), device=windows.device)
    for k in range(grad_accum):
        x, y = objective.make_batch(
            windows[k * micro : (k + 1) * micro], vocab.eos, vocab.mask, generator
        )  # x, y (micro, T)
        is_last = k == grad_accum - 1
        sync = nullcontext() if not is_distributed or is_last else model.no_sync()
        with sync:
            with autocast:
                loss = loss_fn(model(x), y) / grad_accum
            loss.backward()
        loss_sum += loss.detach()
    return loss_sum


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


def validation_windows(
    cfg: ExperimentConfig, grammar, *, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """The fixed held-out set: train.eval_batches batches of windows (B_local, T+1) from the
    validation split of `make_data` (clean strings, keyed by data.seed), this rank's share.
    The same windows at every evaluation of a run, and in every process that asks."""
    info = dist.DistInfo(rank, rank, world_size, torch.device("cpu"))  # only rank/size are read
    source = make_data(cfg, grammar, cfg.model.block_size + 1, info, VAL)
    return [source.batch(i) for i in range(cfg.train.eval_batches)]


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    cfg: ExperimentConfig,
    grammar,
    *,
    device: str | torch.device,
    rank: int = 0,
    world_size: int = 1,
    windows: list[torch.Tensor] | None = None,
) -> float:
    """The validation loss of `model` as the training loop logs it (metrics.jsonl's val_loss).

    The mean over train.eval_batches batches of the objective's loss (loss_fn, -100 targets
    ignored) on `validation_windows(cfg, grammar, ...)`; the objective's masking (mlm) is drawn
    from the stream seeded by (data.seed, "objective", VAL, batch, rank), and the forward pass
    runs under the loop's precision (`autocast_for`). `model` is any module mapping x (B, T) to
    logits (B, T, V): a raw GPT (e.g. `checkpoint.load_model`), or the loop's compiled / DDP
    wrapper. It is put in eval mode and back in its previous mode after.

    For one process (rank 0, world size 1) this is exactly the number the loop logged at the
    step of that model's checkpoint. Under torchrun every rank calls it with its own rank and
    gets the mean over ranks. `windows` (from `validation_windows`) saves drawing them again.
    """
    device = torch.device(device)
    if windows is None:
        windows = validation_windows(cfg, grammar, rank=rank, world_size=world_size)
    vocab = Vocab.from_grammar(grammar)
    objective = get_objective(cfg.train.objective, cfg.train.mlm_prob)
    autocast = autocast_for(cfg, device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for i, w in enumerate(windows):
        gen = torch.Generator(device=device).manual_seed(
            stream_seed(cfg.data.seed, "objective", VAL, i, rank)
        )
        x, y = objective.make_batch(w.to(device), vocab.eos, vocab.mask, gen)  # (B_local, T)
        with autocast:
            total += loss_fn(model(x), y)
    model.train(was_training)
    return float(dist.all_reduce_mean(total / len(windows)))


class CtrlC:
    """Ctrl-C sets `pressed`: the step in flight finishes, then the loop saves and exits 130
    (resume with --resume). A second Ctrl-C raises KeyboardInterrupt at once, without saving.
    The handler is installed for the `with` block, from the main thread only (signals are
    delivered there; elsewhere Ctrl-C keeps Python's default)."""

    def __init__(self) -> None:
        self.pressed = False
        self._installed = False
        self._old: Any = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._old)

    def _on_sigint(self, signum, frame) -> None:
        if self.pressed:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self.pressed = True


def step_probe(model: nn.Module, cfg: ExperimentConfig, vocab: Vocab, objective, device):
    """The work `train.threads: auto` times (cfglab.train.threads): one micro-batch's forward
    and backward of a copy of the model on windows of the run's shape (the weights and the
    optimizer are not touched; the caller restores torch's random state). None off the CPU,
    where torch's threads do not matter."""
    import copy

    if torch.device(device).type != "cpu":
        return None
    twin = copy.deepcopy(model)
    micro = max(1, cfg.train.batch_size // cfg.train.grad_accum)
    t = cfg.model.block_size + 1
    windows = (torch.arange(micro * t, device=device) % vocab.eos).view(micro, t)  # (B, T+1)

    def work() -> None:
        gen = torch.Generator(device=device).manual_seed(0)
        x, y = objective.make_batch(windows, vocab.eos, vocab.mask, gen)
        loss_fn(twin(x), y).backward()
        twin.zero_grad(set_to_none=True)

    return work
