"""Diversity: does the model produce many different strings, not memorised ones? (stage 6a,
metric family)

On the cut0 generations at the first temperature (shared with the accuracy family): distinct
strings and the birthday estimate of the support, completions of one fixed prompt, the model's
entropy and the reverse KL E_Q[log Q - log P], distinct subtree yields per nonterminal beside
true strings, and the share seen in a saved training set.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from cfglab.evaluate.accuracy import judged_generations, split_generation
from cfglab.evaluate.adapters import sequence_log_probs
from cfglab.evaluate.context import EvalContext
from cfglab.grammar.cfg import Grammar

DEFINITIONS: dict[str, str] = {
    "distinct": (
        "number (and share) of distinct strings among the M generations, and among M completions "
        "of one fixed prompt."
    ),
    "distinct_share": "distinct strings among the M cut0 generations, as a share of M.",
    "distinct_share_one_prompt": (
        "distinct completions among M completions of one fixed prompt, as a share of M."
    ),
    "collision_support": (
        "birthday estimate of the effective support 1 / sum_x q(x)^2 of the generations: C(M, 2) "
        "/ (number of equal pairs); with no equal pair, only the lower bound C(M, 2) / 3 (rule of"
        " three, pairs treated as independent) is given: M distinct samples imply a support of "
        "order M^2 (the paper's argument)."
    ),
    "model_entropy": (
        "entropy of the model's string distribution Q (at the sampling temperature) estimated on "
        "its own cut0 generations that ended with EOS and hold no special token: mean of -log Q(x"
        " EOS) per string (nats) and per predicted token; exp(per-string entropy) is the "
        "entropy-based effective support."
    ),
    "model_entropy_per_token": "model_entropy per predicted token (nats).",
    "reverse_kl": (
        "string-level KL(Q_L || P) per predicted token from the model conditioned on the "
        "language, Q_L(x) = Q(x) / Q(L), to the truth P: the mean over the grammatical "
        "generations of log Q(x) - log Q(L) - log P(x), divided by their mean number of "
        "predicted tokens (n + 1); Q(L) is estimated by share_in_language. A KL, so >= 0 up to "
        "its standard error (reverse_kl_stderr, delta method, the share's own error included); "
        "a memorising or mode-collapsed model makes it large, mass outside the language does not."
    ),
    "share_in_language": (
        "share of all cut0 generations that are in the language (ended with EOS, no special "
        "token, accepted by the exact recognizer): the estimate of Q(L) used by reverse_kl."
    ),
    "subtree_diversity": (
        "per nonterminal (and summed per level), the number of distinct strings it derives "
        "(subtree yields) in one parse (CYK) of each grammatical cut0 generation, beside the same"
        " count on as many fresh true strings: fewer distinct yields than the truth means the "
        "model reuses memorised pieces."
    ),
    "seen_in_training": (
        "share of generations (full strings) that occur in the saved training dataset; absent "
        "when training used fresh samples."
    ),
}


def _key(s: np.ndarray) -> bytes:
    return np.asarray(s, dtype=np.int64).tobytes()


def collision_stats(strings: Sequence[np.ndarray]) -> dict:
    """Distinct strings and the birthday estimate of the support; DEFINITIONS['distinct'],
    ['collision_support']."""
    m = len(strings)
    counts = Counter(_key(s) for s in strings)
    pairs = m * (m - 1) / 2
    equal_pairs = sum(c * (c - 1) // 2 for c in counts.values())
    return {
        "n": m,
        "distinct": len(counts),
        "distinct_share": len(counts) / m if m else float("nan"),
        "equal_pairs": int(equal_pairs),
        "collision_support": pairs / equal_pairs if equal_pairs else None,
        "collision_support_lower": pairs / 3 if not equal_pairs and m > 1 else None,
    }


def diversity(
    strings: Sequence[np.ndarray],
    *,
    fixed_prompt_strings: Sequence[np.ndarray] | None = None,
    model_logq: np.ndarray | None = None,
    true_logp: np.ndarray | None = None,
    training: set[bytes] | None = None,
    n_generated: int | None = None,
) -> dict:
    """Diversity of M generations (strings as judged, prompt included, no EOS).

    model_logq: log Q(x EOS) of each generation under the model; true_logp: log P(x) (-inf when
    not in the language); n_generated: all generations these M were kept from (default M; the
    others, unfinished or with a special token, are outside the language). See
    DEFINITIONS['distinct'], ['collision_support'], ['model_entropy'], ['reverse_kl'],
    ['share_in_language'], ['seen_in_training'].
    """
    out: dict = {"generations": collision_stats(strings)}
    if fixed_prompt_strings is not None:
        out["fixed_prompt"] = collision_stats(fixed_prompt_strings)
    tokens = np.array([len(s) + 1 for s in strings], dtype=np.float64)  # predicted tokens + EOS
    if model_logq is not None and len(strings):
        lq = np.asarray(model_logq, dtype=np.float64)
        h = float(-lq.mean())
        out["model_entropy_per_string"] = h
        out["model_entropy_per_token"] = float(-lq.sum() / tokens.sum())
        out["entropy_support_log10"] = h / math.log(10)
        if true_logp is not None:
            out.update(reverse_kl(lq, np.asarray(true_logp, dtype=np.float64), tokens, n_generated))
    if training is not None:
        seen = sum(_key(s) in training for s in strings)
        out["seen_in_training"] = seen / len(strings) if len(strings) else float("nan")
    return out


def reverse_kl(
    lq: np.ndarray, lp: np.ndarray, tokens: np.ndarray, n_generated: int | None = None
) -> dict:
    """DEFINITIONS['reverse_kl'] with its standard error, and ['share_in_language']."""
    ok = np.isfinite(lp)
    n_all = len(lp) if n_generated is None else n_generated
    share = ok.sum() / n_all if n_all else float("nan")
    out = {"share_in_language": float(share), "reverse_kl": None, "reverse_kl_stderr": None}
    k = int(ok.sum())
    if k == 0:
        return out
    d = lq[ok] - lp[ok] - math.log(share)  # log Q_L(x) - log P(x), per string
    t = tokens[ok]
    ratio = d.sum() / t.sum()
    out["reverse_kl"] = float(ratio)
    if k > 1:
        # ratio estimator's variance (delta method) plus that of log(share), binomial
        var = ((d - ratio * t) ** 2).sum() / (k * (k - 1)) / t.mean() ** 2
        var += (1 - share) / (n_all * share) / t.mean() ** 2
        out["reverse_kl_stderr"] = float(math.sqrt(var))
    return out


def subtree_diversity(
    grammar: Grammar, generated: Sequence[np.ndarray], true_strings: Sequence[np.ndarray]
) -> dict:
    """Distinct subtree yields per nonterminal in grammatical generations vs true strings;
    DEFINITIONS['subtree_diversity']. Returns {"per_nt": [{nt, level, generated, true}],
    "per_level": [{level, generated, true}] (layered grammars), "n_generated", "n_true"}."""
    from cfglab.exact import cyk

    def yields(strings: Sequence[np.ndarray]) -> tuple[dict[int, set[bytes]], int]:
        sets: dict[int, set[bytes]] = {a: set() for a in range(grammar.n_nt)}
        strings = [np.asarray(x, dtype=np.int64) for x in strings]
        trees = cyk.parse(grammar, strings) if strings else []
        used = 0
        for x, tree in zip(strings, trees, strict=True):
            if tree is None:
                continue
            used += 1
            for nt, start, end in tree.spans():
                sets[int(nt)].add(x[start:end].tobytes())
        return sets, used

    gen, n_gen = yields(generated)
    true, n_true = yields(true_strings)
    level_of = (
        {a: lv for lv, lev in enumerate(grammar.levels) for a in lev} if grammar.levels else {}
    )
    per_nt = [
        {
            "nt": grammar.nonterminals[a],
            "level": level_of.get(a),
            "generated": len(gen[a]),
            "true": len(true[a]),
        }
        for a in range(grammar.n_nt)
        if gen[a] or true[a]
    ]
    per_level = []
    if grammar.levels:
        for lv, lev in enumerate(grammar.levels):
            per_level.append(
                {
                    "level": lv,
                    "generated": sum(len(gen[a]) for a in lev),
                    "true": sum(len(true[a]) for a in lev),
                }
            )
    return {"per_nt": per_nt, "per_level": per_level, "n_generated": n_gen, "n_true": n_true}


def training_set(strings: Sequence[np.ndarray]) -> set[bytes]:
    """A saved dataset's strings as a set for `diversity(training=...)`."""
    return {_key(s) for s in strings}


def measure(ctx: EvalContext) -> dict | None:
    """Diversity of the cut0 generations at the first temperature; None without cut 0."""
    from cfglab.exact import inside

    s = ctx.settings
    if 0 not in s.cuts:
        return None
    temperature = s.temperatures[0]
    _, (correct, _, strings, ended, bad) = judged_generations(ctx, 0, 0)
    fixed = None
    n_fixed = min(s.n_fixed_prompt, s.n_samples)
    if n_fixed:
        c = max(s.cuts)  # one prompt of the longest cut (BOS alone if only cut0)
        prompt = ctx.prompts(1, c)[0]
        seqs = ctx.generate(temperature, [prompt] * n_fixed, ctx.rng("eval_fixed_prompt"))
        fixed = [split_generation(x, ctx.grammar.n_t)[0] for x in seqs]
    # sampled events x EOS: ended, and no special token
    ok = [x for x, b, e in zip(strings, bad, ended, strict=True) if e and not b]
    lq = sequence_log_probs(ctx.model, ok, ctx.eos, s.batch_size, temperature=temperature)
    lp = np.asarray(ctx.exact(inside.log_prob, ctx.grammar, ok)) if ok else np.zeros(0)
    out = diversity(
        ok,
        fixed_prompt_strings=fixed,
        model_logq=lq,
        true_logp=lp,
        training=ctx.training,
        n_generated=len(strings),
    )
    out["temperature"] = temperature
    grammatical = [x for x, c in zip(strings, correct, strict=True) if c]
    reference = ctx.true_strings(len(grammatical), "eval_reference")
    out["subtree"] = None  # a language beyond context-free has no subtrees
    if isinstance(ctx.grammar, Grammar):
        out["subtree"] = ctx.exact(subtree_diversity, ctx.grammar, grammatical, reference)
    out["n_dropped"] = int(np.sum(bad | ~ended))
    return out


def summary_rows(result: dict) -> list[dict]:
    g = result["generations"]
    rows = [{"metric": "distinct_share", "value": g["distinct_share"], "n": g["n"]}]
    if "fixed_prompt" in result:
        f = result["fixed_prompt"]
        rows.append(
            {"metric": "distinct_share_one_prompt", "value": f["distinct_share"], "n": f["n"]}
        )
    for key in ("model_entropy_per_token", "share_in_language", "seen_in_training"):
        if result.get(key) is not None:
            rows.append({"metric": key, "value": result[key], "n": g["n"]})
    if result.get("reverse_kl") is not None:
        row = {"metric": "reverse_kl", "value": result["reverse_kl"], "n": g["n"]}
        if result.get("reverse_kl_stderr") is not None:
            half = 1.96 * result["reverse_kl_stderr"]
            row.update(ci_low=result["reverse_kl"] - half, ci_high=result["reverse_kl"] + half)
        rows.append(row)
    return rows
