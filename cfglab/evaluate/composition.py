"""Held-out compositions: does the model give rule combinations it never saw their true
probability? (stage 6a, metric family)

With `data.exclude` the training stream holds no string whose tree contains one of the named
rule combinations (cfglab.data.exclude), while each rule is still seen on its own. This family
scores a model on the combinations of `eval.compositions` (by default the run's data.exclude;
set it on a run trained without exclusions to measure the same things on a full model) and
does not apply when there are none. It measures:

- on fresh *held-out strings* (the grammar's strings whose sampled tree contains a combination:
  drawn from the full grammar and filtered by their tree), the model's log-probability per
  predicted token beside the exact one (cfglab.exact.inside), and their difference;
- the same difference on *control strings* (trees without the combinations: the training
  distribution), so that a general misfit is not read as a held-out one;
- the share of the model's cut0 generations that use a combination, beside the grammar's exact
  mass of such strings and the training distribution's own share.

Ambiguity: a string may have parses with and without a combination. A generation x "uses" a
combination with the grammar's posterior probability that its derivation contains one,
P(contains | x) = 1 - q * P_train(x) / P(x), where P_train is the exact training distribution
(cfglab.data.exclude.conditioned_grammar, q its normalising probability) and P the grammar's; it
is 0 or 1 for an unambiguous string. A held-out string is defined by its sampled tree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cfglab.data.exclude import (
    Combination,
    avoid_prob,
    conditioned_grammar,
    heldout_mass,
    parse_combinations,
)
from cfglab.data.sampler import sample
from cfglab.evaluate.accuracy import judged_generations
from cfglab.evaluate.adapters import sequence_log_probs
from cfglab.evaluate.context import EvalContext
from cfglab.evaluate.stats import wilson_interval

DEFINITIONS: dict[str, str] = {
    "heldout_logprob": (
        "the model's log-probability per predicted token on held-out strings: the mean over "
        "eval.n_kl fresh strings of the grammar whose sampled tree contains a combination of "
        "eval.compositions (stream 'eval_kl' filtered by the tree) of log Q(x EOS) / (n + 1), "
        "nats; 95% normal interval over the strings."
    ),
    "heldout_logprob_exact": (
        "the grammar's exact log P(x) / (n + 1) on the same held-out strings (cfglab.exact."
        "inside), mean over the strings: what a model of the whole grammar scores."
    ),
    "heldout_gap": (
        "mean over the held-out strings of (log Q(x EOS) - log P(x)) / (n + 1), nats per token, "
        "95% normal interval over the strings: 0 when the model gives the held-out combinations "
        "their true probability, below 0 when it gives them less (a model of its training "
        "stream alone gives them none)."
    ),
    "control_gap": (
        "the same difference on eval.n_kl fresh strings whose tree contains none of the "
        "combinations (the training distribution; stream 'eval_kl' filtered): the model's "
        "fit apart from the held-out combinations. A model of the training stream scores "
        "-log(1 - heldout_mass) / (n + 1) above 0 here."
    ),
    "heldout_share": (
        "among the grammatical cut0 generations (at this temperature; shared with the accuracy "
        "family), the mean posterior probability under the grammar that the derivation uses a "
        "combination: 1 - q P_train(x) / P(x) (0 or 1 for unambiguous strings); 95% Wilson "
        "interval with the summed posteriors as successes. Its references: heldout_mass (a "
        "sampler of the grammar) and heldout_share_train (a sampler of the training stream)."
    ),
    "heldout_mass": (
        "exact probability that the tree of a string of the grammar contains a combination (no "
        "length cap): the grammar's share of held-out strings, the heldout_share of a model "
        "that samples the grammar exactly. Exact: one number (n = 1), no interval."
    ),
    "heldout_share_train": (
        "the mean of the same posterior over the control strings (drawn from the training "
        "distribution): the heldout_share of a model that samples its training stream exactly "
        "(0 for a grammar whose strings have one parse); 95% Wilson interval."
    ),
}


def _per_token_stats(values: np.ndarray) -> dict:
    """Mean, 95% normal interval and n of per-string values."""
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return {"value": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def _share_stats(posteriors: np.ndarray) -> dict:
    """Mean posterior and its Wilson interval (summed posteriors as successes)."""
    n = len(posteriors)
    k = float(posteriors.sum())
    low, high = wilson_interval(k, n) if n else (0.0, 1.0)
    return {"value": k / n if n else float("nan"), "ci_low": low, "ci_high": high, "n": n}


class _Truth:
    """The exact side of the family for one set of combinations: the grammar, the training
    distribution as a grammar, its normalising probability and the held-out mass."""

    def __init__(self, grammar, combos: Sequence[Combination]) -> None:
        self.grammar = grammar
        self.combos = tuple(combos)
        self.train = conditioned_grammar(grammar, combos)
        self.log_q = math.log(avoid_prob(grammar, combos))
        self.mass = heldout_mass(grammar, combos)

    def log_probs(self, strings: Sequence[np.ndarray]) -> np.ndarray:
        from cfglab.exact import inside

        return inside.log_prob(self.grammar, strings)

    def posteriors(self, strings: Sequence[np.ndarray], log_p: np.ndarray) -> np.ndarray:
        """(N,) P(the derivation contains a combination | x) for sentences x with log P(x)."""
        from cfglab.exact import inside

        if not len(strings):
            return np.zeros(0)
        log_train = inside.log_prob(self.train, strings)  # -inf: every parse uses one
        with np.errstate(under="ignore"):
            keep = np.exp(np.minimum(self.log_q + log_train - log_p, 0.0))
        post = np.clip(1.0 - keep, 0.0, 1.0)
        # snap rounding residue (1 - exp(~1e-16)) to the exact 0 or 1 of an unambiguous string
        return np.where(post < 1e-9, 0.0, np.where(post > 1 - 1e-9, 1.0, post))


def _truth(ctx: EvalContext, texts: Sequence[str]) -> _Truth:
    key = ("composition_truth", tuple(texts))
    if key not in ctx.memo:
        combos = parse_combinations(ctx.grammar, texts, "eval.compositions")
        ctx.memo[key] = ctx.exact(_Truth, ctx.grammar, combos)
    return ctx.memo[key]


def _strings(ctx: EvalContext, truth: _Truth, keep: str) -> tuple[list[np.ndarray], np.ndarray]:
    """eval.n_kl fresh strings of the grammar whose tree contains (keep='with') or avoids
    (keep='without') the combinations, and their exact log P(x), once per memo. The stream is
    the KL's ('eval_kl', the family's stream of true strings) with the tree filter: each set is
    an independent sample of its own kind of string."""
    key = ("composition_strings", keep, truth.combos)
    if key not in ctx.memo:
        filters = {"require": truth.combos} if keep == "with" else {"exclude": truth.combos}
        draw = ctx.clock.wrap("sample", sample)
        batch = draw(
            ctx.grammar, ctx.n_kl, ctx.seed("eval_kl"), max_len=ctx.max_len, labels=False, **filters
        )
        strings = batch.strings()
        ctx.memo[key] = (strings, ctx.exact(truth.log_probs, strings))
    return ctx.memo[key]


def measure_compositions(ctx: EvalContext, texts: Sequence[str]) -> dict:
    """The family's result for the combinations `texts` (see DEFINITIONS)."""
    truth = _truth(ctx, texts)
    out: dict = {
        "combinations": [c.text for c in truth.combos],
        "heldout_mass": truth.mass,
    }
    b = ctx.settings.batch_size
    for name, keep in (("heldout", "with"), ("control", "without")):
        strings, log_p = _strings(ctx, truth, keep)
        log_q = sequence_log_probs(ctx.model, strings, ctx.eos, b)
        tokens = np.array([len(x) + 1 for x in strings], dtype=np.float64)
        out[name] = {
            "logprob": _per_token_stats(log_q / tokens),
            "logprob_exact": _per_token_stats(log_p / tokens),
            "gap": _per_token_stats((log_q - log_p) / tokens),
        }
        if keep == "without":
            out["share_train"] = _share_stats(ctx.exact(truth.posteriors, strings, log_p))
    out["generations"] = []
    for ti, temperature in enumerate(ctx.settings.temperatures):
        _, (correct, _, strings, _, _) = judged_generations(ctx, 0, ti)
        good = [s for s, ok in zip(strings, correct, strict=True) if ok]
        log_p = ctx.exact(truth.log_probs, good) if good else np.zeros(0)
        share = _share_stats(ctx.exact(truth.posteriors, good, log_p))
        out["generations"].append({"temperature": temperature, **share})
    return out


def measure(ctx: EvalContext) -> dict | None:
    """measure_compositions on eval.compositions; None (not applicable) when it is empty."""
    texts = ctx.settings.compositions
    return measure_compositions(ctx, texts) if texts else None


def summary_rows(result: dict) -> list[dict]:
    h, c = result["heldout"], result["control"]
    rows = [
        {"metric": "heldout_logprob", **h["logprob"]},
        {"metric": "heldout_logprob_exact", "value": h["logprob_exact"]["value"],
         "n": h["logprob_exact"]["n"]},
        {"metric": "heldout_gap", **h["gap"]},
        {"metric": "control_gap", **c["gap"]},
        {"metric": "heldout_mass", "value": result["heldout_mass"], "n": 1},  # exact
        {"metric": "heldout_share_train", **result["share_train"]},
    ]  # fmt: skip
    for g in result["generations"]:
        rows.append({"metric": "heldout_share", "cut": 0, **g})
    return rows
