"""Memorisation: does the model write strings it trained on, or new ones? (stage 6a, metric
family)

A string is *seen in training* when a window the run trained on held it whole, `BOS x EOS`
(cfglab.data.seen: the run's own training stream replayed, every kind of training data, cached
in eval/seen/). Measured on the cut0 generations of each temperature (shared with the accuracy
family) and on the fresh true strings of the KL (stream 'eval_kl', shared with the distribution
family). The true strings give the reference: a model that samples the grammar exactly writes
seen strings at the grammar's own overlap rate with the training stream, `seen_test` (large
for a small grammar, whose strings repeat in training: 0.7 on the quickstart's); a model that
memorises writes seen strings more often than that, and new grammatical ones less often than
1 - seen_test. Without a run (the oracle, a baseline) the caller's `training` strings stand in;
with neither the family does not apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cfglab.data.seen import MEMORY_BOUND, SeenSet, run_seen_set
from cfglab.errors import CfglabError
from cfglab.evaluate.accuracy import judged_generations
from cfglab.evaluate.context import EvalContext
from cfglab.evaluate.stats import proportion

DEFINITIONS: dict[str, str] = {
    "seen_generated": (
        "share of the M cut0 generations (at this temperature) seen in training: the generated "
        "string, up to its EOS, occurs whole (BOS x EOS) in a window of the run's training "
        "stream before the evaluated checkpoint (data steps 0..S-1, every rank's windows; a "
        "string cut at a window's end is not seen). A generation without EOS or with a special "
        "token is never seen. 95% Wilson interval over the M generations."
    ),
    "seen_test": (
        "the reference: share of the fresh true strings of the KL (eval.n_kl, stream 'eval_kl') "
        "seen in training, as seen_generated defines it: the grammar's own overlap rate with "
        "the training stream, which a model sampling the grammar exactly would score. 95% "
        "Wilson interval."
    ),
    "novelty": (
        "share of the grammatical cut0 generations (in the language by exact CYK recognition) "
        "NOT seen in training; its reference is 1 - seen_test. 95% Wilson interval over the "
        "grammatical generations."
    ),
}

SeenFn = Callable[[Sequence[np.ndarray]], np.ndarray]  # strings -> (n,) bool seen


def seen_set(run_dir: str | Path, *, memory_bound: int = MEMORY_BOUND) -> SeenSet:
    """A run's seen set (cfglab.data.seen.run_seen_set), replayed with the training loop's own
    data builder (cfglab.train.steps.make_data) as one process: each step's global batch,
    every rank's windows."""
    import torch

    from cfglab.data.dataset import TRAIN
    from cfglab.train.dist import DistInfo
    from cfglab.train.steps import make_data

    info = DistInfo(0, 0, 1, torch.device("cpu"))  # only rank and world size are read

    def make_source(cfg, grammar, window):
        return make_data(cfg, grammar, window, info, TRAIN)

    return run_seen_set(run_dir, make_source, memory_bound=memory_bound)


def _seen_fn(ctx: EvalContext) -> tuple[SeenFn | None, dict] | None:
    """Which strings count as seen, and what that was measured on: the run's replayed stream
    (loaded once per memo, so the dynamics stage shares it between checkpoints), else the
    caller's training strings; None without either. (None, {"unavailable": why}) for a run
    whose stream cannot be replayed (cfglab.data.seen.training_segments)."""
    if ctx.run_dir is not None:
        key = ("seen_set", str(ctx.run_dir))
        if key not in ctx.memo:
            try:
                ctx.memo[key] = ctx.clock.wrap("sample", seen_set)(ctx.run_dir)
            except CfglabError as exc:  # a stream no replay rebuilds: say why, measure the rest
                ctx.memo[key] = str(exc)
        s: SeenSet | str = ctx.memo[key]
        if isinstance(s, str):
            return None, {"source": "training stream", "unavailable": s}
        steps = s.steps if ctx.step is None else ctx.step
        source = {
            "source": "training stream",
            "steps": steps,
            "n_strings": s.n_strings,
            "n_distinct": s.n_distinct,
            "n_cut": s.n_cut,
        }
        return (lambda strings: s.seen(strings, before=steps)), source
    if ctx.training is not None:
        training = ctx.training

        def fn(strings: Sequence[np.ndarray]) -> np.ndarray:
            keys = [np.asarray(x, dtype=np.int64).tobytes() for x in strings]
            return np.array([k in training for k in keys], dtype=bool)

        return fn, {"source": "training strings", "n_distinct": len(training)}
    return None


def measure(ctx: EvalContext) -> dict | None:
    """seen_generated and novelty per temperature (cut0), and seen_test; None when there is
    nothing to compare with (no run, no training strings)."""
    found = _seen_fn(ctx)
    if found is None:
        return None
    is_seen, source = found
    if is_seen is None:
        return source  # the reason, in eval/memorisation.json; no rows
    per_temperature = []
    for ti, temperature in enumerate(ctx.settings.temperatures):
        _, (correct, _, strings, ended, bad) = judged_generations(ctx, 0, ti)
        seen = is_seen(strings) & ended & ~bad  # only a finished, clean string can be seen
        per_temperature.append(
            {
                "cut": 0,
                "temperature": temperature,
                "seen_generated": share(seen),
                "novelty": share(~seen[correct]),
            }
        )
    test = ctx.true_batch(ctx.n_kl, "eval_kl").strings()
    return {**source, "generations": per_temperature, "seen_test": share(is_seen(test))}


def share(ok: np.ndarray) -> dict:
    """{n, k, share, ci_low, ci_high (Wilson), cp_low, cp_high (Clopper-Pearson)} of k of n."""
    p = proportion(ok)
    return {"n": p["n"], "k": p["n_correct"], "share": p["accuracy"]} | {
        k: p[k] for k in ("ci_low", "ci_high", "cp_low", "cp_high")
    }


def _row(metric: str, p: dict, **qualifiers) -> dict:
    return {
        "metric": metric,
        **qualifiers,
        "value": p["share"],
        "ci_low": p["ci_low"],
        "ci_high": p["ci_high"],
        "n": p["n"],
    }


def summary_rows(result: dict) -> list[dict]:
    if "unavailable" in result:
        return []
    rows = [_row("seen_test", result["seen_test"])]
    for g in result["generations"]:
        where = {"cut": g["cut"], "temperature": g["temperature"]}
        rows.append(_row("seen_generated", g["seen_generated"], **where))
        rows.append(_row("novelty", g["novelty"], **where))
    return rows
