"""Sections 1, 2 and 7: training-step throughput against the nanoGPT reference (MFU), bf16 vs
fp32 agreement, and the extra compiled row."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time

import numpy as np
import torch

from benchmarks.bench_gpu.common import (
    AGREE_TOL,
    Clock,
    Plan,
    allocated_gib,
    autocast,
    device_name,
    fmt,
    free_memory,
    peak_gib,
    peak_tflops,
    print_traceback,
    real_batch,
    reset_peak,
    short_error,
    sync,
)

# cfglab's own pieces, so the benchmark measures the real code (one block: paths may move)
from benchmarks.bench_model import RefGPT
from cfglab.config import ExperimentConfig
from cfglab.data.vocab import Vocab
from cfglab.model import build_model, gpt_config
from cfglab.train.loop import lr_at, make_optimizer
from cfglab.train.objectives import loss_fn


def flops_per_token(model: torch.nn.Module, n_layer: int, n_embd: int, T: int) -> float:
    """6 N + 12 L C T (nanoGPT's estimate_mfu): N = parameters outside nn.Embedding tables (with
    the tied unembedding of a 7-token vocabulary the choice moves N by 0.006%)."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = sum(p.numel() for p in model.parameters() if id(p) not in embedded)
    return 6 * n + 12 * n_layer * n_embd * T


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
