"""Robustness to corrupted prompts (the paper's Results 11-13): stage 6a, metric family.

A cutC prompt (the first C tokens of a fresh true string) has each token substituted by a
different random terminal with probability gamma (`cfglab.data.noise.corrupt`, default 0.15);
the model completes the corrupted prompt, and the completion is scored two ways (SPEC.md,
[ours]):

- **(A) clean**: the *clean* prompt + the completion is in the language: the model guessed the
  intended prefix and continued it correctly;
- **(B) no new errors**: min_substitutions(corrupted prompt + completion) <= the number of tokens
  the corruption changed: the completion added no error of its own (the corrupted prompt is
  within that many substitutions of a viable prefix, so a perfect continuation stays within it).

Also reported: the share of corrupted prompts that are still viable prefixes (a substitution can
land on another grammatical prefix). Both scores come with 95% Wilson / Clopper-Pearson intervals,
per (gamma, temperature, cut): the same corrupted prompts at every temperature, so the
temperature "mode switch" of a noise-trained model shows as a curve over temperature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cfglab.data.noise import corrupt
from cfglab.data.vocab import BOS
from cfglab.evaluate.accuracy import split_generation
from cfglab.evaluate.adapters import GenerateFn
from cfglab.evaluate.context import EvalContext
from cfglab.evaluate.stats import proportion
from cfglab.grammar.cfg import Grammar

DEFINITIONS: dict[str, str] = {
    "robust_clean": "share of completions of corrupted cutC prompts for which the clean prompt + "
    "the completion (up to EOS) is in the language; a completion without EOS or with a special "
    "token is wrong.",
    "robust_no_new_errors": "share of completions for which min_substitutions(corrupted prompt + "
    "completion) <= the number of prompt tokens the corruption changed.",
    "prompt_still_viable": "share of corrupted prompts that are still a prefix of some sentence.",
}


def corrupted_prompt_accuracy(
    grammar: Grammar,
    generate: GenerateFn,
    true_strings: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    cut: int = 50,
    gamma: float = 0.15,
    corrupt_seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 64,
) -> dict:
    """Scores (A) and (B) of the module docstring for one completion per true string longer than
    `cut` (its first `cut` tokens are the clean prompt, corrupted with seed `corrupt_seed`);
    `generate` completes them with `rng`. JSON-ready dict."""
    from cfglab.exact import cyk

    t = grammar.n_t
    clean = [np.asarray(s[:cut], dtype=np.int64) for s in true_strings if len(s) > cut]
    noisy = corrupt(clean, t, gamma, corrupt_seed, ("substitute",))
    n_changed = np.array([int((a != b).sum()) for a, b in zip(clean, noisy, strict=True)])
    prompts = [np.concatenate([[BOS], p]) for p in noisy]
    seqs: list[np.ndarray] = []
    for b in range(0, len(prompts), batch_size):
        seqs.extend(generate(prompts[b : b + batch_size], rng))
    completions, usable = [], []
    for p, s in zip(prompts, seqs, strict=True):
        body, ended, bad = split_generation(s, t)
        completions.append(body[len(p) - 1 :])
        usable.append(ended and bad < 0)
    usable_arr = np.array(usable, dtype=bool)
    idx = np.flatnonzero(usable_arr)  # completions with EOS and no special token are judged
    repaired = [np.concatenate([clean[i], completions[i]]) for i in idx]
    as_is = [np.concatenate([noisy[i], completions[i]]) for i in idx]
    ok_a = np.zeros(len(clean), dtype=bool)
    ok_b = np.zeros(len(clean), dtype=bool)
    if len(idx):
        ok_a[idx] = np.asarray(cyk.recognize(grammar, repaired), dtype=bool)
        dist = np.asarray(cyk.min_substitutions(grammar, as_is), dtype=np.int64)
        ok_b[idx] = (dist >= 0) & (dist <= n_changed[idx])
    viable = np.asarray(cyk.first_error(grammar, noisy), dtype=np.int64) < 0
    return {
        "cut": cut,
        "gamma": gamma,
        "temperature": temperature,
        "mean_tokens_changed": float(n_changed.mean()) if len(n_changed) else float("nan"),
        "clean": proportion(ok_a),
        "no_new_errors": proportion(ok_b),
        "prompt_still_viable": float(viable.mean()) if len(viable) else float("nan"),
    }


def measure(ctx: EvalContext) -> list[dict] | None:
    """corrupted_prompt_accuracy per (gamma, temperature, cut > 0) of eval.corrupt x
    eval.temperatures x eval.cuts; None when eval.corrupt is empty."""
    s = ctx.settings
    if not s.corrupt:
        return None
    out = []
    for gi, gamma in enumerate(s.corrupt):
        for cut in (c for c in s.cuts if c > 0):
            pool = ctx.strings_longer_than(ctx.n, cut, "robust_prompts")
            for ti, temperature in enumerate(s.temperatures):
                out.append(
                    corrupted_prompt_accuracy(
                        ctx.grammar,
                        lambda prompts, rng, t=temperature: ctx.generate(t, prompts, rng),
                        pool,
                        ctx.rng("robust_generate", gi, ti, cut),
                        cut=cut,
                        gamma=gamma,
                        corrupt_seed=ctx.seed("robust_corrupt", gi, cut),
                        temperature=temperature,
                        batch_size=len(pool),
                    )
                )
    return out


def summary_rows(result: list[dict]) -> list[dict]:
    rows = []
    for r in result:
        for score in ("clean", "no_new_errors"):
            a = r[score]
            rows.append(
                {
                    "metric": f"robust_{score}",
                    "cut": r["cut"],
                    "gamma": r["gamma"],
                    "temperature": r["temperature"],
                    "value": a["accuracy"],
                    "ci_low": a["ci_low"],
                    "ci_high": a["ci_high"],
                    "n": a["n"],
                }
            )
    return rows
