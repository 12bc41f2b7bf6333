"""Sections 3 to 6: KV-cache generation, the exact stage, probes, and the training check."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from benchmarks.bench_gpu.common import (
    ENTROPY_RATE,
    LOOP_OVERHEAD,
    PAPER_CONFIG,
    ROOT,
    Clock,
    Plan,
    autocast,
    peak_gib,
    print_traceback,
    reset_peak,
    short_error,
    sync,
)

# cfglab's own pieces, so the benchmark measures the real code (one block: paths may move)
from cfglab.analyze.probe import fit_probe, score_probe
from cfglab.analyze.probe_tree import probe_model
from cfglab.analyze.states import HiddenStore, resid_names
from cfglab.analyze.targets import build_targets, default_targets
from cfglab.config import ExperimentConfig
from cfglab.data.sampler import SampleBatch, sample
from cfglab.data.vocab import BOS, Vocab
from cfglab.evaluate.generate import generate
from cfglab.evaluate.loss_floor import packed_loss_floor
from cfglab.exact import cyk, inside
from cfglab.model import build_model, gpt_config
from cfglab.train.loop import train


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

    def run(use_cache: bool, bf16: bool, n_new: int, prompts=prompts, cudnn: bool = False):
        gen = torch.Generator(device=device).manual_seed(0)
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        # EOS banned with the other special tokens: no row stops, every row runs n_new tokens
        banned = [BOS, vocab.eos, vocab.mask, vocab.pad]
        # cudnn: generate() as it was before it turned cuDNN attention off (the diagnosis row)
        allow = (
            mock.patch("cfglab.evaluate.generate.no_cudnn_attention", contextlib.nullcontext)
            if cudnn
            else contextlib.nullcontext()
        )
        with allow, autocast(device, bf16):
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
    for label, use_cache, bf16, cudnn in (
        ("cache fp32", True, False, False),
        ("cache bf16", True, True, False),  # the caller's autocast: generate() has no dtype
        # with cuDNN attention allowed (PyTorch tries it first for bf16 on H100/H200/B200): it
        # builds a graph per key length, i.e. one per decoding step (~10x slower on an H200)
        ("cache bf16 cuDNN", True, True, True),
        ("no cache fp32", False, False, False),
    ):
        try:
            seqs[label], dt = run(use_cache, bf16, plan.new_tokens, cudnn=cudnn)
        except Exception as exc:  # noqa: BLE001  (report it, time the other rows)
            errors.append(f"{label}: {short_error(exc)}")
            print(f"  {label:16} FAILED: {short_error(exc)}")
            print_traceback(exc)
            continue
        r = out["rows"][label] = {
            "tokens_s": n_tok / dt,
            "seconds": dt,
            "peak_gib": peak_gib(device),
        }
        mem = f", peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else ""
        print(f"  {label:16} {r['tokens_s']:10,.0f} tokens/s ({dt:.2f} s{mem})")
    if "cache bf16" in seqs and "cache bf16 cuDNN" in seqs:
        rows = out["rows"]
        out["cudnn_slowdown"] = rows["cache bf16 cuDNN"]["seconds"] / rows["cache bf16"]["seconds"]
        print(f"  cuDNN attention allowed: {out['cudnn_slowdown']:.1f}x the time of bf16 without")
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
        targets = default_targets(grammar)
        train_t = build_targets(grammar, train_b, targets)
        test_t = build_targets(grammar, test_b, targets)
        keys = [(t.target, t.column.get("level", "")) for t in train_t]
        y_train, y_test = np.stack([t.y for t in train_t]), np.stack([t.y for t in test_t])
        n_classes = [t.n_classes for t in train_t]
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
    res = probe_model(
        model, grammar, train_b, test_b, settings=settings, targets=default_targets(grammar)
    )["all"]
    out["probe_model_s"] = time.perf_counter() - t0
    out["probe_model_last_layer"] = {
        f"{t}{c.get('level', '')}": float(a)
        for (t, c), a in zip(res["keys"], res["accuracy"][-1], strict=True)
    }
    print(f"  probe_model, all {len(names)} layers: {out['probe_model_s']:.1f} s")
