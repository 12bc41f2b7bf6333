"""Exact references for completions of corrupted prompts: what repairing the prompt and the
best possible model would score (stage 3, no torch; read by cfglab.evaluate.robustness).

The robustness family shows a model z = a clean cutC prompt c (the first C tokens of a true
string longer than C) with each token substituted w.p. gamma by one of the other T-1
terminals, and scores a completion y by whether c + y is a sentence. Given z, the clean prompt
is uncertain; its posterior is

    P(c | z)  ∝  Q(c) K(z | c),    K(z | c) = (1 - gamma)^(C - d) (gamma / (T - 1))^d,

with Q the distribution of clean prompts and d the Hamming distance of c and z. A completion y
then scores w(y | z) = sum_c P(c | z) 1[c + y in L] in expectation over c, so per prompt z:

- **ceiling** = max_y w(y | z): no model (a function of z alone) can score more on average;
- **map repair** = sum_y P(y | c^) w(y | z): repair z to its most probable clean prompt c^
  (ties: the average over the tied prompts) and complete c^ with the grammar's exact
  distribution P(y | c^) = P(c^ y) / P(a sentence starts with c^).

Both are averaged over the same corrupted prompts the model completed. How they are computed
depends on what can be enumerated (`clean_prompts`):

- **exact**: a finite language of at most `language.MAX_DERIVATIONS` derivation trees: every
  sentence is enumerated, so Q (conditioned on C < |x| <= max_len, as the eval draws its
  prompts), the posterior, w(y | z) for every completion y and both references are exact (the
  quickstart grammar: 247,347 sentences, 1,341 clean prompts of 10 tokens; well under a second
  per 100 prompts).
- **estimate**: the clean prompts are enumerable (at most `language.MAX_PREFIXES` viable
  prefixes of each length up to C; Q from exact prefix probabilities, the max_len cap ignored),
  but not the language. The posterior is exact. Completions y are exact samples (strings
  sampled from the grammar that start with the prompt, or token by token for rare prompts).
  w(y | z) is summed over the support, the smallest set of most probable prompts holding
  1 - 1e-6 of the posterior (at most `SUPPORT`; the mean mass outside it is reported). Map
  repair: the mean over `N_MAP` samples y ~ P(y | c^) of w(y | z), the rest of the posterior
  represented by one clean prompt drawn from it: unbiased, its standard error over prompts.
  Ceiling: a **lower bound**, the best support-only w among those samples and `N_CANDIDATES`
  samples completing each of the next `TOP_OTHERS` most probable prompts. Only the first
  `MAX_ESTIMATE_PROMPTS` prompts are used (the row's n says how many). cfg3f at cut 10 (3,206
  prompts): ~8 s per 100 prompts.
- **absent** otherwise (e.g. cfg3f at cut 50: 3^50 prompts, and prefixes sampled from the
  grammar almost never come near a corrupted prompt), with the reason.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from cfglab.exact import cyk, inside, language
from cfglab.grammar.cfg import Grammar

SUPPORT = 64  # estimate: prompts of the posterior that w(y | z) sums over, at most
SUPPORT_MASS = 1 - 1e-6  # ... or fewer, once they hold this much of the posterior
N_MAP = 8  # estimate: exact completions of c^ per prompt
TOP_OTHERS = 3  # estimate: other probable prompts whose completions are ceiling candidates
N_CANDIDATES = 4  # ... completions each
MAX_ESTIMATE_PROMPTS = 200  # estimate: corrupted prompts the references are estimated on
TIE = 1e-12  # prompts within this relative posterior of the most probable one are tied


@dataclass
class CleanPrompts:
    """The clean cutC prompts of a grammar and what the references know about them."""

    cut: int
    method: str  # "exact" (every sentence enumerated) or "estimate" (prompts enumerated)
    prompts: np.ndarray  # (K, C) int64 token ids
    log_q: np.ndarray  # (K,) log Q(c), normalised; -inf: never a clean prompt
    # exact only: one entry per sentence s with |s| >= C, s = prompts[pair_prompt] + the
    # completion number pair_completion, sorted by completion; comp_start[y] = first entry of y
    pair_prompt: np.ndarray | None = None  # (S,) int64
    pair_completion: np.ndarray | None = None  # (S,) int64
    completion_prob: np.ndarray | None = None  # (S,) P(completion | prompt)
    comp_start: np.ndarray | None = None  # (Y,) int64
    n_sentences: int = 0


def clean_prompts(
    grammar: Grammar,
    cut: int,
    max_len: int | None = None,
    *,
    max_derivations: int = language.MAX_DERIVATIONS,
    max_prefixes: int = language.MAX_PREFIXES,
) -> CleanPrompts | str:
    """The clean prompts of `cut` tokens (the eval's: prefixes of sentences longer than `cut`,
    and no longer than `max_len`), exact or enumerated (module docstring; the bounds are
    parameters), or a string saying why neither is possible."""
    sentences = language.enumerate_sentences(grammar, max_derivations)
    if sentences is not None:
        return _from_sentences(sentences, cut, max_len)
    found = language.enumerate_prefixes(grammar, cut, max_prefixes)
    if found is None:
        return (
            f"{grammar.name or 'the grammar'} has more than {max_prefixes:,} viable "
            f"prefixes of some length up to {cut} tokens and its language is not a finite set "
            f"of at most {max_derivations:,} derivations: the clean prompts cannot be "
            "enumerated, and prompts sampled from the grammar almost never come near a "
            "corrupted one; use a shorter cut for a reference"
        )
    prompts, log_pp = found
    log_sent = inside.log_prob(grammar, list(prompts))  # P(the string is exactly c)
    # P(starts with c and is longer) = P(starts with c) (1 - P(is c) / P(starts with c)); a
    # share within rounding of 1 (c is only ever the whole sentence) is no prompt at all
    longer = -np.expm1(np.minimum(log_sent - log_pp, 0.0))
    with np.errstate(divide="ignore"):
        log_q = log_pp + np.log(np.where(longer > 1e-12, longer, 0.0))
    return CleanPrompts(cut, "estimate", prompts, _normalise(log_q))


def _from_sentences(sentences: dict, cut: int, max_len: int | None) -> CleanPrompts:
    """The exact CleanPrompts of an enumerated finite language."""
    keep = [(s, p) for s, p in sentences.items() if len(s) >= cut]
    prompt_ix: dict[tuple, int] = {}
    comp_ix: dict[tuple, int] = {}
    pair_prompt = np.empty(len(keep), np.int64)
    pair_comp = np.empty(len(keep), np.int64)
    prob = np.empty(len(keep))
    is_prompt = np.empty(len(keep), bool)  # the sentence is one the eval draws prompts from
    for e, (s, p) in enumerate(keep):
        pair_prompt[e] = prompt_ix.setdefault(s[:cut], len(prompt_ix))
        pair_comp[e] = comp_ix.setdefault(s[cut:], len(comp_ix))
        prob[e] = p
        is_prompt[e] = len(s) > cut and (max_len is None or len(s) <= max_len)
    k = len(prompt_ix)
    prompts = np.array(list(prompt_ix), dtype=np.int64).reshape(k, cut)
    prefix_prob = np.bincount(pair_prompt, weights=prob, minlength=k)
    q = np.bincount(pair_prompt, weights=prob * is_prompt, minlength=k)
    with np.errstate(divide="ignore"):
        log_q = np.log(q)
    order = np.argsort(pair_comp, kind="stable")
    comp_start = np.searchsorted(pair_comp[order], np.arange(len(comp_ix)))
    return CleanPrompts(
        cut,
        "exact",
        prompts,
        _normalise(log_q),
        pair_prompt=pair_prompt[order],
        pair_completion=pair_comp[order],
        completion_prob=(prob / prefix_prob[pair_prompt])[order],
        comp_start=comp_start,
        n_sentences=len(sentences),
    )


def _normalise(log_w: np.ndarray) -> np.ndarray:
    m = np.max(log_w) if len(log_w) else 0.0
    return log_w - (m + math.log(np.exp(log_w - m).sum()))


def posterior(space: CleanPrompts, noisy: np.ndarray, gamma: float, n_t: int) -> np.ndarray:
    """(n, K) P(c | z) for the corrupted prompts noisy (n, C): Q(c) K(z | c), normalised."""
    noisy = np.asarray(noisy, dtype=np.int64).reshape(len(noisy), space.cut)
    log_keep = math.log(1 - gamma) if gamma < 1 else -math.inf
    log_swap = math.log(gamma / (n_t - 1)) if gamma > 0 else -math.inf
    out = np.empty((len(noisy), len(space.prompts)))
    block = max(1, 20_000_000 // max(1, len(space.prompts) * max(1, space.cut)))
    for b in range(0, len(noisy), block):
        z = noisy[b : b + block]
        same = np.zeros((len(z), len(space.prompts)), np.int64)  # (b, K) matching positions
        for t in range(space.cut):
            same += space.prompts[None, :, t] == z[:, None, t]
        diff = space.cut - same
        with np.errstate(invalid="ignore"):  # 0 * -inf where gamma is 0 or 1: masked out
            log_k = np.where(same > 0, same * log_keep, 0.0)
            log_k += np.where(diff > 0, diff * log_swap, 0.0)
            logits = log_k + space.log_q[None, :]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[b : b + block] = p / p.sum(axis=1, keepdims=True)
    return out


def _summary(values: np.ndarray, method: str) -> dict:
    """Mean over prompts with its standard error and a normal 95% interval within [0, 1]."""
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    half = 1.96 * se if n > 1 else float("nan")
    return {
        "value": mean,
        "stderr": se,
        "ci_low": max(0.0, mean - half) if n > 1 else None,
        "ci_high": min(1.0, mean + half) if n > 1 else None,
        "n": n,
        "method": method,
    }


def references(
    grammar: Grammar,
    space: CleanPrompts | str,
    noisy: list[np.ndarray],
    gamma: float,
    rng: np.random.Generator,
    max_len: int | None = None,
) -> dict:
    """{"map_repair", "ceiling": {value, stderr, ci_low, ci_high, n, method} or None,
    "reason", "n_prompts_enumerated", "n_sentences", "mass_outside", "seconds"} for the
    corrupted prompts `noisy` (each `space.cut` tokens); see the module docstring."""
    t0 = time.perf_counter()
    if isinstance(space, str):
        return {"map_repair": None, "ceiling": None, "reason": space, "seconds": 0.0}
    if space.method == "estimate":
        noisy = noisy[:MAX_ESTIMATE_PROMPTS]
    post = posterior(space, np.array(noisy).reshape(len(noisy), space.cut), gamma, grammar.n_t)
    if space.method == "exact":
        map_v, ceil_v = _exact_values(space, post)
        outside = 0.0
        methods = ("exact", "exact")
    else:
        map_v, ceil_v, outside = _estimated_values(grammar, space, post, rng, max_len)
        methods = ("estimate", "lower_bound")
    return {
        "map_repair": _summary(map_v, methods[0]),
        "ceiling": _summary(ceil_v, methods[1]),
        "reason": None,
        "n_prompts_enumerated": len(space.prompts),
        "n_sentences": space.n_sentences,
        "mass_outside": outside,
        "seconds": time.perf_counter() - t0,
    }


def _tied(p: np.ndarray) -> np.ndarray:
    """The most probable prompts of one posterior (K,), ties within TIE."""
    return np.flatnonzero(p >= p.max() * (1 - TIE))


def _exact_values(space: CleanPrompts, post: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt (n,): map repair and ceiling, exactly, from the enumerated sentences."""
    k = len(space.prompts)
    n_comp = len(space.comp_start)
    column: dict[int, np.ndarray] = {}  # c^ -> (K,) P_{y ~ P(. | c^)}[c + y in L] over c

    def repaired(c_hat: int) -> np.ndarray:
        if c_hat not in column:
            mine = space.pair_prompt == c_hat
            p_y = np.zeros(n_comp)  # (Y,) the completion distribution of c^
            p_y[space.pair_completion[mine]] = space.completion_prob[mine]
            w = p_y[space.pair_completion]
            column[c_hat] = np.bincount(space.pair_prompt, weights=w, minlength=k)
        return column[c_hat]

    map_v = np.array([np.mean([p @ repaired(int(c)) for c in _tied(p)]) for p in post])
    ceil_v = np.empty(len(post))
    block = max(1, 10_000_000 // max(1, len(space.pair_prompt)))
    for b in range(0, len(post), block):
        # w(y | z) = sum of P(c | z) over the sentences c + y: summed per completion y, (b, Y)
        w = np.add.reduceat(post[b : b + block][:, space.pair_prompt], space.comp_start, axis=1)
        ceil_v[b : b + block] = w.max(axis=1)
    return map_v, ceil_v


def _estimated_values(
    grammar: Grammar,
    space: CleanPrompts,
    post: np.ndarray,
    rng: np.random.Generator,
    max_len: int | None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per prompt (n,): the map-repair estimate and the ceiling's lower bound, and the mean
    posterior mass outside the summed prompts (module docstring)."""
    cut = space.cut
    cap = (max_len - cut) if max_len else int(8 * grammar.mean_length) + 64
    support, sources, outside = [], [], []
    for p in post:
        order = np.argsort(-p, kind="stable")
        size = min(SUPPORT, int(np.searchsorted(np.cumsum(p[order]), SUPPORT_MASS)) + 1)
        support.append(order[:size])
        outside.append(float(p[order[size:]].sum()))
        tied = _tied(p)
        others = [int(c) for c in order[: len(tied) + TOP_OTHERS] if c not in tied][:TOP_OTHERS]
        # the first N_MAP sources are c^ (round robin over ties), then the ceiling candidates
        sources.append([int(tied[i % len(tied)]) for i in range(N_MAP)] + others * N_CANDIDATES)
    ys = _completions(grammar, [space.prompts[c] for src in sources for c in src], rng, cap)
    jobs, owner = [], []  # (c + y) strings to judge; (prompt, candidate, weight, in support)
    at = 0
    for i, src in enumerate(sources):
        for j in range(len(src)):
            y = ys[at + j]
            if y is None:
                continue
            for c in support[i]:
                jobs.append(np.concatenate([space.prompts[c], y]))
                owner.append((i, j, post[i, c], True))
            if j < N_MAP and outside[i] > 0:  # one clean prompt drawn from the rest
                rest = post[i].copy()
                rest[support[i]] = 0.0
                c = int(rng.choice(len(rest), p=rest / rest.sum()))
                jobs.append(np.concatenate([space.prompts[c], y]))
                owner.append((i, j, outside[i], False))
        at += len(src)
    ok = cyk.recognize(grammar, jobs) if jobs else np.zeros(0, bool)
    w_in = [np.zeros(len(src)) for src in sources]  # w(y | z) over the support
    w_out = [np.zeros(len(src)) for src in sources]  # the rest, one draw (unbiased)
    for (i, j, weight, inside_support), good in zip(owner, ok, strict=True):
        if good:
            (w_in if inside_support else w_out)[i][j] += weight
    map_v = np.array([(a[:N_MAP] + b[:N_MAP]).mean() for a, b in zip(w_in, w_out, strict=True)])
    ceil_v = np.array([a.max() for a in w_in])
    return map_v, ceil_v, float(np.mean(outside)) if outside else 0.0


def _completions(
    grammar: Grammar, prefixes: list[np.ndarray], rng: np.random.Generator, cap: int
) -> list[np.ndarray | None]:
    """One exact completion per prefix: by rejection from sampled strings, token by token for
    the prefixes too rare to meet that way (cfglab.exact.language)."""
    ys, drawn = language.completions_by_rejection(grammar, prefixes, rng, cap)
    rest = np.flatnonzero(~drawn)
    slow = language.sample_completions(grammar, [prefixes[i] for i in rest], rng, cap)
    for i, y in zip(rest, slow, strict=True):
        ys[i] = y
    return ys
