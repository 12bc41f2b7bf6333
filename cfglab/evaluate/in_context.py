"""Grammars learned in context: does the model infer each window's grammar from the strings
before it? (stage 6a, metric family; runs with data.in_context, cfglab.data.in_context)

On held-out windows (split EVAL_SPLIT, keyed by eval.seed: no training or validation window has
that key), window w holds strings s_1 .. s_K of its own grammar G_w, plus s_{K+1}. Per k = 1..K:

- the model's loss on s_k in context: -log Q(s_k EOS | BOS s_1 EOS ... BOS) / (n_k + 1);
- the oracle's: -log P_{G_w}(s_k) / (n_k + 1), exact (cfglab.exact.inside), for a model that
  knows G_w (its mean does not depend on k: the strings are i.i.d.);
- an in-context n-gram baseline fitted on s_1 .. s_{k-1} of the same window (add-alpha over
  the T terminals and EOS, contexts padded with BOS); for each k the (n, alpha) of NGRAM_GRID
  with the lowest mean loss on these very windows, so the baseline is as strong as the grid
  allows (a claim that the model beats it is conservative).

Generation: the model completes string K+1 after BOS s_1 EOS ... BOS s_K EOS BOS; the
completion is judged by exact CYK under the window's own grammar, and under another window's
grammar (window w + 1's) as the control; the true s_{K+1} under that other grammar gives the
control's base rate (how much two grammars of the family overlap).

Intervals: 95% percentile bootstrap over the windows (N_BOOTSTRAP resamples; differences are
paired within a window), Wilson intervals for the generation shares.
"""

from __future__ import annotations

import numpy as np

from cfglab.data.in_context import (
    EVAL_SPLIT,
    IN_CONTEXT_PURPOSE,
    InContextSpec,
    key_seed,
    window_strings,
)
from cfglab.data.vocab import BOS
from cfglab.evaluate.accuracy import split_generation
from cfglab.evaluate.context import EvalContext
from cfglab.evaluate.stats import wilson_interval

IN_CONTEXT = True  # measures a run with data.in_context (cfglab.evaluate.run runs only such)
NGRAM_GRID = [(n, alpha) for n in (1, 2, 3) for alpha in (0.1, 0.5, 1.0)]  # (order, add-alpha)
N_BOOTSTRAP = 1000  # resamples of the windows behind each 95% interval

DEFINITIONS: dict[str, str] = {
    "icl_loss": (
        "the model's loss on the k-th string of a held-out window (qualifier k = 1..K), in "
        "context: -log Q(s_k EOS | the window's tokens before it) / (n_k + 1), nats per token "
        "(the string's n_k tokens and its EOS); mean over eval.n_kl windows, each with a fresh "
        "grammar of the family; 95% bootstrap interval over the windows."
    ),
    "icl_loss_oracle": (
        "an oracle that knows the window's grammar: -log P_G(s_k) / (n_k + 1), exact inside "
        "probabilities (cfglab.exact.inside), on the same strings; mean over the windows."
    ),
    "icl_loss_ngram": (
        "an in-context n-gram fitted on strings 1..k-1 of the same window (add-alpha over the T "
        "terminals and EOS, contexts padded with BOS; k = 1: uniform over T + 1): its loss on s_k"
        " per token. For each k the (n, alpha) in n = 1, 2, 3 x alpha = 0.1, 0.5, 1 with the "
        "lowest mean on these windows (chosen on the test windows themselves: the baseline's "
        "best case); the chosen pairs are in eval/in_context.json."
    ),
    "icl_gap": (
        "icl_loss - icl_loss_oracle per window, mean (nats per token above the oracle that knows "
        "the grammar); 95% bootstrap interval over the windows."
    ),
    "icl_gap_drop": (
        "gap at k = 1 minus gap at k = K, per window, mean: how much of the distance to the "
        "oracle the K - 1 earlier strings remove (> 0: the model learns the grammar in "
        "context); 95% bootstrap interval over the windows."
    ),
    "icl_ngram_margin": (
        "icl_loss_ngram - icl_loss per window at string k, mean (> 0: the model beats the best "
        "in-context n-gram); 95% bootstrap interval over the windows."
    ),
    "icl_gen_own": (
        "share of the model's completions of string K+1 (after K strings of the window, at this "
        "temperature) that are sentences of the window's own grammar, by exact CYK; no EOS "
        "within the window or a special token counts as wrong; 95% Wilson interval over "
        "eval.n_samples windows."
    ),
    "icl_gen_other": (
        "share of the same completions that are sentences of another window's grammar (window "
        "w + 1's): the control; 95% Wilson interval."
    ),
    "icl_gen_margin": (
        "icl_gen_own - icl_gen_other, paired per window (> 0: the completions follow the "
        "window's own grammar rather than the family's); 95% bootstrap interval."
    ),
    "icl_gen_base_rate": (
        "share of the true strings K+1 that are sentences of the other window's grammar: the "
        "control's value for a model that knows the window's grammar exactly; 95% Wilson."
    ),
}


# ---- the baseline ------------------------------------------------------------------------------
def ngram_losses(strings: list[np.ndarray], n_t: int, order: int, alpha: float) -> np.ndarray:
    """(K,) loss per token of each string s_k under the add-alpha n-gram of `order` fitted on
    s_1..s_{k-1} (outcomes: ids 1..n_t and EOS = n_t + 1; contexts padded with BOS = 0)."""
    eos, n_out = n_t + 1, n_t + 1
    counts: dict[tuple[int, ...], np.ndarray] = {}  # context -> (n_t + 2,) counts by id
    out = np.empty(len(strings))
    for k, x in enumerate(strings):
        seq = [BOS] * (order - 1) + [int(t) for t in x] + [eos]
        events = [(tuple(seq[i - order + 1 : i]), seq[i]) for i in range(order - 1, len(seq))]
        total = 0.0
        for ctx, y in events:
            c = counts.get(ctx)
            seen = 0.0 if c is None else c[y]
            all_ = 0.0 if c is None else c.sum()
            total -= np.log((seen + alpha) / (all_ + alpha * n_out))
        out[k] = total / len(events)
        for ctx, y in events:  # string k joins the counts only after it is scored
            counts.setdefault(ctx, np.zeros(n_t + 2))[y] += 1
    return out


# ---- one window --------------------------------------------------------------------------------
def packed(strings: list[np.ndarray], eos: int) -> np.ndarray:
    """BOS s_1 EOS BOS s_2 EOS ... as one int64 sequence."""
    return np.concatenate([np.concatenate([[BOS], x, [eos]]) for x in strings]).astype(np.int64)


def string_losses(rows: np.ndarray, strings: list[np.ndarray], eos: int) -> np.ndarray:
    """(K,) the model's loss per token on each string from its log-prob rows (L, V) of the
    packed sequence (row t predicts token t + 1): the n_k tokens and the EOS of s_k."""
    seq = packed(strings, eos)
    out, start = np.empty(len(strings)), 0  # start: position of s_k's BOS
    for k, x in enumerate(strings):
        targets = np.arange(start + 1, start + len(x) + 2)  # s_k's tokens and its EOS
        out[k] = -rows[targets - 1, seq[targets]].sum() / (len(x) + 1)
        start += len(x) + 2
    return out


def _windows(ctx: EvalContext, spec: InContextSpec, n: int) -> list[tuple]:
    """The first n held-out windows: (grammar, K + 1 strings), once per memo."""
    key = ("in_context_windows", spec, n)
    if key not in ctx.memo:
        draw = ctx.clock.wrap("sample", window_strings)
        seed = int(ctx.settings.seed)
        ctx.memo[key] = [draw(spec, ctx.grammar, seed, EVAL_SPLIT, 0, j) for j in range(n)]
    return ctx.memo[key]


def _exact_side(ctx: EvalContext, spec: InContextSpec, windows: list[tuple]) -> dict:
    """What does not depend on the model, once per memo: oracle losses (N, K), n-gram losses
    (grid, N, K), the true s_{K+1}'s membership in the next window's grammar (N,)."""
    from cfglab.exact import cyk, inside

    key = ("in_context_exact", spec, len(windows))
    if key in ctx.memo:
        return ctx.memo[key]
    k = spec.strings_per_window
    oracle = np.empty((len(windows), k))
    ngram = np.empty((len(NGRAM_GRID), len(windows), k))
    base_rate = np.empty(len(windows), dtype=bool)
    for w, (g, strings) in enumerate(windows):
        lengths = np.array([len(x) + 1 for x in strings[:k]])
        oracle[w] = -ctx.exact(inside.log_prob, g, strings[:k]) / lengths
        for i, (order, alpha) in enumerate(NGRAM_GRID):
            ngram[i, w] = ngram_losses(strings[:k], g.n_t, order, alpha)
        other = windows[(w + 1) % len(windows)][0]
        base_rate[w] = bool(ctx.exact(cyk.recognize, other, [strings[k]])[0])
    ctx.memo[key] = {"oracle": oracle, "ngram": ngram, "base_rate": base_rate}
    return ctx.memo[key]


def _model_losses(ctx: EvalContext, windows: list[tuple], k: int) -> np.ndarray:
    """(N, K) the model's in-context loss on strings 1..K of each window."""
    eos, b = ctx.eos, ctx.settings.batch_size
    out = np.empty((len(windows), k))
    for i in range(0, len(windows), b):
        chunk = [strings[:k] for _, strings in windows[i : i + b]]
        rows = ctx.model([packed(s, eos)[:-1] for s in chunk])  # the last EOS predicts nothing
        for j, (r, s) in enumerate(zip(rows, chunk, strict=True)):
            out[i + j] = string_losses(r, s, eos)
    return out


def _completions_judged(
    ctx: EvalContext, windows: list[tuple], k: int, t_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool each: the model's completion of string K+1 is a sentence of the window's own
    grammar, of the next window's grammar."""
    from cfglab.exact import cyk

    eos = ctx.eos
    prompts = [np.concatenate([packed(s[:k], eos), [BOS]]) for _, s in windows]
    temperature = ctx.settings.temperatures[t_index]
    seqs = ctx.generate(temperature, prompts, ctx.rng("eval_generate", t_index, 0))
    own = np.zeros(len(windows), dtype=bool)
    other = np.zeros(len(windows), dtype=bool)
    for w, (seq, p) in enumerate(zip(seqs, prompts, strict=True)):
        x, ended, bad = split_generation(seq[len(p) - 1 :], ctx.grammar.n_t)  # from the last BOS
        if not ended or bad >= 0 or len(x) == 0:
            continue
        own[w] = bool(ctx.exact(cyk.recognize, windows[w][0], [x])[0])
        other[w] = bool(ctx.exact(cyk.recognize, windows[(w + 1) % len(windows)][0], [x])[0])
    return own, other


def _interval(values: np.ndarray, rng: np.random.Generator) -> dict:
    """Mean of per-window values and its 95% percentile bootstrap interval over the windows."""
    n = len(values)
    means = values[rng.integers(0, n, size=(N_BOOTSTRAP, n))].mean(axis=1)  # (N_BOOTSTRAP,)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"value": float(values.mean()), "ci_low": float(low), "ci_high": float(high), "n": n}


def _share(ok: np.ndarray) -> dict:
    n, hits = len(ok), int(ok.sum())
    low, high = wilson_interval(hits, n)
    return {"value": hits / n if n else float("nan"), "ci_low": low, "ci_high": high, "n": n}


def measure_windows(ctx: EvalContext, spec: InContextSpec) -> dict:
    """The family's result on eval.n_kl windows (losses) and eval.n_samples (generations)."""
    k = spec.strings_per_window
    windows = _windows(ctx, spec, max(ctx.n_kl, ctx.n, 2))
    exact = _exact_side(ctx, spec, windows)
    n_kl = ctx.n_kl
    model = _model_losses(ctx, windows[:n_kl], k)  # (N, K)
    oracle, grid = exact["oracle"][:n_kl], exact["ngram"][:, :n_kl]  # (N, K), (grid, N, K)
    best = grid.mean(axis=1).argmin(axis=0)  # (K,) the baseline's best (n, alpha) per k
    ngram = grid[best, :, np.arange(k)].T  # (N, K)
    gap = model - oracle
    rng = np.random.default_rng(key_seed(int(ctx.settings.seed), IN_CONTEXT_PURPOSE, 1))
    per_k = []
    for i in range(k):
        per_k.append(
            {
                "k": i + 1,
                "icl_loss": _interval(model[:, i], rng),
                "icl_loss_oracle": _interval(oracle[:, i], rng),
                "icl_loss_ngram": _interval(ngram[:, i], rng),
                "icl_gap": _interval(gap[:, i], rng),
                "icl_ngram_margin": _interval(ngram[:, i] - model[:, i], rng),
                "ngram_order": NGRAM_GRID[best[i]][0],
                "ngram_alpha": NGRAM_GRID[best[i]][1],
            }
        )
    gens = []
    for ti, temperature in enumerate(ctx.settings.temperatures):
        own, other = _completions_judged(ctx, windows[: ctx.n], k, ti)
        margin = _interval(own.astype(float) - other.astype(float), rng)
        gens.append(
            {
                "temperature": temperature,
                "icl_gen_own": _share(own),
                "icl_gen_other": _share(other),
                "icl_gen_margin": margin,
            }
        )
    return {
        "spec": {**spec.__dict__, "levels": list(spec.levels)},
        "per_k": per_k,
        "icl_gap_drop": _interval(gap[:, 0] - gap[:, k - 1], rng),
        "generations": gens,
        "icl_gen_base_rate": _share(exact["base_rate"][: ctx.n]),
        "ngram_grid": [list(p) for p in NGRAM_GRID],
    }


def measure(ctx: EvalContext) -> dict | None:
    """measure_windows on the run's data.in_context; None (not applicable) without it."""
    spec = ctx.in_context
    return None if spec is None else measure_windows(ctx, spec)


PER_K = ("icl_loss", "icl_loss_oracle", "icl_loss_ngram", "icl_gap", "icl_ngram_margin")


def summary_rows(result: dict) -> list[dict]:
    rows = [{"metric": m, "k": r["k"], **r[m]} for m in PER_K for r in result["per_k"]]
    rows.append({"metric": "icl_gap_drop", **result["icl_gap_drop"]})
    for g in result["generations"]:
        for m in ("icl_gen_own", "icl_gen_other", "icl_gen_margin"):
            rows.append({"metric": m, "temperature": g["temperature"], **g[m]})
    rows.append({"metric": "icl_gen_base_rate", **result["icl_gen_base_rate"]})
    return rows
