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

References beside every (gamma, cut), so that a score can be read (cfglab.exact.repair):
**clean control**, the model's score (A) on the same prompts uncorrupted (per temperature);
**map repair**, the score of repairing each corrupted prompt to its most probable clean prompt
and completing that with the grammar's exact distribution; **ceiling**, the best score any
model can reach on these prompts. The references are exact, estimated or absent (the row's
`method` says which; the result says why one is absent).
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
    "prompt_still_viable": "share of corrupted prompts that are still a prefix of some sentence "
    "(per gamma and cut, with its Wilson interval).",
    "robust_clean_control": "score (A) of the model's completions of the same cutC prompts "
    "uncorrupted (gamma 0), per temperature: what the corruption costs is robust_clean minus "
    "this.",
    "robust_map_repair": "mean over the corrupted prompts z of the expected score (A) of: repair "
    "z to its most probable clean prompt c^ = argmax_c P(c | z) (prior: the eval's clean-prompt "
    "distribution; likelihood: the substitution model at rate gamma; ties averaged), then "
    "complete c^ with the grammar's exact distribution P(y | c^); the expectation is over the "
    "clean prompt given z and over y: sum_y P(y | c^) sum_c P(c | z) 1[c + y in L]. method "
    "exact: every sentence enumerated (a finite language of at most 2,000,000 derivation trees); "
    "estimate: the posterior exact (at most 100,000 viable prefixes of each length up to C), the "
    "sum over y by 8 exact samples of y given c^, the sum over c exact over the most probable "
    "prompts holding 1 - 1e-6 of the posterior (at most 64) plus one prompt drawn from the rest "
    "(unbiased), on the first 200 prompts; absent (value empty): neither enumeration is "
    "possible. Interval: mean +- 1.96 standard errors over prompts.",
    "robust_ceiling": "mean over the corrupted prompts z of max_y sum_c P(c | z) 1[c + y in L]: "
    "the best expected score (A) of a single completion y given z, so no model can exceed it on "
    "average. method exact: the max over every completion of the enumerated language; "
    "lower_bound: the max over candidates (exact samples completing c^ and the 3 next most "
    "probable clean prompts), each scored exactly over the most probable prompts holding "
    "1 - 1e-6 of the posterior (at most 64), on the first 200 prompts; absent: as for "
    "robust_map_repair. Interval: mean +- 1.96 standard errors over prompts.",
}


def corrupted_prompts(
    true_strings: Sequence[np.ndarray], n_t: int, cut: int, gamma: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(clean, noisy): the first `cut` tokens of each true string longer than `cut`, and their
    substitution-corrupted copies (rate gamma, seed `seed`)."""
    clean = [np.asarray(s[:cut], dtype=np.int64) for s in true_strings if len(s) > cut]
    return clean, corrupt(clean, n_t, gamma, seed, ("substitute",))


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
    clean, noisy = corrupted_prompts(true_strings, t, cut, gamma, corrupt_seed)
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
        "still_viable": proportion(viable),
    }


def _score(
    ctx: EvalContext,
    pool: list[np.ndarray],
    cut: int,
    temperature: float,
    gamma: float,
    corrupt_seed: int,
    stream: tuple,
) -> dict:
    """corrupted_prompt_accuracy of the model at `temperature`, its generations drawn from the
    stream (purpose, *key, cut)."""
    return corrupted_prompt_accuracy(
        ctx.grammar,
        lambda prompts, rng: ctx.generate(temperature, prompts, rng),
        pool,
        ctx.rng(*stream, cut),
        cut=cut,
        gamma=gamma,
        corrupt_seed=corrupt_seed,
        temperature=temperature,
        batch_size=len(pool),
    )


def _references(ctx: EvalContext, pool: list[np.ndarray], cut: int, gi: int) -> dict:
    """cfglab.exact.repair.references on the corrupted prompts of (gamma number gi, cut): the
    clean prompts are enumerated once per cut, the references once per (gamma, cut) (neither
    depends on the model, so the dynamics stage's shared memo keeps them)."""
    from cfglab.exact import repair

    gamma = ctx.settings.corrupt[gi]
    seed = ctx.seed("robust_corrupt", gi, cut)
    key = ("robust_references", gamma, cut, seed, ctx.max_len, len(pool))
    if key not in ctx.memo:
        space_key = ("robust_clean_prompts", cut, ctx.max_len)
        if space_key not in ctx.memo:
            ctx.memo[space_key] = ctx.exact(repair.clean_prompts, ctx.grammar, cut, ctx.max_len)
        _, noisy = corrupted_prompts(pool, ctx.grammar.n_t, cut, gamma, seed)
        rng = ctx.rng("robust_reference", gi, cut)
        refs = ctx.exact(
            repair.references, ctx.grammar, ctx.memo[space_key], noisy, gamma, rng, ctx.max_len
        )
        ctx.memo[key] = refs
    return ctx.memo[key]


def measure(ctx: EvalContext) -> list[dict] | None:
    """corrupted_prompt_accuracy per (gamma, temperature, cut > 0) of eval.corrupt x
    eval.temperatures x eval.cuts, each with its references: the clean control (the same
    prompts uncorrupted, per (cut, temperature)) and map repair and ceiling (per (gamma, cut));
    None when eval.corrupt is empty."""
    s = ctx.settings
    if not s.corrupt:
        return None
    out = []
    controls: dict[tuple[int, int], dict] = {}  # (cut, temperature number) -> score (A)
    for gi, gamma in enumerate(s.corrupt):
        for cut in (c for c in s.cuts if c > 0):
            pool = ctx.strings_longer_than(ctx.n, cut, "robust_prompts")
            refs = _references(ctx, pool, cut, gi)
            for ti, temperature in enumerate(s.temperatures):
                seed = ctx.seed("robust_corrupt", gi, cut)
                res = _score(ctx, pool, cut, temperature, gamma, seed, ("robust_generate", gi, ti))
                if (cut, ti) not in controls:  # the same prompts, uncorrupted
                    control = _score(ctx, pool, cut, temperature, 0.0, 0, ("robust_control", ti))
                    controls[(cut, ti)] = control["clean"]
                out.append({**res, "clean_control": controls[(cut, ti)], "references": refs})
    return out


def _row(metric: str, at: dict, rate: dict) -> dict:
    return {
        "metric": metric,
        **at,
        "value": rate["accuracy"],
        "ci_low": rate["ci_low"],
        "ci_high": rate["ci_high"],
        "n": rate["n"],
    }


def _reference_rows(r: dict) -> list[dict]:
    """robust_map_repair and robust_ceiling of one (gamma, cut), and prompt_still_viable."""
    at = {"cut": r["cut"], "gamma": r["gamma"]}
    rows = [_row("prompt_still_viable", at, r["still_viable"])] if "still_viable" in r else []
    refs = r.get("references")
    if refs is None:  # a result written before the references existed
        return rows
    for name in ("map_repair", "ceiling"):
        ref = refs[name]
        if ref is None:
            rows.append(
                {"metric": f"robust_{name}", **at, "method": "absent", "value": None, "n": 0}
            )
            continue
        rows.append(
            {
                "metric": f"robust_{name}",
                **at,
                "method": ref["method"],
                "value": ref["value"],
                "ci_low": ref["ci_low"],
                "ci_high": ref["ci_high"],
                "n": ref["n"],
            }
        )
    return rows


def summary_rows(result: list[dict]) -> list[dict]:
    """Per (gamma, cut, temperature): robust_clean, robust_no_new_errors and
    robust_clean_control; per (gamma, cut): prompt_still_viable, robust_map_repair and
    robust_ceiling (qualifier `method`: exact, estimate, lower_bound or absent)."""
    rows, seen = [], set()
    for r in result:
        at = {"cut": r["cut"], "gamma": r["gamma"], "temperature": r["temperature"]}
        for score in ("clean", "no_new_errors", "clean_control"):
            if score in r:
                rows.append(_row(f"robust_{score}", at, r[score]))
        if (r["gamma"], r["cut"]) not in seen:
            seen.add((r["gamma"], r["cut"]))
            rows += _reference_rows(r)
    return rows
