"""Training throughput: the full loop (fresh sampling + step) against the bare model step, at
every thread count, and the count `train.threads: auto` chooses.

Same config (configs/quickstart.yaml), same process, interleaved repeats, best of each:
- bare:  forward + backward + clip + AdamW on one fixed batch already in memory;
- full:  `cfglab.train.loop.train` for the same number of steps: fresh windows from the
         sampler (prefetched in a background thread), objective, the same step, logging.
Both at 1..(cores) torch threads, then the full loop with `auto` (which times the step itself
at each count and keeps the fastest). Goal: full / bare >= 0.9 at the best count (data never
starves the model). Also printed: the machine's load, the time sampling one step's windows
takes, as a share of the bare step (the cost the prefetch thread must hide), and, if
runs/quickstart exists, the quickstart's wall time and cut0 accuracy.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 60  # timed from step WARMUP to STEPS, so start-up and the first steps do not count
WARMUP = 10
REPEATS = 3


def _bare(cfg, steps: int, threads: int) -> float:
    import torch

    from cfglab.data.dataset import FreshStream
    from cfglab.data.vocab import Vocab
    from cfglab.model import build_model, gpt_config
    from cfglab.train.loop import make_optimizer
    from cfglab.train.objectives import get_objective, loss_fn

    t = cfg.train
    torch.set_num_threads(threads)
    grammar = cfg.grammar.load()
    vocab = Vocab.from_grammar(grammar)
    torch.manual_seed(0)
    model = build_model(gpt_config(cfg.model, vocab.size))
    opt = make_optimizer(model, cfg)
    obj = get_objective(t.objective)
    w = FreshStream(grammar, cfg.model.block_size + 1, t.batch_size).batch(0)
    x, y = obj.make_batch(w, vocab.eos, vocab.mask)
    model.train()
    for i in range(steps):
        if i == WARMUP:
            t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (steps - WARMUP) * t.batch_size * cfg.model.block_size / (time.perf_counter() - t0)


def _full(cfg, steps: int) -> tuple[float, float, str]:
    """Tokens/s of `train` between the metrics lines at WARMUP and `steps`; data-wait share;
    the threads line it printed."""
    import contextlib
    import io

    from cfglab.train.loop import train

    said = io.StringIO()
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(said):
        cfg.out_dir = d
        cfg.train.max_steps = steps
        cfg.train.log_every = WARMUP
        cfg.train.eval_every = 0
        cfg.train.eval_batches = 1
        cfg.train.ckpt_every = steps
        run = train(cfg, progress=False)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in lines if r["step"] == WARMUP)
    last = next(r for r in lines if r["step"] == steps)
    tokens = last["tokens"] - first["tokens"]
    threads = next((x for x in said.getvalue().splitlines() if x.startswith("threads:")), "")
    return tokens / (last["elapsed_s"] - first["elapsed_s"]), last["data_wait_frac"], threads


def _sampling_seconds(cfg, steps: int = 5) -> float:
    from cfglab.data.dataset import FreshStream

    s = FreshStream(cfg.grammar.load(), cfg.model.block_size + 1, cfg.train.batch_size)
    t0 = time.perf_counter()
    for i in range(steps):
        s.batch_np(1000 + i)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    import os

    from cfglab.config import load_config
    from cfglab.train.threads import max_threads

    path = ROOT / "configs" / "quickstart.yaml"
    counts = list(range(1, max_threads() + 1))
    bare = {n: [] for n in counts}
    full = {n: [] for n in [*counts, "auto"]}
    wait, chose = [], []
    for _ in range(REPEATS):
        for n in counts:
            bare[n].append(_bare(load_config(path), STEPS, n))
        for n in [*counts, "auto"]:
            f, w, line = _full(load_config(path, [f"train.threads={n}"]), STEPS)
            full[n].append(f)
            wait.append(w)
            if n == "auto":
                chose.append(line)
    cfg = load_config(path)
    tok_step = cfg.train.batch_size * cfg.model.block_size
    samp = _sampling_seconds(cfg)
    print(
        f"config {path.relative_to(ROOT)}: {tok_step} tokens/step, steps {WARMUP}-{STEPS} timed, "
        f"{REPEATS} interleaved repeats (best of each); load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"  {'threads':>8} {'bare step':>14} {'full loop':>14} {'full/bare':>10}")
    for n in counts:
        b, f = max(bare[n]), max(full[n])
        print(f"  {n:>8} {b:10,.0f} tok/s {f:10,.0f} tok/s {f / b:10.3f}")
    best = max(counts, key=lambda n: max(full[n]))
    print(
        f"  {'auto':>8} {'':>14} {max(full['auto']):10,.0f} tok/s   chose: "
        + "; ".join(sorted(set(chose)))
    )
    b, f = max(bare[best]), max(full[best])
    print(f"  ratio full/bare at {best} thread(s): {f / b:.3f} (goal >= 0.9)")
    print(f"  time blocked on data: {min(wait):.1%} of the loop")
    print(
        f"  sampling one step {samp * 1e3:8.1f} ms = {samp / (tok_step / b):.1%} of a bare step "
        "(hidden by the prefetch thread; goal <= 10% blocked)"
    )
    run = ROOT / "runs" / "quickstart"
    if (run / "metrics.jsonl").exists():
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        last = lines[-1]
        print(
            f"  quickstart run: {last['step']} steps, {last.get('elapsed_s', float('nan')):.0f}"
            f" s training, {last.get('tokens_per_s', float('nan')):,.0f} tokens/s, "
            f"val loss {last.get('val_loss', float('nan')):.4f}"
        )
        acc_file = run / "eval" / "accuracy.json"  # written by the eval stage of `cfglab run`
        if acc_file.exists():
            for row in json.loads(acc_file.read_text())["accuracy"]:
                if row["cut"] == 0:
                    print(
                        f"  quickstart cut0 accuracy {row['accuracy']:.0%} "
                        f"[{row['ci_low']:.0%}, {row['ci_high']:.0%}] ({row['n']} samples, exact "
                        f"recognizer, T={row['temperature']:g})"
                    )
    else:
        print("  (run `cfglab run configs/quickstart.yaml` first for its time-to-accuracy)")
