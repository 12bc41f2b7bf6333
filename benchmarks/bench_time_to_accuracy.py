"""Time to accuracy: the quickstart's model trained under a few schedules, each to its end, and
the wall time it took; the quickstart takes the fastest one that passes.

Each setting overrides configs/quickstart.yaml (the model, grammar and data stay) with its own
budget and schedule (steps, batch, peak learning rate, warmup, decay) and is trained from the
same seed with `train.threads: auto`. Judged like the quickstart: cut0 generation accuracy on
200 generations by the exact recognizer, and the last-layer NT-ancestor probe against the run's
random-init twin. A setting passes when accuracy >= 95%, its 95% Wilson lower bound >= 90%, and
the probe gap >= 20 points at every level. Printed: per setting the training wall time,
tokens/s, accuracy [interval], probe gap, pass; then the fastest passing setting.

`python -m benchmarks time_to_accuracy` (about 20 minutes on 2 cores: every setting trains).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_GENERATIONS = 200
# name -> overrides of configs/quickstart.yaml (the 3000-step row is the quickstart until now)
SETTINGS: dict[str, list[str]] = {
    "3000x16 lr4e-3 linear": ["train.max_steps=3000", "train.batch_size=16"],
    "2000x16 lr4e-3 linear": ["train.max_steps=2000", "train.batch_size=16"],
    "2000x16 lr6e-3 cosine": [
        "train.max_steps=2000",
        "train.lr=6e-3",
        "train.decay=cosine",
        "train.warmup_steps=100",
    ],
    "1200x32 lr6e-3 cosine": [
        "train.max_steps=1200",
        "train.batch_size=32",
        "train.lr=6e-3",
        "train.decay=cosine",
        "train.warmup_steps=60",
    ],
    "1500x24 lr6e-3 cosine": [
        "train.max_steps=1500",
        "train.batch_size=24",
        "train.lr=6e-3",
        "train.decay=cosine",
        "train.warmup_steps=75",
    ],
}


def measure(name: str, overrides: list[str], root: Path) -> dict:
    """Train one setting, then judge it (accuracy and the probe gap)."""
    import dataclasses

    from cfglab.analyze.run import analyze
    from cfglab.config import load_config
    from cfglab.evaluate.run import evaluate
    from cfglab.stages import run_stage
    from cfglab.stages.common import analysis_context, load_run_model
    from cfglab.stages.evaluation import eval_context

    sets = [*overrides, "train.threads=auto", "train.keep_steps=[]", "train.tensorboard=false"]
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", sets)
    run = root / name.replace(" ", "_")
    t0 = time.perf_counter()
    run_stage("train", cfg, run, progress=False)
    seconds = time.perf_counter() - t0
    model, grammar = load_run_model(run, cfg, cfg.eval)
    settings = dataclasses.replace(cfg.eval, n_samples=N_GENERATIONS, cuts=[0])
    acc = evaluate(eval_context(cfg, model, grammar, settings), ["accuracy"])["results"]
    (a,) = acc["accuracy"]
    probe = analyze(analysis_context(cfg, model, grammar), ["probe"])["probe"]["rows"]
    last = max(r["layer"] for r in probe if r["metric"] == "probe_accuracy")
    gap = {}
    for r in probe:
        if r["metric"] == "probe_accuracy" and r["target"] == "ancestor" and r["layer"] == last:
            gap.setdefault(r["level"], {})[r["weights"]] = r["value"]
    gaps = {lev: 100 * (v["trained"] - v["random_init"]) for lev, v in gap.items()}
    tokens = cfg.train.max_steps * cfg.train.batch_size * cfg.model.block_size
    ok = a["accuracy"] >= 0.95 and a["ci_low"] >= 0.90 and min(gaps.values()) >= 20
    return {
        "name": name,
        "seconds": seconds,
        "tok_s": tokens / seconds,
        "acc": a,
        "gaps": gaps,
        "pass": ok,
    }


def main() -> None:
    print(
        f"quickstart model and grammar; {N_GENERATIONS} cut0 generations per setting; load "
        f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'setting':26} {'train s':>8} {'tok/s':>8} {'cut0 accuracy [95% CI]':>24} "
        f"{'probe gap (points)':>20} pass"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="cfglab-tta-") as tmp:
        for name, overrides in SETTINGS.items():
            r = measure(name, overrides, Path(tmp))
            results.append(r)
            a = r["acc"]
            gaps = " / ".join(f"{g:+.0f}" for _, g in sorted(r["gaps"].items()))
            print(
                f"{name:26} {r['seconds']:8.0f} {r['tok_s']:8,.0f} "
                f"{100 * a['accuracy']:6.1f}% [{100 * a['ci_low']:.1f}, {100 * a['ci_high']:.1f}]"
                f"{gaps:>20} {'yes' if r['pass'] else 'no'}",
                flush=True,
            )
    passing = [r for r in results if r["pass"]]
    if passing:
        best = min(passing, key=lambda r: r["seconds"])
        print(f"fastest passing: {best['name']} ({best['seconds']:.0f} s of training)")
    else:
        print("no setting passes")
