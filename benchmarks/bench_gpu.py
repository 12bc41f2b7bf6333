"""GPU benchmark (issue 18): does cfglab run the paper's GPT-2 small here, correctly and fast?

`python -m benchmarks gpu`. On CUDA every section uses the paper's setup (configs/paper/
gpt_rot.yaml: 12 layers, 12 heads, 768 dims, T = 512, the cfg3 vocabulary of 7 tokens); on a CPU
the same sections run a tiny model (2 layers, 2 heads, 64 dims, T = 64) on the quickstart grammar
for a few steps each (~25 s), so tests/test_bench_gpu.py keeps every code path working.

Sections, in this order (each timed; one that fails prints its error and the others go on):
1. throughput: a training step (forward + backward + clip + AdamW) on one fixed batch of real
   cfg3f windows, for a nanoGPT reference (benchmarks/bench_model.RefGPT with nanoGPT's fused
   AdamW on CUDA) and cfglab's GPT of the same shape (rot: the paper's GPT_rot; abs: positions
   like the reference's), in fp32, bf16 autocast and bf16 autocast + torch.compile. Warm-up
   steps excluded; the timed block is bracketed by torch.cuda.synchronize(). Every row starts
   from the same seed and batch, so its first loss must agree across precisions. One row swaps
   cfglab's foreach AdamW for the fused one on the compiled model (what that change would gain).
   MFU = flops/token x tokens/s / the device's dense bf16 peak; flops/token = 6 N + 12 L C T
   (nanoGPT's estimate_mfu, PaLM appendix B), N = the parameters outside embedding tables.
2. agreement: bf16 autocast vs fp32 from identical weights on the same batches: the held-out
   loss at init, the loss of each of 10 AdamW steps and the held-out loss after; PASS if the
   largest relative difference is within AGREE_TOL.
3. generation: KV-cache sampling, 64 prompts x 256 new tokens, fp32 and bf16 autocast; no cache.
4. exact: cyk.recognize and inside.next_token_dist on 1,000 cfg3f strings (CPU, Numba).
5. probe: hidden states of 1,000 cfg3f strings (750 train / 250 test) through the 12-layer model
   on the device; one layer's probes fitted and scored as probe_model does each layer (on the
   model's device), and probe_model itself if the estimate for all layers is short.
6. train: cfglab's own `train()` on configs/paper/gpt_rot.yaml with grammar cfg3b (bf16
   autocast, torch.compile, global batch 96 as 2 micro-batches of 48, the throughput rows' shape,
   so their compiled graph is reused) for a wall-clock budget: max_steps comes from the measured
   step time, so the linear decay ends with the budget. Prints the loss curve and the loss
   reached beside the packed-window loss floor (exact log-probabilities of fresh strings).
7. extra: cfglab abs + torch.compile (a third compile), if the deadline leaves time for it.

Environment: CFGLAB_BENCH_OUT (gpu.json and the training run's metrics.jsonl go there);
CFGLAB_BENCH_GPU_TRAIN_S (training budget, default 180 s on CUDA); CFGLAB_BENCH_GPU_DEADLINE_S
(wall-time goal of the whole run, default 400 s on CUDA: the training check, the probe fit and
the extra row shrink or skip to meet it); CFGLAB_BENCH_GPU_BATCH (windows per timed step,
default 48); CFGLAB_BENCH_GPU_PROBE_S (largest probe_model estimate that is run, default 60 s);
CFGLAB_BENCH_GPU_PEAK_TFLOPS (the dense bf16 peak of a device missing from PEAK_BF16_TFLOPS).
The summary is printed last; its last line names the failed sections (then exit status 1).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import importlib.metadata
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

# cfglab's own pieces, so the benchmark measures the real code (one block: paths may move)
from benchmarks.bench_model import RefGPT
from cfglab.analyze.probe import fit_probe, score_probe
from cfglab.analyze.probe_tree import TARGETS, probe_model, probe_targets
from cfglab.analyze.states import HiddenStore, resid_names
from cfglab.config import ExperimentConfig, ProbeConfig, load_config
from cfglab.data.dataset import FreshStream
from cfglab.data.sampler import SampleBatch, sample
from cfglab.data.vocab import BOS, Vocab
from cfglab.evaluate.generate import generate
from cfglab.evaluate.loss_floor import packed_loss_floor
from cfglab.exact import cyk, inside
from cfglab.model import build_model, gpt_config
from cfglab.train.dist import pick_device
from cfglab.train.loop import lr_at, make_optimizer, train
from cfglab.train.objectives import get_objective, loss_fn

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "configs" / "paper" / "gpt_rot.yaml"
QUICKSTART_GRAMMAR = ROOT / "configs" / "grammars" / "quickstart.cfg"

# dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from NVIDIA's datasheets; first match wins
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("GH200", 989.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
)
# a perfect model's loss per predicted token (n tokens + EOS), SPEC.md "Grammars"
ENTROPY_RATE = {"cfg3b": 0.423, "cfg3i": 0.415, "cfg3h": 0.600, "cfg3g": 0.743, "cfg3f": 0.747}
AGREE_TOL = 2e-2  # bf16 vs fp32: largest relative loss difference allowed
LOOP_OVERHEAD = 1.15  # train() step time / bare step time, for sizing the training check


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every section runs: the paper's sizes on CUDA, a tiny model on a CPU."""

    device: torch.device
    model_overrides: tuple[str, ...]  # on top of configs/paper/gpt_rot.yaml
    grammar: str  # throughput, agreement, generation, exact stage, probes
    batch: int  # windows per timed step (the training check's micro-batch)
    warmup: int  # untimed steps before each timed block (the first compiles)
    steps: int  # timed steps per bf16 row (fp32 rows: half)
    compile_backend: str  # torch.compile backend
    agree_batch: int
    agree_steps: int
    agree_lr: float  # peak of the linear decay over agree_steps
    train_grammar: str
    train_overrides: tuple[str, ...]
    train_seconds: float  # the training check's wall-clock budget
    train_reserve_s: float  # of it: compiles, validation, checkpoint (not steps)
    train_row: str  # the throughput row whose step time sizes the training check
    n_prompts: int
    new_tokens: int
    n_exact: int
    n_probe: int
    probe_settings: ProbeConfig
    probe_full_s: float  # run probe_model when its estimate is below this
    n_floor: int  # strings for the loss floor
    deadline_s: float  # wall-time goal of the whole benchmark
    threads: int | None  # torch CPU threads (None: torch's default)

    def config(self, grammar: str, extra: tuple[str, ...] = ()) -> ExperimentConfig:
        return load_config(PAPER_CONFIG, [f"grammar.name={grammar}", *self.model_overrides, *extra])


def make_plan(device: torch.device) -> Plan:
    env = os.environ.get
    if device.type == "cuda":
        return Plan(
            device=device,
            model_overrides=(),  # the paper's: preset gpt2-small, block_size 512, rot
            grammar="cfg3f",
            batch=int(env("CFGLAB_BENCH_GPU_BATCH", "48")),
            warmup=3,
            steps=20,
            compile_backend="inductor",
            agree_batch=8,
            agree_steps=10,
            agree_lr=3e-4,  # the paper's
            train_grammar="cfg3b",
            # global batch 96 (the paper's) as 2 micro-batches of 48: the compiled graph of
            # the throughput rows is reused
            train_overrides=("train.grad_accum=2", "train.compile=true"),
            train_seconds=float(env("CFGLAB_BENCH_GPU_TRAIN_S", "180")),
            train_reserve_s=45.0,
            train_row="cfglab rot bf16+compile",
            n_prompts=64,
            new_tokens=256,
            n_exact=1000,
            n_probe=1000,
            probe_settings=ProbeConfig(),
            probe_full_s=float(env("CFGLAB_BENCH_GPU_PROBE_S", "60")),
            n_floor=2000,
            deadline_s=float(env("CFGLAB_BENCH_GPU_DEADLINE_S", "400")),
            threads=None,
        )
    tiny = ("model.preset=null", "model.n_layer=2", "model.n_head=2", "model.n_embd=64")
    return Plan(
        device=device,
        model_overrides=(*tiny, "model.block_size=64"),
        grammar=str(QUICKSTART_GRAMMAR),
        batch=int(env("CFGLAB_BENCH_GPU_BATCH", "4")),
        warmup=1,
        steps=3,
        compile_backend="aot_eager",  # traces like inductor (graph breaks show); compiles in ~1 s
        agree_batch=4,
        agree_steps=10,
        agree_lr=1e-3,  # a tiny model moves little at 3e-4 in 10 steps
        train_grammar=str(QUICKSTART_GRAMMAR),
        train_overrides=("train.grad_accum=2", "train.batch_size=8", "train.lr=3e-3"),
        train_seconds=float(env("CFGLAB_BENCH_GPU_TRAIN_S", "4")),
        train_reserve_s=1.0,
        train_row="cfglab rot fp32",
        n_prompts=8,
        new_tokens=24,
        n_exact=200,
        n_probe=80,
        probe_settings=ProbeConfig(steps=20),
        probe_full_s=float(env("CFGLAB_BENCH_GPU_PROBE_S", "60")),
        n_floor=200,
        deadline_s=float(env("CFGLAB_BENCH_GPU_DEADLINE_S", "120")),
        threads=1,  # tiny ops on a shared machine: a second thread mostly waits for a free core
    )


class Clock:
    """Seconds since the benchmark started, and what is left of its deadline."""

    def __init__(self, deadline_s: float) -> None:
        self.t0, self.deadline_s = time.perf_counter(), deadline_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        return self.deadline_s - self.elapsed()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a CUDA device by name ($CFGLAB_BENCH_GPU_PEAK_TFLOPS first); None
    if unknown or a CPU (no MFU)."""
    if name == "cpu":
        return None
    if os.environ.get("CFGLAB_BENCH_GPU_PEAK_TFLOPS"):
        return float(os.environ["CFGLAB_BENCH_GPU_PEAK_TFLOPS"])
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def flops_per_token(model: torch.nn.Module, n_layer: int, n_embd: int, T: int) -> float:
    """6 N + 12 L C T (nanoGPT's estimate_mfu): N = parameters outside nn.Embedding tables (with
    the tied unembedding of a 7-token vocabulary the choice moves N by 0.006%)."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = sum(p.numel() for p in model.parameters() if id(p) not in embedded)
    return 6 * n + 12 * n_layer * n_embd * T


def real_batch(cfg: ExperimentConfig, n: int, step: int, seed: int, device: torch.device):
    """(x, y) (n, T) on `device`: n fresh packed windows, moved whole and then split as train()
    does (so x has the loop's strides and a compiled graph is reused)."""
    grammar = cfg.grammar.load()
    vocab = Vocab.from_grammar(grammar)
    w = FreshStream(grammar, cfg.model.block_size + 1, n, seed=seed).batch(step)  # (n, T+1)
    return get_objective("next_token").make_batch(w.to(device), vocab.eos, vocab.mask)


def nanogpt_adamw(model: torch.nn.Module, cfg: ExperimentConfig, fused: bool):
    """nanoGPT's configure_optimizers: AdamW, weight decay on matrices only (as cfglab's
    make_optimizer), fused=True when asked (nanoGPT: on CUDA), else torch's default."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    betas = (cfg.train.beta1, cfg.train.beta2)
    opt = torch.optim.AdamW(
        groups, lr=cfg.train.lr, betas=betas, **({"fused": True} if fused else {})
    )
    assert all(bool(g["fused"]) == fused for g in opt.param_groups)
    return opt


def graph_breaks() -> int | None:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return sum(counters["graph_break"].values())


def clear_dynamo_counters() -> None:
    with contextlib.suppress(ImportError):
        from torch._dynamo.utils import counters

        counters.clear()


def time_steps(plan: Plan, model, fwd, opt, x, y, *, bf16: bool, steps: int) -> dict:
    """Train `steps` timed steps after plan.warmup untimed ones; fwd is model or its compiled
    form. Returns ms/step, tokens/s, the first step's seconds (compile) and loss, peak memory."""
    device = plan.device

    def step() -> torch.Tensor:
        with autocast(device, bf16):
            loss = loss_fn(fwd(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    reset_peak(device)
    t0 = time.perf_counter()
    loss0 = float(step())  # compiles, if fwd is compiled
    first_s = time.perf_counter() - t0
    for _ in range(plan.warmup - 1):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    dt = time.perf_counter() - t0
    return {
        "ms_step": 1e3 * dt / steps,
        "tokens_s": x.numel() * steps / dt,
        "first_step_s": first_s,
        "loss0": loss0,
        "loss_end": float(loss),
        "peak_gib": peak_gib(device),
        "timed_steps": steps,
    }


# ---- 1. training throughput ---------------------------------------------------------------------
# (model, precision) per row, in order; "fused" reuses the compiled cfglab model of the row before
ROWS = (
    ("reference", "fp32"),  # first, so every cfglab row prints its ratio as it finishes
    ("reference", "bf16"),
    ("reference", "bf16+compile"),
    ("cfglab rot", "fp32"),
    ("cfglab rot", "bf16"),
    ("cfglab rot", "bf16+compile"),
    ("cfglab rot", "bf16+compile+fused"),
    ("cfglab abs", "fp32"),
    ("cfglab abs", "bf16"),
)
EXTRA_ROWS = (("cfglab abs", "bf16+compile"),)  # a third compile: run last, if time is left


class StepBench:
    """What the throughput rows share: the paper's config and shape, one batch of real windows,
    the device's peak, and the compiled cfglab model kept for the fused-AdamW row."""

    def __init__(self, plan: Plan) -> None:
        self.plan, self.device = plan, plan.device
        self.cfg = plan.config(plan.grammar)
        self.vocab = Vocab.from_grammar(self.cfg.grammar.load())
        self.gcfg = gpt_config(self.cfg.model, self.vocab.size)
        self.x, self.y = real_batch(self.cfg, plan.batch, 0, 1, self.device)  # (B, T) each
        self.peak = peak_tflops(device_name(self.device))
        self.kept = None  # (model, compiled forward)

    def build(self, label: str):
        torch.manual_seed(0)  # every row starts from the same weights
        g = self.gcfg
        if label == "reference":
            shape = {k: getattr(g, k) for k in ("n_layer", "n_head", "n_embd")}
            model = RefGPT(**shape, vocab_size=g.vocab_size, block_size=g.block_size)
            model = model.to(self.device)
            return model, nanogpt_adamw(model, self.cfg, fused=self.device.type == "cuda")
        model = build_model(dataclasses.replace(g, position=label.split()[-1])).to(self.device)
        return model, make_optimizer(model, self.cfg)

    def run(self, label: str, precision: str, ref_rows: list[dict]) -> dict:
        plan, g = self.plan, self.gcfg
        bf16 = precision.startswith("bf16")
        held = allocated_gib(self.device)  # left by earlier rows (0 unless something leaks)
        clear_dynamo_counters()
        if precision.endswith("fused"):
            if self.kept is None:
                raise RuntimeError("no compiled cfglab model to reuse (its row failed)")
            (model, fwd), self.kept = self.kept, None
            opt = nanogpt_adamw(model, self.cfg, fused=True)  # make_optimizer's, but fused
        else:
            model, opt = self.build(label)
            compiled = precision.endswith("compile")
            fwd = torch.compile(model, backend=plan.compile_backend) if compiled else model
        steps = plan.steps if bf16 else max(2, plan.steps // 2)
        row = {"row": f"{label} {precision}", "model": label, "precision": precision}
        group = opt.param_groups[0]
        row["optimizer"] = (
            "fused" if group["fused"] else "foreach" if group["foreach"] else "default"
        )
        row["held_gib"] = held
        row.update(time_steps(plan, model, fwd, opt, self.x, self.y, bf16=bf16, steps=steps))
        if "compile" in precision:
            row["graph_breaks"] = graph_breaks()
        if precision.endswith("fused"):
            row["loss0"] = None  # continues the row before: not a first step
        elif label == "cfglab rot" and precision.endswith("compile"):
            self.kept = (model, fwd)
        row["flops_per_token"] = fpt = flops_per_token(model, g.n_layer, g.n_embd, g.block_size)
        row["mfu"] = fpt * row["tokens_s"] / (self.peak * 1e12) if self.peak else None
        ref_precision = "bf16+compile" if "compile" in precision else precision
        ref = next((r for r in ref_rows if r["row"] == f"reference {ref_precision}"), None)
        row["vs_ref"] = None
        if ref is not None and label != "reference":
            row["vs_ref"] = row["tokens_s"] / ref["tokens_s"]
        return row

    def run_rows(self, rows, out_rows: list[dict], ref_rows: list[dict]) -> list[str]:
        """Run rows into out_rows, printing each; returns the errors (a failed row is skipped)."""
        errors = []
        for label, precision in rows:
            try:
                row = self.run(label, precision, ref_rows)
                out_rows.append(row)
                print(row_line(row))
            except Exception as exc:  # noqa: BLE001  (one row's failure must not lose the others)
                errors.append(f"{label} {precision}: {short_error(exc)}")
                print(f"{label + ' ' + precision:32} FAILED: {short_error(exc)}")
                print_traceback(exc)
            if self.kept is None:
                free_memory()
        return errors


def section_throughput(plan: Plan, clock: Clock, out: dict, results: dict) -> None:
    bench = StepBench(plan)
    g = bench.gcfg
    out.update(
        batch=plan.batch,
        block_size=g.block_size,
        tokens_per_step=plan.batch * g.block_size,
        shape={k: getattr(g, k) for k in ("n_layer", "n_head", "n_embd", "vocab_size")},
        rows=[],
    )
    print(
        f"{out['shape']}, batch {plan.batch} windows x T={g.block_size} = "
        f"{out['tokens_per_step']} tokens/step of real {bench.cfg.grammar.name} windows; "
        f"{plan.warmup} warm-up steps, {plan.steps} timed (fp32: {max(2, plan.steps // 2)}); "
        f"MFU against the dense bf16 peak, flops/token = 6 N + 12 L C T"
    )
    print_header()
    errors = bench.run_rows(ROWS, out["rows"], out["rows"])
    # same weights and batch: the first step's loss must agree across precisions
    out["loss0_spread"] = {}
    for label in ("cfglab rot", "reference", "cfglab abs"):
        losses = [r["loss0"] for r in out["rows"] if r["model"] == label and r["loss0"]]
        if len(losses) > 1:
            out["loss0_spread"][label] = (max(losses) - min(losses)) / min(losses)
    if out["rows"]:
        r = out["rows"][0]
        out["n_params"] = int((r["flops_per_token"] - 12 * g.n_layer * g.n_embd * g.block_size) / 6)
    print(
        "first-step loss spread across precisions (same init, same batch): "
        + ", ".join(f"{k} {v:.1e}" for k, v in out["loss0_spread"].items())
    )
    if errors:
        raise RuntimeError("; ".join(errors))


def section_extra(plan: Plan, clock: Clock, out: dict, results: dict) -> None:
    """The rows that cost a third compile, if the deadline leaves time for them."""
    rows = results["sections"].get("throughput", {}).get("rows", [])
    compile_s = max((r["first_step_s"] for r in rows if "compile" in r["precision"]), default=60)
    out["rows"] = []
    if clock.remaining() < compile_s + 15:
        print(
            f"skipped: {clock.remaining():.0f} s left of the deadline, a compile took "
            f"{compile_s:.0f} s"
        )
        out["skipped"] = True
        return
    print_header()
    errors = StepBench(plan).run_rows(EXTRA_ROWS, out["rows"], rows)
    if errors:
        raise RuntimeError("; ".join(errors))


HEADER = (
    f"{'row':32} {'tok/s':>9} {'ms/step':>7} {'MFU':>6} {'GiB':>5} {'1st step s':>10} "
    f"{'loss0':>6} {'vs ref':>6}"
)


def print_header() -> None:
    print(HEADER)


def row_line(row: dict) -> str:
    """One throughput row under HEADER; 1st step s includes the compile of compiled rows."""
    return (
        f"{row['row']:32} {row['tokens_s']:9,.0f} {row['ms_step']:7.1f} "
        f"{fmt(row['mfu'] and 100 * row['mfu'], '5.1f'):>5}% {fmt(row['peak_gib'], '5.1f'):>5} "
        f"{row['first_step_s']:10.1f} {fmt(row['loss0'], '6.4f'):>6} "
        f"{fmt(row['vs_ref'], '5.2f'):>5}x"
        + (f"  graph breaks {row['graph_breaks']}" if row.get("graph_breaks") else "")
    )


# ---- 2. bf16 vs fp32 ----------------------------------------------------------------------------
def section_agreement(plan: Plan, clock: Clock, out: dict, results: dict) -> None:
    device = plan.device
    cfg = plan.config(
        plan.grammar, (f"train.lr={plan.agree_lr}", f"train.max_steps={plan.agree_steps}")
    )
    vocab = Vocab.from_grammar(cfg.grammar.load())
    torch.manual_seed(0)
    base = build_model(gpt_config(cfg.model, vocab.size))
    batches = [real_batch(cfg, plan.agree_batch, s, 2, device) for s in range(plan.agree_steps)]
    held = [real_batch(cfg, plan.agree_batch, 10_000 + i, 2, device) for i in range(2)]
    runs = {}
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        model = copy.deepcopy(base).to(device)  # identical initial weights (tying kept)
        opt = make_optimizer(model, cfg)

        @torch.no_grad()
        def held_losses(model=model, bf16=bf16) -> list[float]:
            model.eval()
            with autocast(device, bf16):
                losses = [float(loss_fn(model(x), y)) for x, y in held]
            model.train()
            return losses

        before = held_losses()
        steps = []
        for s, (x, y) in enumerate(batches):
            for group in opt.param_groups:
                group["lr"] = lr_at(s, cfg)
            with autocast(device, bf16):
                loss = loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps.append(float(loss.detach()))
        runs[precision] = {"held_before": before, "train": steps, "held_after": held_losses()}
        del model, opt
        free_memory()

    def rel(key: str) -> float:
        a, b = runs["fp32"][key], runs["bf16"][key]
        return max(abs(p - q) / abs(p) for p, q in zip(a, b, strict=True))

    diffs = {k: rel(k) for k in ("held_before", "train", "held_after")}
    worst = max(diffs.values())
    f32 = runs["fp32"]
    out.update(
        runs=runs,
        rel_diff=diffs,
        max_rel_diff=worst,
        tolerance=AGREE_TOL,
        passed=worst <= AGREE_TOL,
        batch=plan.agree_batch,
        steps=plan.agree_steps,
    )
    print(
        f"{plan.agree_steps} steps of {plan.agree_batch} windows, lr {plan.agree_lr:g} linear "
        f"decay, one init; held-out loss (fp32) {np.mean(f32['held_before']):.4f} -> "
        f"{np.mean(f32['held_after']):.4f}"
    )
    print(f"{'':22}{'fp32':>10}{'bf16':>10}")
    for key, label in (("held_before", "held-out, init"), ("held_after", "held-out, after")):
        print(f"{label:22}{np.mean(runs['fp32'][key]):10.4f}{np.mean(runs['bf16'][key]):10.4f}")
    for s in (0, len(f32["train"]) - 1):
        print(f"{f'train step {s}':22}{f32['train'][s]:10.4f}{runs['bf16']['train'][s]:10.4f}")
    print(
        "max relative difference: "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
        + f"; tolerance {AGREE_TOL:g}: {'PASS' if out['passed'] else 'FAIL'}"
    )
    if not out["passed"]:
        raise RuntimeError(f"bf16 vs fp32 relative loss difference {worst:.3g} > {AGREE_TOL:g}")


# ---- 6. the training check ----------------------------------------------------------------------
def train_config(plan: Plan, out_dir: Path, max_steps: int) -> ExperimentConfig:
    """configs/paper/gpt_rot.yaml + plan.train_overrides for max_steps steps (the linear decay
    ends there): ~40 log lines, 4 validations, one checkpoint at the end, no TensorBoard."""
    log_every = max(1, max_steps // 40)
    eval_every = log_every * max(1, max_steps // 4 // log_every)
    return plan.config(
        plan.train_grammar,
        (
            *plan.train_overrides,
            "name=bench_gpu_train",
            f"out_dir={out_dir}",
            f"train.max_steps={max_steps}",
            f"train.log_every={log_every}",
            f"train.eval_every={eval_every}",
            f"train.ckpt_every={max_steps}",
            "train.keep_last=1",
            "train.tensorboard=false",
        ),
    )


def section_train(plan: Plan, clock: Clock, out: dict, results: dict) -> None:
    # 20 s of the deadline stay for the loss floor after it and the summary
    budget = max(min(plan.train_seconds, clock.remaining() - 20), plan.train_seconds / 4)
    rows = results["sections"].get("throughput", {}).get("rows", [])
    row = next((r for r in rows if r["row"] == plan.train_row), None)
    if row is None and "compile" in plan.train_row:
        # torch.compile failed in the throughput rows (e.g. no C compiler for Triton): train
        # without it rather than lose the training check too; said in the output and JSON
        plan = dataclasses.replace(
            plan,
            train_overrides=(*plan.train_overrides, "train.compile=false"),
            train_row=plan.train_row.replace("+compile", ""),
        )
        row = next((r for r in rows if r["row"] == plan.train_row), None)
        out["compile_fallback"] = True
        print("'cfglab rot bf16+compile' failed above: training without torch.compile")
    if row is not None:
        micro_s, source = row["ms_step"] / 1e3, plan.train_row
    else:  # that row failed: a guess, said so
        micro_s, source = (0.06 if plan.device.type == "cuda" else 0.02), "a guess (row failed)"
    grad_accum = plan.config(plan.train_grammar, plan.train_overrides).train.grad_accum
    step_s = micro_s * grad_accum * LOOP_OVERHEAD
    max_steps = max(20, int((budget - plan.train_reserve_s) / step_s))
    tmp = Path(tempfile.mkdtemp(prefix="cfglab-bench-gpu-"))
    cfg = train_config(plan, tmp, max_steps)
    print(
        f"budget {budget:.0f} s; step estimate {1e3 * step_s:.0f} ms ({grad_accum} x "
        f"{1e3 * micro_s:.1f} ms from {source}, x{LOOP_OVERHEAD} loop) -> max_steps {max_steps}, "
        f"log every {cfg.train.log_every}, validation every {cfg.train.eval_every}"
    )
    try:
        t0 = time.perf_counter()
        run = train(cfg, progress=False)
        wall = time.perf_counter() - t0
        records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        if os.environ.get("CFGLAB_BENCH_OUT"):
            keep = Path(os.environ["CFGLAB_BENCH_OUT"]) / "train_run"
            keep.mkdir(parents=True, exist_ok=True)
            for f in ("metrics.jsonl", "config.json"):
                shutil.copy(run / f, keep / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t = cfg.train
    # steady-state rate: median over consecutive log records (compile and validation excluded)
    rates = [
        (b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"])
        for a, b in zip(records, records[1:], strict=False)
        if "elapsed_s" in a and "elapsed_s" in b and b["elapsed_s"] > a["elapsed_s"]
    ]
    loop_tok_s = statistics.median(rates) if rates else None
    bare = row["tokens_s"] if row else None
    grammar = cfg.grammar.load()
    strings = sample(grammar, plan.n_floor, seed=6, labels=False).strings()
    lengths = np.array([len(s) for s in strings])
    log_p = inside.log_prob(grammar, strings)
    floor = packed_loss_floor(lengths, log_p)
    entropy = float(-log_p.sum() / (lengths + 1).sum())
    first, last = records[0], records[-1]
    out.update(
        grammar=grammar.name,
        config=str(PAPER_CONFIG.relative_to(ROOT)),
        batch_size=t.batch_size,
        grad_accum=t.grad_accum,
        block_size=cfg.model.block_size,
        compile=t.compile,
        budget_s=budget,
        wall_s=wall,
        max_steps=max_steps,
        tokens=last.get("tokens"),
        first_loss=first["loss"],
        first_step=first["step"],
        final_loss=last["loss"],
        final_val_loss=last.get("val_loss"),
        loop_tokens_s=loop_tok_s,
        loop_vs_bare=loop_tok_s / bare if loop_tok_s and bare else None,
        data_wait_frac=last.get("data_wait_frac"),
        first_log_s=first.get("elapsed_s"),  # includes the compile
        loss_floor=floor,
        entropy_rate=entropy,
        spec_entropy_rate=ENTROPY_RATE.get(grammar.name or ""),
        curve=[
            {k: r[k] for k in ("step", "loss", "val_loss", "elapsed_s") if k in r} for r in records
        ],
    )
    print(f"{'step':>6} {'loss':>8} {'val loss':>8} {'elapsed s':>9}")
    shown = [r for i, r in enumerate(records) if "val_loss" in r or i % 4 == 0 or i == 0]
    for r in shown:
        val = f"{r['val_loss']:8.4f}" if "val_loss" in r else " " * 8
        print(f"{r['step']:6d} {r['loss']:8.4f} {val} {r.get('elapsed_s', float('nan')):9.1f}")
    spec = out["spec_entropy_rate"]
    print(
        f"{max_steps} steps x {t.batch_size} x {cfg.model.block_size} tokens in {wall:.0f} s "
        f"(budget {budget:.0f} s); loss {first['loss']:.4f} (step {first['step']}) -> "
        f"{last['loss']:.4f}, val {last.get('val_loss', float('nan')):.4f}"
    )
    print(
        f"perfect model: packed-window floor {floor['value']:.4f} +- {floor['stderr']:.4f} "
        f"({plan.n_floor} strings, per n+2 tokens); entropy rate {entropy:.4f} per n+1"
        + (f" (SPEC: {spec})" if spec else "")
    )
    if loop_tok_s:
        print(
            f"loop {loop_tok_s:,.0f} tokens/s (median between log lines) = "
            f"{out['loop_vs_bare']:.2f}x the bare step of '{plan.train_row}'; waiting for data "
            f"{100 * (out['data_wait_frac'] or 0):.1f}% of the loop"
            if out["loop_vs_bare"]
            else f"loop {loop_tok_s:,.0f} tokens/s"
        )
    if not last["loss"] < first["loss"]:
        raise RuntimeError(f"loss did not fall: {first['loss']:.4f} -> {last['loss']:.4f}")


# ---- 3. KV-cache generation ---------------------------------------------------------------------
def section_generation(plan: Plan, clock: Clock, out: dict, results: dict) -> None:
    device = plan.device
    cfg = plan.config(plan.grammar)
    vocab = Vocab.from_grammar(cfg.grammar.load())
    torch.manual_seed(0)
    model = build_model(gpt_config(cfg.model, vocab.size)).to(device).eval()
    prompts = [torch.tensor([BOS])] * plan.n_prompts  # cut0 prompts

    def run(use_cache: bool, bf16: bool, n_new: int, prompts=prompts):
        gen = torch.Generator(device=device).manual_seed(0)
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        # EOS banned with the other special tokens: no row stops, every row runs n_new tokens
        banned = [BOS, vocab.eos, vocab.mask, vocab.pad]
        with autocast(device, bf16):
            seqs = generate(
                model,
                prompts,
                n_new,
                eos_id=vocab.eos,
                generator=gen,
                use_cache=use_cache,
                banned_ids=banned,
            )
        sync(device)
        dt = time.perf_counter() - t0
        if any(len(s) != 1 + n_new for s in seqs):
            raise RuntimeError("a generation stopped early")
        return seqs, dt

    run(True, False, 4, prompts[:2])  # warm-up: kernels, allocator
    n_tok = plan.n_prompts * plan.new_tokens
    out.update(prompts=plan.n_prompts, new_tokens=plan.new_tokens, rows={})
    print(f"{plan.n_prompts} prompts (BOS) x {plan.new_tokens} new tokens, temperature 1")
    seqs, errors = {}, []
    for label, use_cache, bf16 in (
        ("cache fp32", True, False),
        ("cache bf16", True, True),  # the caller's autocast: generate() has no dtype of its own
        ("no cache fp32", False, False),
    ):
        try:
            seqs[label], dt = run(use_cache, bf16, plan.new_tokens)
        except Exception as exc:  # noqa: BLE001  (report it, time the other rows)
            errors.append(f"{label}: {short_error(exc)}")
            print(f"  {label:14} FAILED: {short_error(exc)}")
            print_traceback(exc)
            continue
        r = out["rows"][label] = {
            "tokens_s": n_tok / dt,
            "seconds": dt,
            "peak_gib": peak_gib(device),
        }
        mem = f", peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else ""
        print(f"  {label:14} {r['tokens_s']:10,.0f} tokens/s ({dt:.2f} s{mem})")
    if "cache fp32" in seqs and "no cache fp32" in seqs:
        pairs = zip(seqs["cache fp32"], seqs["no cache fp32"], strict=True)
        out["same_as_no_cache"] = same = sum(torch.equal(a, b) for a, b in pairs)
        rows = out["rows"]
        out["cache_speedup"] = rows["no cache fp32"]["seconds"] / rows["cache fp32"]["seconds"]
        print(
            f"  KV cache {out['cache_speedup']:.1f}x no cache; identical samples (same seed): "
            f"{same}/{plan.n_prompts}"
        )
    if errors:
        raise RuntimeError("; ".join(errors))


# ---- 4. exact stage -----------------------------------------------------------------------------
def section_exact(plan: Plan, clock: Clock, out: dict, results: dict) -> None:
    grammar = plan.config(plan.grammar).grammar.load()
    strings = sample(grammar, plan.n_exact, seed=3, labels=False).strings()
    t0 = time.perf_counter()
    cyk.recognize(grammar, strings[:1])  # Numba compiles (or loads its cache) here
    inside.next_token_dist(grammar, strings[:1])
    jit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    accepted = cyk.recognize(grammar, strings)
    rec_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dists = inside.next_token_dist(grammar, strings)
    dist_s = time.perf_counter() - t0
    row_err = max(float(np.abs(d.sum(axis=1) - 1).max()) for d in dists)
    n = len(strings)
    out.update(
        n_strings=n,
        mean_length=float(np.mean([len(s) for s in strings])),
        accepted=int(accepted.sum()),
        jit_s=jit_s,
        recognize_ms=1e3 * rec_s / n,
        next_token_dist_ms=1e3 * dist_s / n,
        max_row_sum_error=row_err,
    )
    print(
        f"{n} strings of {grammar.name or plan.grammar}, mean length {out['mean_length']:.0f}; "
        f"Numba compile/cache load {jit_s:.1f} s"
    )
    print(f"  recognize        {out['recognize_ms']:.2f} ms/string, accepted {out['accepted']}/{n}")
    print(
        f"  next_token_dist  {out['next_token_dist_ms']:.2f} ms/string, rows sum to 1 "
        f"+- {row_err:.0e}"
    )
    if out["accepted"] != n:
        raise RuntimeError(f"only {out['accepted']} of {n} sampled strings were accepted")


# ---- 5. probes ----------------------------------------------------------------------------------
def split_batch(batch: SampleBatch, n: int) -> tuple[SampleBatch, SampleBatch]:
    """The first n strings and the rest, labels alike."""
    cut = batch.offsets[n]

    def part(lo: int, hi: int | None, off: np.ndarray) -> SampleBatch:
        return SampleBatch(
            ids=batch.ids[lo:hi],
            offsets=off,
            ancestors=batch.ancestors[:, lo:hi],
            subtree=batch.subtree[:, lo:hi],
            is_boundary=batch.is_boundary[:, lo:hi],
        )

    return part(0, cut, batch.offsets[: n + 1]), part(cut, None, batch.offsets[n:] - cut)


def section_probe(plan: Plan, clock: Clock, out: dict, results: dict) -> None:
    device = plan.device
    cfg = plan.config(plan.grammar)
    grammar = cfg.grammar.load()
    vocab = Vocab.from_grammar(grammar)
    torch.manual_seed(0)  # random init: the cost does not depend on the weights
    model = build_model(gpt_config(cfg.model, vocab.size)).to(device).eval()
    T = model.config.block_size
    batch = sample(grammar, plan.n_probe, seed=4, max_len=T - 2, labels=True)
    train_b, test_b = split_batch(batch, plan.n_probe * 3 // 4)
    names = resid_names(model.config.n_layer)
    settings = plan.probe_settings
    out.update(
        n_train=len(train_b),
        n_test=len(test_b),
        tokens=int(batch.offsets[-1]),
        layers=len(names),
        settings=dataclasses.asdict(settings),
        torch_threads=torch.get_num_threads(),
    )
    print(
        f"{len(train_b)} train + {len(test_b)} test strings of {grammar.name or plan.grammar} "
        f"({out['tokens']} tokens), {len(names)} layers x {model.config.n_embd} dims; probe "
        f"settings {settings.steps} steps, H={settings.n_heads}, d'={settings.d_probe}"
    )
    with tempfile.TemporaryDirectory(prefix="cfglab-bench-probe-") as tmp:
        store = HiddenStore(Path(tmp))
        sync(device)
        t0 = time.perf_counter()
        for split, b in (("train", train_b), ("test", test_b)):
            store.collect(model, split, b.strings(), names, eos=vocab.eos, pad=vocab.pad)
        sync(device)
        out["collect_s"] = time.perf_counter() - t0
        print(f"  hidden states, every layer ({device.type}): {out['collect_s']:.1f} s")
        if device.type == "cuda" and clock.remaining() < plan.train_seconds + 45:
            # the training check comes next and matters more than this estimate
            print(f"  one layer's probes: skipped ({clock.remaining():.0f} s left of the deadline)")
            out["layer_fit_s"] = None
            return
        # one layer's probes, as probe_model fits and scores each layer
        levels = list(range(1, train_b.ancestors.shape[0]))
        keys, y_train, n_classes = probe_targets(grammar, train_b, levels, TARGETS)
        _, y_test, _ = probe_targets(grammar, test_b, levels, TARGETS)
        t0 = time.perf_counter()
        probe = fit_probe(
            store.load("train", names[-1]),
            train_b.offsets,
            y_train,
            n_classes,
            settings=settings,
            max_len=T,
            device=device,
        )
        scores = score_probe(probe, store.load("test", names[-1]), test_b.offsets, y_test)
        out["layer_fit_s"] = time.perf_counter() - t0
        out["fit_device"] = str(probe.read.device)
    estimate = out["collect_s"] + len(names) * out["layer_fit_s"]
    out["probe_model_estimate_s"] = estimate
    out["last_layer_accuracy"] = {
        f"{t}{lev}": float(a) for (t, lev), a in zip(keys, scores["accuracy"], strict=True)
    }
    print(
        f"  one layer's {len(keys)} probes fitted + scored on {out['fit_device']} "
        f"({out['torch_threads']} threads): {out['layer_fit_s']:.1f} s -> probe_model estimate "
        f"{estimate:.0f} s for {len(names)} layers"
    )
    allowed = min(plan.probe_full_s, clock.remaining() - plan.train_seconds - 30)
    if estimate > allowed:
        print(f"  probe_model: not run (estimate {estimate:.0f} s > {allowed:.0f} s allowed)")
        out["probe_model_s"] = None
        return
    t0 = time.perf_counter()
    res = probe_model(model, grammar, train_b, test_b, settings=settings)["all"]
    out["probe_model_s"] = time.perf_counter() - t0
    out["probe_model_last_layer"] = {
        f"{t}{lev}": float(a) for (t, lev), a in zip(res["keys"], res["accuracy"][-1], strict=True)
    }
    print(f"  probe_model, all {len(names)} layers: {out['probe_model_s']:.1f} s")


# ---- running and reporting ----------------------------------------------------------------------
SECTIONS: dict[str, Callable[[Plan, Clock, dict, dict], None]] = {
    "throughput": section_throughput,
    "agreement": section_agreement,
    "generation": section_generation,
    "exact": section_exact,
    "probe": section_probe,
    "train": section_train,  # late: its budget takes what the deadline leaves, up to the full one
    "extra": section_extra,
}


def toolchain() -> str:
    """What torch.compile needs on CUDA besides torch: Triton, and a C compiler for the launcher
    Triton builds on first use (a bare machine may lack one: the compile rows then fail)."""
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = "none"
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    return f"triton {triton}, C compiler {cc or 'none'}"


def short_error(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}"


def print_traceback(exc: BaseException, lines: int = 25) -> None:
    """The last lines of the traceback (compile errors are hundreds of lines long)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    print("\n".join("    " + ln for ln in text[-lines:]))


def run_all(plan: Plan) -> dict:
    clock = Clock(plan.deadline_s)
    name = device_name(plan.device)
    peak = peak_tflops(name)
    results = {
        "device": name,
        "device_type": plan.device.type,
        "peak_tflops_bf16": peak,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "toolchain": toolchain(),
        "plan": {
            k: (str(v) if isinstance(v, torch.device) else v)
            for k, v in dataclasses.asdict(plan).items()
        },
        "sections": {},
    }
    peak_text = f"{peak:g} TFLOP/s dense bf16" if peak else "peak unknown (no MFU)"
    if plan.device.type == "cpu":
        peak_text = "CPU: tiny model, no MFU"
    print(
        f"device {name} ({plan.device}); {peak_text}; torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}; fp32 matmul precision {torch.get_float32_matmul_precision()}; "
        f"torch threads {torch.get_num_threads()}; {results['toolchain']}"
    )
    for section, fn in SECTIONS.items():
        print(f"\n-- {section} (at {clock.elapsed():.0f} s)")
        out: dict = {}
        t0 = time.perf_counter()
        try:
            fn(plan, clock, out, results)
            ok, error = True, None
        except Exception as exc:  # noqa: BLE001  (report, then run the next section)
            ok, error = False, short_error(exc)
            print(f"{section} FAILED: {error}")
            print_traceback(exc)
        finally:
            free_memory()
        seconds = time.perf_counter() - t0
        results["sections"][section] = {"ok": ok, "seconds": seconds, "error": error, **out}
        print(f"-- {section}: {'ok' if ok else 'FAILED'} in {seconds:.1f} s")
    results["total_s"] = clock.elapsed()
    results["failed"] = [k for k, v in results["sections"].items() if not v["ok"]]
    return results


def fmt(x, spec: str, missing: str = "-") -> str:
    return (
        missing if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)
    )


def summary_lines(results: dict) -> list[str]:
    """The compact table printed last (the device tool keeps only the end of the output)."""
    s, peak = results["sections"], results["peak_tflops_bf16"]
    tp, ag, tr = s.get("throughput", {}), s.get("agreement", {}), s.get("train", {})
    ge, ex, pr = s.get("generation", {}), s.get("exact", {}), s.get("probe", {})
    rows = tp.get("rows", []) + s.get("extra", {}).get("rows", [])
    lines = [
        f"== summary: {results['device']}, "
        + (f"dense bf16 peak {peak:g} TFLOP/s" if peak else "peak unknown")
        + f", torch {results['torch']}, total {results['total_s']:.0f} s"
    ]
    if rows:
        lines.append(
            f"training step {tp['shape']}, T={tp['block_size']}, batch {tp['batch']}, "
            f"N = {fmt(tp.get('n_params'), ',')} (MFU: 6N + 12LCT flops/token)"
        )
        lines += [HEADER] + [row_line(r) for r in rows]
    if "max_rel_diff" in ag:
        lines.append(
            f"bf16 vs fp32: max relative loss difference {ag['max_rel_diff']:.1e} over "
            f"{ag['steps']} steps, tolerance {ag['tolerance']:g}: "
            + ("PASS" if ag["passed"] else "FAIL")
        )
    if "final_loss" in tr:
        fl, spec = tr["loss_floor"], tr["spec_entropy_rate"]
        lines.append(
            f"training check {tr['grammar']} ({tr['config']}, batch {tr['batch_size']} = "
            f"{tr['grad_accum']} x {tr['batch_size'] // tr['grad_accum']}, compile "
            f"{tr['compile']}{' (fallback)' if tr.get('compile_fallback') else ''}): "
            f"{tr['max_steps']} steps in {tr['wall_s']:.0f} s"
        )
        lines.append(
            f"  loss {tr['first_loss']:.4f} -> {tr['final_loss']:.4f}, val "
            f"{fmt(tr['final_val_loss'], '.4f')}; perfect model {fl['value']:.4f} +- "
            f"{fl['stderr']:.4f} per packed token"
            + (f" (SPEC entropy rate {spec})" if spec else "")
        )
        lines.append(
            f"  loop {fmt(tr['loop_tokens_s'], ',.0f')} tok/s = {fmt(tr['loop_vs_bare'], '.2f')}x "
            f"the bare step; first log line after {fmt(tr['first_log_s'], '.0f')} s (compile)"
        )
    if ge.get("rows"):
        r = ge["rows"]
        lines.append(
            f"generation {ge['prompts']} x {ge['new_tokens']} tokens/s: "
            + ", ".join(f"{k} {v['tokens_s']:,.0f}" for k, v in r.items())
            + f"; KV cache {fmt(ge.get('cache_speedup'), '.1f')}x"
        )
    if "recognize_ms" in ex:
        lines.append(
            f"exact stage, {ex['n_strings']} strings of ~{ex['mean_length']:.0f} tokens: "
            f"recognize {ex['recognize_ms']:.2f} ms/string, next_token_dist "
            f"{ex['next_token_dist_ms']:.2f} ms/string"
        )
    if "collect_s" in pr:
        full = pr.get("probe_model_s")
        lines.append(
            f"probes, {pr['n_train']} + {pr['n_test']} strings x {pr['layers']} layers: "
            f"hidden states {pr['collect_s']:.1f} s; one layer's fit "
            f"{fmt(pr.get('layer_fit_s'), '.1f')} s on {pr.get('fit_device', '-')}; probe_model "
            + (f"{full:.1f} s" if full else f"~{fmt(pr.get('probe_model_estimate_s'), '.0f')} s")
        )
    lines.append(
        "sections: "
        + ", ".join(
            f"{k} {'ok' if v['ok'] else 'FAILED'} {v['seconds']:.0f} s" for k, v in s.items()
        )
    )
    return lines


def main() -> None:
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # keep the output if the run is cut short
    plan = make_plan(pick_device("auto"))
    if plan.threads:
        torch.set_num_threads(plan.threads)
    results = run_all(plan)
    out_dir = os.environ.get("CFGLAB_BENCH_OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        text = json.dumps(results, indent=1, default=lambda o: getattr(o, "tolist", o.__str__)())
        (Path(out_dir) / "gpu.json").write_text(text)
    try:
        print("\n" + "\n".join(summary_lines(results)))
    except Exception as exc:  # noqa: BLE001  (the numbers are above and in gpu.json)
        print(f"\n(summary failed: {short_error(exc)})")
    failed = results["failed"]
    for name in failed:
        print(f"  {name}: {results['sections'][name]['error']}")
    n = len(results["sections"])
    print(
        f"bench gpu: {n - len(failed)} of {n} sections ok"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
