"""Robustness to corrupted prompts (the paper's Results 11-12): stage 6a, beside metrics.py.

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
land on another grammatical prefix). Both scores come with 95% Wilson / Clopper-Pearson intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cfglab.data.noise import corrupt
from cfglab.data.vocab import BOS
from cfglab.evaluate.metrics import (
    GenerateFn,
    clopper_pearson_interval,
    split_generation,
    wilson_interval,
)
from cfglab.grammar.cfg import Grammar

DEFINITIONS: dict[str, str] = {
    "robust_clean": "share of completions of corrupted cutC prompts for which the clean prompt + "
    "the completion (up to EOS) is in the language; a completion without EOS or with a special "
    "token is wrong.",
    "robust_no_new_errors": "share of completions for which min_substitutions(corrupted prompt + "
    "completion) <= the number of prompt tokens the corruption changed.",
    "prompt_still_viable": "share of corrupted prompts that are still a prefix of some sentence.",
}


def _rate(ok: np.ndarray) -> dict:
    n, k = len(ok), int(np.sum(ok))
    lo, hi = wilson_interval(k, n)
    cp_lo, cp_hi = clopper_pearson_interval(k, n)
    return {
        "n": n,
        "n_correct": k,
        "accuracy": k / n if n else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "cp_low": cp_lo,
        "cp_high": cp_hi,
    }


def corrupted_prompt_accuracy(
    grammar: Grammar,
    generate: GenerateFn,
    true_strings: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    cut: int = 50,
    gamma: float = 0.15,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 64,
) -> dict:
    """Scores (A) and (B) of the module docstring for one completion per true string longer than
    `cut` (its first `cut` tokens are the clean prompt). JSON-ready dict."""
    from cfglab.exact import cyk

    t = grammar.n_t
    clean = [np.asarray(s[:cut], dtype=np.int64) for s in true_strings if len(s) > cut]
    noisy = corrupt(clean, t, gamma, seed, ("substitute",))
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
        "clean": _rate(ok_a),
        "no_new_errors": _rate(ok_b),
        "prompt_still_viable": float(viable.mean()) if len(viable) else float("nan"),
        "definitions": DEFINITIONS,
    }
