"""Behaviour metrics of a language model against a grammar's exact ground truth (stage 6a).

Three questions from the paper, each answered exactly with `cfglab.exact`:

- **accuracy**: are the model's generations in the language? (`generation_accuracy`)
- **diversity**: does the model produce many different strings, not memorised ones? (`diversity`)
- **distribution**: how far is the model's next-token distribution from the grammar's?
  (`distribution_metrics`: the paper's smoothed next-token KL, per position, sequence-level KL,
  cross-entropy against the true entropy rate)

A *model* here is any callable `LogProbFn`: a batch of token sequences (1-D int arrays of vocab
ids, each starting with BOS) -> for each, a (len, V) array of next-token log-probabilities, row k
= log p(next token | tokens[:k+1]); V >= T+2 so columns 1..T are the terminals and T+1 is EOS
(cfglab.data.vocab). So the metrics run on a trained GPT (`torch_logprob_fn`), on the grammar's
exact distribution (`exact_logprob_fn`, the oracle: accuracy 1, KL 0) or on a uniform baseline
(`uniform_logprob_fn`) alike. A *generator* (`GenerateFn`) maps prompts (each starting with BOS)
and a numpy Generator to full sequences (prompt + completion, EOS included if produced).

Conventions: a "string" is a 1-D array of terminal ids 1..T (no BOS/EOS), as everywhere in cfglab.
Every definition (what is averaged over what, which positions, smoothing) is in the docstring of
the function that computes it, and is repeated in the report (`DEFINITIONS`).
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cfglab.data.vocab import BOS
from cfglab.errors import CfglabError
from cfglab.grammar.cfg import Grammar

LogProbFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]
GenerateFn = Callable[[list[np.ndarray], np.random.Generator], list[np.ndarray]]

KL_EPS = 1e-5  # the authors' smoothing constant for both distributions (SPEC.md, KL bullet)
DEFAULT_POSITION_BUCKETS = (0, 1, 10, 50, 100, 200, 300, 400)  # left edges of KL position buckets

# One line per reported number; the report prints these verbatim (keep them in sync with the code).
DEFINITIONS: dict[str, str] = {
    "accuracy": "share of generated strings (prompt + completion, up to the first EOS, EOS "
    "excluded) that are in the grammar's language, by exact CYK recognition; a generation that "
    "never emits EOS within the token budget, or emits a special token (BOS/MASK/PAD) before EOS, "
    "is wrong. cutC: the prompt is BOS + the first C tokens of a fresh true sample (samples no "
    "longer than C are redrawn); cut0 = BOS only.",
    "accuracy_ci": "95% confidence interval of the accuracy: Wilson score interval (Clopper-"
    "Pearson exact interval also stored) over the n generations, treated as independent Bernoulli "
    "trials.",
    "first_error": "for a wrong generation, the 0-based index (in the whole string, prompt "
    "included) of the first token after which the string is no longer a prefix of any sentence; "
    "a premature EOS counts as a token at index len(string); generations that stop without EOS "
    "while still viable are counted as 'unfinished'.",
    "kl": "next-token KL(true || model) on fresh true strings x (length n): for each of the n+1 "
    "prefixes x_<=k (k = 0..n) take the exact next-symbol distribution P* over [EOS, terminals] "
    "and the model's probabilities of the same T+1 symbols; smooth both as P~ = (P + 1e-5) / "
    "rowsum (this also renormalises the model's mass on the T+1 symbols); row KL = sum_c P*_c "
    "(log P~*_c - log P~model_c) with the unsmoothed P* as weights; KL(x) = mean over the n+1 "
    "rows; reported KL = mean over strings (± standard error over strings).",
    "kl_by_position": "row KL pooled over all strings' rows whose prefix length k falls in the "
    "bucket [lo, hi), averaged over those rows (so long strings weigh more than in 'kl').",
    "seq_kl": "sequence-level KL(P || Q) per token = sum over true strings of (log P(x) - log "
    "Q(x)) / sum over strings of (n + 1), where P(x) is the exact string probability and Q(x) the "
    "model's probability of x followed by EOS (full-vocabulary softmax, unsmoothed); nats per "
    "predicted token (n tokens + EOS). Equals cross_entropy - entropy_rate on the same strings.",
    "cross_entropy": "the model's mean negative log-likelihood of the true strings' tokens and "
    "their EOS: -sum log Q(x) / sum (n + 1), nats per predicted token.",
    "entropy_rate": "the grammar's true entropy per predicted token on the same strings: -sum log "
    "P(x) / sum (n + 1); 'entropy_rate_rb' is the lower-variance estimate sum over rows of "
    "H(P*(.|x_<=k)) / sum (n + 1). A perfect model's cross-entropy.",
    "loss_floor": "a perfect model's training loss on packed windows BOS x EOS BOS ...: "
    "sum of -log P(x) / sum of (n + 2) over 2,000 (N_FLOOR) fresh true strings (the n tokens, "
    "EOS and the certain BOS after it are predicted; window cuts ignored), with its "
    "delta-method standard error; what the training and validation losses tend to.",
    "distinct": "number (and share) of distinct strings among the M generations, and among M "
    "completions of one fixed prompt.",
    "collision_support": "birthday estimate of the effective support 1 / sum_x q(x)^2 of the "
    "generations: C(M, 2) / (number of equal pairs); with no equal pair, only the lower bound "
    "C(M, 2) / 3 (rule of three, pairs treated as independent) is given: M distinct samples "
    "imply a support of order M^2 (the paper's argument).",
    "model_entropy": "entropy of the model's string distribution Q (at the sampling temperature) "
    "estimated on its own cut0 generations that ended with EOS and hold no special token: mean "
    "of -log Q(x EOS) per string (nats) and per predicted token; "
    "exp(per-string entropy) is the entropy-based effective support.",
    "reverse_kl": "E_{x~Q}[log Q(x) - log P(x)] per predicted token, over the grammatical "
    "generations only (log P = -inf otherwise; their share is given): string-level KL from the "
    "model to the truth, which a memorising or mode-collapsed model makes large.",
    "subtree_diversity": "per nonterminal (and summed per level), the number of distinct strings "
    "it derives (subtree yields) in one parse (CYK) of each grammatical cut0 generation, beside "
    "the same count on as many fresh true strings: fewer distinct yields than the truth means "
    "the model reuses memorised pieces.",
    "seen_in_training": "share of generations (full strings) that occur in the saved training "
    "dataset; absent when training used fresh samples.",
}


# ---- confidence intervals ---------------------------------------------------------------------
def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (good coverage even near 0 and 1)."""
    if n <= 0:
        return (0.0, 1.0)
    z = statistics.NormalDist().inv_cdf(0.5 + conf / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at k = 0 (k = n) the bound is exactly 0 (1); rounding would leave ~1e-17 off
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


@functools.lru_cache(maxsize=8)
def _log_binom_coef(n: int) -> np.ndarray:
    """log C(n, j) for j = 0..n, (n+1,)."""
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    return log_fact[n] - log_fact - log_fact[::-1]


def _binom_log_pmf(n: int, p: float) -> np.ndarray:
    j = np.arange(n + 1)
    return _log_binom_coef(n) + j * math.log(p) + (n - j) * math.log1p(-p)


def _binom_tail(n: int, k: int, p: float, upper: bool) -> float:
    """P(X >= k) if upper else P(X <= k), X ~ Binomial(n, p)."""
    lp = _binom_log_pmf(n, p)
    part = lp[k:] if upper else lp[: k + 1]
    m = part.max()
    return float(np.exp(m) * np.exp(part - m).sum())


@functools.lru_cache(maxsize=4096)
def clopper_pearson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval: coverage >= conf for every true rate, conservative."""
    if n <= 0:
        return (0.0, 1.0)
    alpha = 1 - conf

    def solve(target: Callable[[float], float]) -> float:
        lo, hi = 0.0, 1.0  # target(p) is increasing in p; find target(p) = alpha / 2
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if target(mid) < alpha / 2 else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve(lambda p: _binom_tail(n, k, p, upper=True))
    high = 1.0 if k == n else solve(lambda p: -_binom_tail(n, k, p, upper=False) + alpha)
    return (low, high)


# ---- accuracy ---------------------------------------------------------------------------------
@dataclass
class AccuracyResult:
    """Generation accuracy for one (cut, temperature); see DEFINITIONS['accuracy']."""

    cut: int
    temperature: float
    n: int
    n_correct: int
    accuracy: float
    ci_low: float  # Wilson, 95%
    ci_high: float
    cp_low: float  # Clopper-Pearson, 95%
    cp_high: float
    n_unfinished: int  # no EOS within the budget, still a viable prefix
    n_bad_token: int  # a special token (BOS/MASK/PAD) before EOS
    first_error: list[int] = field(default_factory=list)  # per wrong generation, -1 = unfinished
    lengths: list[int] = field(default_factory=list)  # generated string lengths (prompt included)

    def to_dict(self) -> dict:
        return asdict(self)


def split_generation(seq: np.ndarray, n_terminals: int) -> tuple[np.ndarray, bool, int]:
    """A generated sequence (BOS + prompt + completion [+ EOS ...]) -> (string, ended, bad_at).

    string: the terminal ids before the first EOS (BOS dropped); ended: an EOS was produced;
    bad_at: index in `string` of the first special token (not 1..T) before EOS, or -1.
    """
    seq = np.asarray(seq, dtype=np.int64)
    if len(seq) and seq[0] == BOS:
        seq = seq[1:]
    eos = n_terminals + 1
    where = np.flatnonzero(seq == eos)
    ended = len(where) > 0
    string = seq[: where[0]] if ended else seq
    bad = np.flatnonzero((string < 1) | (string > n_terminals))
    return string, ended, int(bad[0]) if len(bad) else -1


def judge_generations(
    grammar: Grammar, sequences: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Judge generated sequences exactly: (correct, first_error, strings, ended, bad_token).

    first_error[i]: -1 if correct or unfinished-but-viable; else the index defined in
    DEFINITIONS['first_error'].
    """
    from cfglab.exact import cyk

    t = grammar.n_t
    parts = [split_generation(s, t) for s in sequences]
    strings = [p[0] for p in parts]
    ended = np.array([p[1] for p in parts], dtype=bool)
    bad_at = np.array([p[2] for p in parts], dtype=np.int64)
    # judge only the clean part: the tokens before any special token
    clean = [s if b < 0 else s[:b] for s, b in zip(strings, bad_at, strict=True)]
    n = len(clean)
    in_lang = np.zeros(n, dtype=bool)
    first_err = np.full(n, -1, dtype=np.int64)
    if n:
        in_lang = np.asarray(cyk.recognize(grammar, clean), dtype=bool)
        first_err = np.asarray(cyk.first_error(grammar, clean), dtype=np.int64).copy()
    correct = in_lang & ended & (bad_at < 0)
    for i in range(n):
        if correct[i] or first_err[i] >= 0:
            continue
        # every prefix of the clean part is viable: the error is the special token, the premature
        # EOS (both sit at index len(clean)), or there is none yet (unfinished)
        if bad_at[i] >= 0 or ended[i]:
            first_err[i] = len(clean[i])
    first_err[correct] = -1
    return correct, first_err, strings, ended, bad_at >= 0


def accuracy_from_judgements(
    correct: np.ndarray,
    *,
    cut: int = 0,
    temperature: float = 1.0,
    first_error: np.ndarray | None = None,
    ended: np.ndarray | None = None,
    bad_token: np.ndarray | None = None,
    lengths: Sequence[int] = (),
    conf: float = 0.95,
) -> AccuracyResult:
    """Accuracy with its Wilson and Clopper-Pearson intervals from per-generation verdicts."""
    correct = np.asarray(correct, dtype=bool)
    n, k = len(correct), int(correct.sum())
    lo, hi = wilson_interval(k, n, conf)
    cp_lo, cp_hi = clopper_pearson_interval(k, n, conf)
    wrong = ~correct
    fe = first_error if first_error is not None else np.full(n, -1)
    unfinished = wrong & (fe < 0)
    return AccuracyResult(
        cut=cut,
        temperature=temperature,
        n=n,
        n_correct=k,
        accuracy=k / n if n else float("nan"),
        ci_low=lo,
        ci_high=hi,
        cp_low=cp_lo,
        cp_high=cp_hi,
        n_unfinished=int(unfinished.sum()),
        n_bad_token=int(np.asarray(bad_token).sum()) if bad_token is not None else 0,
        first_error=[int(x) for x in np.asarray(fe)[wrong]],
        lengths=[int(x) for x in lengths],
    )


def make_prompts(true_strings: Sequence[np.ndarray], cut: int, n: int) -> list[np.ndarray]:
    """cutC prompts: BOS + the first `cut` tokens of the first n true strings longer than `cut`."""
    out = [np.concatenate([[BOS], s[:cut]]).astype(np.int64) for s in true_strings if len(s) > cut][
        :n
    ]
    if len(out) < n:
        raise CfglabError(
            f"only {len(out)} of the true strings are longer than cut={cut}; "
            "give more strings or a smaller --cut"
        )
    return out


def generation_accuracy(
    grammar: Grammar,
    generate: GenerateFn,
    prompts: list[np.ndarray],
    rng: np.random.Generator,
    *,
    cut: int = 0,
    temperature: float = 1.0,
    batch_size: int = 64,
) -> tuple[AccuracyResult, list[np.ndarray]]:
    """Generate one completion per prompt and judge it: (AccuracyResult, generated strings).

    See DEFINITIONS['accuracy'], ['accuracy_ci'], ['first_error'].
    """
    res, (_, _, strings, _, _) = _judged_generations(
        grammar, generate, prompts, rng, cut=cut, temperature=temperature, batch_size=batch_size
    )
    return res, strings


def _judged_generations(
    grammar: Grammar,
    generate: GenerateFn,
    prompts: list[np.ndarray],
    rng: np.random.Generator,
    *,
    cut: int,
    temperature: float,
    batch_size: int,
    judge: Callable = judge_generations,
) -> tuple[AccuracyResult, tuple]:
    """generation_accuracy's work, also returning judge's (correct, first_error, strings, ended,
    bad_token); `judge` is swappable so evaluate_model can time it."""
    sequences: list[np.ndarray] = []
    for b in range(0, len(prompts), batch_size):
        sequences.extend(generate(prompts[b : b + batch_size], rng))
    judged = judge(grammar, sequences)
    correct, first_err, strings, ended, bad = judged
    res = accuracy_from_judgements(
        correct,
        cut=cut,
        temperature=temperature,
        first_error=first_err,
        ended=ended,
        bad_token=bad,
        lengths=[len(s) for s in strings],
    )
    return res, judged


# ---- distribution: next-token and sequence KL ------------------------------------------------
def smooth(p: np.ndarray, eps: float = KL_EPS) -> np.ndarray:
    """The authors' smoothing: (P + eps) / rowsum(P + eps), row-wise."""
    q = p + eps
    return q / q.sum(axis=-1, keepdims=True)


def row_kl(p_true: np.ndarray, q_model: np.ndarray, eps: float = KL_EPS) -> np.ndarray:
    """Per-row KL as in the paper: sum_c P*_c (log P~*_c - log P~model_c), (R, C) -> (R,).

    Both are probability rows over the same C symbols; the weights are the unsmoothed P*.
    """
    return (p_true * (np.log(smooth(p_true, eps)) - np.log(smooth(q_model, eps)))).sum(axis=-1)


def model_symbol_probs(logq: np.ndarray, n_terminals: int) -> np.ndarray:
    """Model log-probs over the full vocabulary (R, V) -> probabilities over [EOS, 1..T] (R, T+1),
    the column order of the exact distribution. Not renormalised (smoothing does that)."""
    cols = np.concatenate([[n_terminals + 1], np.arange(1, n_terminals + 1)])
    return np.exp(logq[:, cols])


@dataclass
class DistributionResult:
    """Exact distribution metrics on fresh true strings; see DEFINITIONS."""

    n_strings: int
    n_rows: int  # sum over strings of (n + 1)
    kl: float
    kl_stderr: float
    kl_by_position: list[dict]  # {lo, hi, kl, n_rows}
    seq_kl: float
    cross_entropy: float
    entropy_rate: float
    entropy_rate_rb: float
    eps: float = KL_EPS
    kl_per_string: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def distribution_metrics(
    true_strings: Sequence[np.ndarray],
    p_true: Sequence[np.ndarray],
    model_logq: Sequence[np.ndarray],
    n_terminals: int,
    *,
    eps: float = KL_EPS,
    buckets: Sequence[int] = DEFAULT_POSITION_BUCKETS,
) -> DistributionResult:
    """All distribution metrics from the exact rows and the model's rows of each true string.

    true_strings[i]: (n,) terminal ids; p_true[i]: (n+1, T+1) exact next-symbol probabilities
    (column 0 EOS, column j terminal j), as `exact.inside.next_token_dist`; model_logq[i]:
    (n+1, V) the model's next-token log-probabilities for input [BOS, x_1..x_n].
    Definitions: DEFINITIONS['kl'], ['kl_by_position'], ['seq_kl'], ['cross_entropy'],
    ['entropy_rate'].
    """
    edges = list(buckets)
    bucket_sum = np.zeros(len(edges))
    bucket_cnt = np.zeros(len(edges), dtype=np.int64)
    kl_strings, logp_sum, logq_sum, h_rows, n_rows = [], 0.0, 0.0, 0.0, 0
    for x, p, lq in zip(true_strings, p_true, model_logq, strict=True):
        n = len(x)
        if p.shape != (n + 1, n_terminals + 1) or lq.shape[0] != n + 1:
            raise CfglabError(
                f"distribution rows do not match a string of length {n}: exact "
                f"{p.shape}, model {lq.shape}; expected ({n + 1}, {n_terminals + 1})"
                f" and ({n + 1}, V)"
            )
        rk = row_kl(p, model_symbol_probs(lq, n_terminals), eps)  # (n+1,)
        kl_strings.append(float(rk.mean()))
        b = np.searchsorted(edges, np.arange(n + 1), side="right") - 1  # bucket of row k
        np.add.at(bucket_sum, b, rk)
        np.add.at(bucket_cnt, b, 1)
        # the symbol that follows each prefix: x_1..x_n then EOS; in P*'s columns and in vocab ids
        nxt_col = np.concatenate([x, [0]]).astype(np.int64)
        nxt_id = np.concatenate([x, [n_terminals + 1]]).astype(np.int64)
        with np.errstate(divide="ignore"):
            logp_sum += float(np.log(p[np.arange(n + 1), nxt_col]).sum())
            h_rows += float(-(p * np.log(np.where(p > 0, p, 1.0))).sum())
        logq_sum += float(lq[np.arange(n + 1), nxt_id].sum())
        n_rows += n + 1
    kls = np.asarray(kl_strings)
    m = len(kls)
    by_pos = []
    for i, lo in enumerate(edges):
        if bucket_cnt[i]:
            hi = edges[i + 1] if i + 1 < len(edges) else None
            by_pos.append(
                {
                    "lo": lo,
                    "hi": hi,
                    "kl": float(bucket_sum[i] / bucket_cnt[i]),
                    "n_rows": int(bucket_cnt[i]),
                }
            )
    return DistributionResult(
        n_strings=m,
        n_rows=n_rows,
        kl=float(kls.mean()) if m else float("nan"),
        kl_stderr=float(kls.std(ddof=1) / math.sqrt(m)) if m > 1 else float("nan"),
        kl_by_position=by_pos,
        seq_kl=(logp_sum - logq_sum) / n_rows if n_rows else float("nan"),
        cross_entropy=-logq_sum / n_rows if n_rows else float("nan"),
        entropy_rate=-logp_sum / n_rows if n_rows else float("nan"),
        entropy_rate_rb=h_rows / n_rows if n_rows else float("nan"),
        eps=eps,
        kl_per_string=[float(v) for v in kls],
    )


def evaluate_distribution(
    grammar: Grammar,
    model: LogProbFn,
    true_strings: Sequence[np.ndarray],
    *,
    batch_size: int = 32,
    eps: float = KL_EPS,
    buckets: Sequence[int] = DEFAULT_POSITION_BUCKETS,
) -> DistributionResult:
    """Exact rows from `exact.inside.next_token_dist`, the model's rows from `model`, then
    `distribution_metrics`."""
    from cfglab.exact import inside

    strings = [np.asarray(s, dtype=np.int64) for s in true_strings]
    p_true = list(inside.next_token_dist(grammar, strings))
    logq: list[np.ndarray] = []
    for b in range(0, len(strings), batch_size):
        batch = [np.concatenate([[BOS], s]) for s in strings[b : b + batch_size]]
        logq.extend(model(batch))
    return distribution_metrics(strings, p_true, logq, grammar.n_t, eps=eps, buckets=buckets)


N_FLOOR = 2000  # true strings behind the loss floor: +-0.3% on the quickstart grammar


def packed_loss_floor(lengths: np.ndarray, log_probs: np.ndarray) -> dict:
    """DEFINITIONS['loss_floor'] from true strings' lengths n and exact log P(x): a ratio
    estimator sum(-log P) / sum(n + 2) and its delta-method standard error."""
    h = -np.asarray(log_probs, dtype=np.float64)
    d = np.asarray(lengths, dtype=np.float64) + 2
    m = len(h)
    ratio = float(h.sum() / d.sum())
    resid = h - ratio * d  # the ratio estimator's linearisation
    se = float(resid.std(ddof=1) / math.sqrt(m) / d.mean()) if m > 1 else float("nan")
    return {"value": ratio, "stderr": se, "n_strings": m}


# ---- diversity --------------------------------------------------------------------------------
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


def sequence_log_probs(
    model: LogProbFn,
    strings: Sequence[np.ndarray],
    eos_id: int,
    batch_size: int = 32,
    temperature: float = 1.0,
) -> np.ndarray:
    """log Q_T(x EOS) for each string, (N,) float64: the full-vocabulary, unsmoothed
    probability under the model sampled at `temperature` (each row's log-probs divided by T and
    renormalised)."""
    out = []
    for b in range(0, len(strings), batch_size):
        chunk = [np.asarray(s, dtype=np.int64) for s in strings[b : b + batch_size]]
        rows = model([np.concatenate([[BOS], s]) for s in chunk])
        for s, lq in zip(chunk, rows, strict=True):
            if temperature != 1.0:
                z = lq / temperature  # (n+1, V)
                m = z.max(axis=1, keepdims=True)
                lq = z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))
            nxt = np.concatenate([s, [eos_id]])
            out.append(float(lq[np.arange(len(nxt)), nxt].sum()))
    return np.asarray(out, dtype=np.float64)


def diversity(
    strings: Sequence[np.ndarray],
    *,
    fixed_prompt_strings: Sequence[np.ndarray] | None = None,
    model_logq: np.ndarray | None = None,
    true_logp: np.ndarray | None = None,
    training: set[bytes] | None = None,
) -> dict:
    """Diversity of M generations (strings as judged, prompt included, no EOS).

    model_logq: log Q(x EOS) of each generation under the model; true_logp: log P(x) (-inf when
    not in the language). See DEFINITIONS['distinct'], ['collision_support'], ['model_entropy'],
    ['reverse_kl'], ['seen_in_training'].
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
            lp = np.asarray(true_logp, dtype=np.float64)
            ok = np.isfinite(lp)
            out["reverse_kl_share_used"] = float(ok.mean())
            out["reverse_kl"] = (
                float((lq[ok] - lp[ok]).sum() / tokens[ok].sum()) if ok.any() else None
            )
    if training is not None:
        seen = sum(_key(s) in training for s in strings)
        out["seen_in_training"] = seen / len(strings) if len(strings) else float("nan")
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


# ---- models and generators that need no torch -------------------------------------------------
def exact_logprob_fn(grammar: Grammar) -> LogProbFn:
    """The oracle model: the grammar's exact next-token distribution (cfglab.exact.inside) as
    log-probabilities over the vocabulary (V = T+4; -inf on BOS/MASK/PAD). Every sequence
    (after its BOS) must be a viable prefix of the language."""
    from cfglab.exact import inside

    t = grammar.n_t
    cols = np.concatenate([[t + 1], np.arange(1, t + 1)])

    def model(batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        strings = [np.asarray(s[1:], dtype=np.int64) for s in batch]
        out = []
        for p in inside.next_token_dist(grammar, strings):
            lq = np.full((p.shape[0], t + 4), -np.inf)
            with np.errstate(divide="ignore"):
                lq[:, cols] = np.log(p)
            out.append(lq)
        return out

    return model


def uniform_logprob_fn(vocab_size: int) -> LogProbFn:
    """A baseline model: uniform over the whole vocabulary of `vocab_size` ids."""

    def model(batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.full((len(s), vocab_size), -math.log(vocab_size)) for s in batch]

    return model


def sampling_generate_fn(
    model: LogProbFn, eos_id: int, *, max_new_tokens: int, temperature: float = 1.0
) -> GenerateFn:
    """Ancestral sampling from any LogProbFn, one token per call on the whole prefix (no cache:
    for the oracle and small baselines; trained GPTs use `torch_generate_fn`)."""

    def generate(prompts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        seqs = [list(map(int, p)) for p in prompts]
        live = list(range(len(seqs)))
        for _ in range(max_new_tokens):
            if not live:
                break
            rows = model([np.asarray(seqs[i], dtype=np.int64) for i in live])
            still = []
            for i, lq in zip(live, rows, strict=True):
                logits = lq[-1] / temperature
                p = np.exp(logits - logits.max())
                tok = int(rng.choice(len(p), p=p / p.sum()))
                seqs[i].append(tok)
                if tok != eos_id:
                    still.append(i)
            live = still
        return [np.asarray(s, dtype=np.int64) for s in seqs]

    return generate


# ---- adapters for a trained torch model ------------------------------------------------------
def torch_logprob_fn(model, *, pad_id: int, device: str = "cpu") -> LogProbFn:
    """A GPT (forward: (B, T) ids -> (B, T, V) logits) as a LogProbFn; pads with `pad_id` on the
    right (causal attention: padding never changes earlier rows)."""
    import torch

    block = model.config.block_size

    def fn(batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        longest = max(len(s) for s in batch)
        if longest > block:
            raise CfglabError(
                f"a sequence of {longest} tokens exceeds the model's block_size "
                f"{block}; evaluate shorter strings (--max-len)"
            )
        idx = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        for i, s in enumerate(batch):
            idx[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        with torch.no_grad():
            logits = model(idx.to(device)).float()  # (B, T, V)
            lq = torch.log_softmax(logits, dim=-1).double().cpu().numpy()
        return [lq[i, : len(s)] for i, s in enumerate(batch)]

    return fn


def torch_generate_fn(
    model, *, eos_id: int, max_new_tokens: int, temperature: float = 1.0, device: str = "cpu"
) -> GenerateFn:
    """cfglab.evaluate.generate.generate (batched, KV cache) as a GenerateFn."""
    import torch

    from cfglab.evaluate.generate import generate

    def fn(prompts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        gen = torch.Generator(device=device)
        gen.manual_seed(int(rng.integers(2**62)))
        outs = generate(
            model,
            [torch.as_tensor(p, dtype=torch.long, device=device) for p in prompts],
            max_new_tokens,
            eos_id=eos_id,
            temperature=temperature,
            generator=gen,
        )
        return [o.cpu().numpy().astype(np.int64) for o in outs]

    return fn


# ---- the whole evaluation: any model, then a run directory -----------------------------------
class _Clock:
    """Seconds spent per stage ('model' = forward passes and generation, 'exact' = cyk/inside)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"model": 0.0, "exact": 0.0, "sample": 0.0}

    def wrap(self, stage: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0

        return timed


def evaluate_model(
    grammar: Grammar,
    model: LogProbFn,
    make_generate: Callable[[float], GenerateFn],
    *,
    n: int = 100,
    n_kl: int = 100,
    cuts: Sequence[int] = (0, 50),
    temperatures: Sequence[float] = (1.0,),
    seed: int = 1,
    max_len: int | None = None,
    n_fixed_prompt: int = 0,
    training: set[bytes] | None = None,
    batch_size: int = 32,
) -> dict:
    """Accuracy for every (cut, temperature), distribution metrics on `n_kl` fresh true strings
    and diversity of the cut0 generations at the first temperature: a JSON-ready dict with keys
    accuracy, distribution, diversity, timing, settings. `make_generate(temperature)` builds the
    generator; true strings come from `cfglab.data.sampler.sample` (length <= max_len).
    """
    from cfglab.data.sampler import sample
    from cfglab.exact import inside

    clock = _Clock()
    model_t = clock.wrap("model", model)
    eos = grammar.n_t + 1

    def true_strings(k: int, stream: int) -> list[np.ndarray]:
        return clock.wrap(
            "sample",
            lambda: sample(
                grammar, k, seed=seed * 1000 + stream, max_len=max_len, labels=False
            ).strings(),
        )()

    # the exact stage is cyk (in judge_generations) and inside: time them through the module
    judge = clock.wrap("exact", judge_generations)
    log_prob = clock.wrap("exact", inside.log_prob)

    def prompt_pool(k: int, cut: int) -> list[np.ndarray]:
        """k true strings longer than `cut` (shorter ones are redrawn)."""
        got: list[np.ndarray] = []
        for round_ in range(20):
            got += [s for s in true_strings(2 * k, stream=2 + 100 * round_ + cut) if len(s) > cut]
            if len(got) >= k:
                return got[:k]
        raise CfglabError(
            f"too few true strings of {grammar.name or 'the grammar'} are longer "
            f"than cut={cut} (mean length {grammar.mean_length:.1f}): use a smaller "
            "--cut"
        )

    accuracy, diversity_out = [], None
    for ti, temp in enumerate(temperatures):
        gen = clock.wrap("model", make_generate(temp))
        rng = np.random.default_rng([seed, 3, ti])
        for cut in cuts:
            prompts = make_prompts(prompt_pool(n, cut), cut, n) if cut else [np.array([BOS])] * n
            res, (correct, _, strings, ended, bad) = _judged_generations(
                grammar,
                gen,
                prompts,
                rng,
                cut=cut,
                temperature=temp,
                batch_size=batch_size,
                judge=judge,
            )
            accuracy.append(res.to_dict())
            if cut == 0 and ti == 0:
                fixed = None
                if n_fixed_prompt:
                    c = max(cuts)
                    prompt = make_prompts(prompt_pool(1, c), c, 1)[0] if c else prompts[0]
                    fixed_seqs: list[np.ndarray] = []
                    for b in range(0, n_fixed_prompt, batch_size):
                        k = min(batch_size, n_fixed_prompt - b)
                        fixed_seqs.extend(gen([prompt] * k, rng))
                    fixed = [split_generation(s, grammar.n_t)[0] for s in fixed_seqs]
                # sampled events x EOS: ended, and no special token
                ok = [s for s, b, e in zip(strings, bad, ended, strict=True) if e and not b]
                lq = sequence_log_probs(model_t, ok, eos, batch_size, temperature=temp)
                lp = np.asarray(log_prob(grammar, ok), dtype=np.float64) if ok else np.zeros(0)
                diversity_out = diversity(
                    ok, fixed_prompt_strings=fixed, model_logq=lq, true_logp=lp, training=training
                )
                diversity_out["temperature"] = temp
                grammatical = [s for s, c in zip(strings, correct, strict=True) if c]
                reference = true_strings(len(grammatical), stream=4)
                diversity_out["subtree"] = clock.wrap("exact", subtree_diversity)(
                    grammar, grammatical, reference
                )
                diversity_out["n_dropped"] = int(np.sum(bad | ~ended))
    kl_strings = true_strings(n_kl, stream=1)
    t0 = time.perf_counter()
    p_true = list(inside.next_token_dist(grammar, kl_strings))
    clock.seconds["exact"] += time.perf_counter() - t0
    logq: list[np.ndarray] = []
    for b in range(0, len(kl_strings), batch_size):
        logq.extend(model_t([np.concatenate([[BOS], s]) for s in kl_strings[b : b + batch_size]]))
    dist = distribution_metrics(kl_strings, p_true, logq, grammar.n_t)
    floor_strings = true_strings(N_FLOOR, stream=5)
    floor = packed_loss_floor(
        np.array([len(x) for x in floor_strings]), log_prob(grammar, floor_strings)
    )
    return {
        "accuracy": accuracy,
        "distribution": {**dist.to_dict(), "loss_floor": floor},
        "diversity": diversity_out,
        "timing": {
            "seconds": clock.seconds,
            "n_generations": n * len(cuts) * len(temperatures),
            "n_kl_strings": n_kl,
        },
        "settings": {
            "n": n,
            "n_kl": n_kl,
            "cuts": list(cuts),
            "temperatures": list(temperatures),
            "seed": seed,
            "max_len": max_len,
            "n_fixed_prompt": n_fixed_prompt,
            "kl_eps": KL_EPS,
            "grammar": grammar.name,
        },
        "definitions": DEFINITIONS,
    }


def read_training_strings(dataset_dir: str | Path) -> set[bytes]:
    """The strings of a saved dataset folder (`tokens.npy`: BOS x EOS ..., `offsets.npy`: each
    string's BOS) as a set for `diversity(training=...)`."""
    d = Path(dataset_dir)
    try:
        tokens = np.load(d / "tokens.npy", mmap_mode="r")
        offsets = np.load(d / "offsets.npy")
        eos = json.loads((d / "meta.json").read_text())["eos"]
    except (OSError, ValueError, KeyError) as exc:
        raise CfglabError(
            f"{d}: not a saved dataset ({exc}); the run's data.dataset must be a "
            "folder written by `cfglab data`"
        ) from None
    out = set()
    for start in offsets:
        seg = np.asarray(tokens[start + 1 : start + 1 + 4096], dtype=np.int64)  # BOS skipped
        end = np.flatnonzero(seg == eos)
        out.add(_key(seg[: end[0]] if len(end) else seg))
    return out


def _load(run_dir: str | Path, device: str | None, threads: int | None):
    """(model in eval mode on its device, config, device string). device None: the run's
    train.device (auto = CUDA if available); threads None: the run's train.threads."""
    from cfglab.train.checkpoint import load_model
    from cfglab.train.dist import pick_device

    model, cfg = load_model(run_dir, device="cpu")
    _set_threads(threads if threads is not None else cfg.train.threads)
    try:
        dev = str(pick_device(device or cfg.train.device))
    except CfglabError as exc:
        if device is None:
            raise
        raise CfglabError(f"--device {device}: {str(exc).split(': ', 1)[-1]}") from None
    return model.to(dev), cfg, dev


def _set_threads(threads: int | None) -> None:
    """torch CPU threads. Small models decode one token at a time: on a busy machine one thread
    is often several times faster than many (thread wake-ups dominate tiny matmuls)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def evaluate_run(
    run_dir: str | Path,
    *,
    n: int | None = None,
    n_kl: int | None = None,
    cuts: Sequence[int] | None = None,
    temperatures: Sequence[float] | None = None,
    seed: int | None = None,
    n_fixed_prompt: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    corrupt: float | None = None,
) -> dict:
    """Evaluate a run's latest checkpoint and write `eval/{accuracy,distribution,diversity,
    summary}.json`. Unset arguments come from the run's EvalConfig (n_kl defaults to n);
    `threads` (default: the run's train.threads) sets torch's CPU threads. `corrupt`: also score
    completions of cutC prompts (C > 0) with that share of tokens substituted
    (evaluate.robustness), into eval/robustness.json."""
    import torch

    from cfglab.data.vocab import Vocab

    run_dir = Path(run_dir)
    model, cfg, device = _load(run_dir, device, threads)
    grammar = cfg.grammar.load()
    vocab = Vocab.from_grammar(grammar)
    block = model.config.block_size
    e = cfg.eval
    n = e.n_samples if n is None else n
    n_kl = n if n_kl is None else n_kl
    cuts = list(e.cuts if cuts is None else cuts)
    temperatures = list([e.temperature] if temperatures is None else temperatures)
    seed = e.seed if seed is None else seed
    if any(c >= block for c in cuts):
        raise CfglabError(
            f"--cut {max(cuts)} leaves no room to generate in the model's "
            f"block_size {block}; use cuts below {block}"
        )
    training = None
    if cfg.data.dataset:
        training = read_training_strings(cfg.data.dataset)
    fn = torch_logprob_fn(model, pad_id=vocab.pad, device=device)

    def make_generate(temp: float) -> GenerateFn:
        def gen(prompts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
            # BOS + prompt + completion must fit in block_size (an EOS that does not fit is lost)
            room = block - max(len(p) for p in prompts)
            return torch_generate_fn(
                model, eos_id=vocab.eos, max_new_tokens=room, temperature=temp, device=device
            )(prompts, rng)

        return gen

    torch.manual_seed(seed)
    out = evaluate_model(
        grammar,
        fn,
        make_generate,
        n=n,
        n_kl=n_kl,
        cuts=cuts,
        temperatures=temperatures,
        seed=seed,
        max_len=block - 1,
        n_fixed_prompt=min(n, 100) if n_fixed_prompt is None else n_fixed_prompt,
        training=training,
    )
    out["settings"]["run_dir"] = str(run_dir)
    if corrupt is not None:
        from cfglab.data.sampler import sample
        from cfglab.evaluate.robustness import corrupted_prompt_accuracy

        out["robustness"] = []
        for ti, temp in enumerate(temperatures):
            for cut in (c for c in cuts if c > 0):
                pool = sample(
                    grammar, 3 * n, seed=seed * 1000 + 7, max_len=block - 1, labels=False
                ).strings()
                pool = [x for x in pool if len(x) > cut][:n]
                out["robustness"].append(
                    corrupted_prompt_accuracy(
                        grammar,
                        make_generate(temp),
                        pool,
                        np.random.default_rng([seed, 5, ti]),
                        cut=cut,
                        gamma=corrupt,
                        seed=seed,
                        temperature=temp,
                    )
                )
    write_eval(run_dir, out)
    return out


def write_eval(run_dir: str | Path, out: dict) -> Path:
    """Write an `evaluate_model` result as eval/*.json (one file per metric family)."""
    d = Path(run_dir) / "eval"
    d.mkdir(parents=True, exist_ok=True)
    for key in ("accuracy", "distribution", "diversity", "robustness"):
        if key not in out:  # a result of an earlier evaluation would now be stale
            (d / f"{key}.json").unlink(missing_ok=True)
            continue
        body = {
            "settings": out["settings"],
            key: out[key],
            "definitions": {k: v for k, v in DEFINITIONS.items()},
        }
        (d / f"{key}.json").write_text(json.dumps(body, indent=1, allow_nan=True) + "\n")
    summary = summary_table(out)
    (d / "summary.json").write_text(
        json.dumps(
            {"settings": out["settings"], "rows": summary, "timing": out["timing"]}, indent=1
        )
        + "\n"
    )
    return d


def summary_table(out: dict) -> list[dict]:
    """One row per reported number: {metric, value, ci} for the CLI table and the report."""
    rows = []
    for a in out["accuracy"]:
        rows.append(
            {
                "metric": f"accuracy cut{a['cut']} T={a['temperature']:g}",
                "value": a["accuracy"],
                "ci": [a["ci_low"], a["ci_high"]],
                "n": a["n"],
            }
        )
    d = out["distribution"]
    rows.append(
        {
            "metric": "next-token KL",
            "value": d["kl"],
            "ci": [d["kl"] - 1.96 * d["kl_stderr"], d["kl"] + 1.96 * d["kl_stderr"]],
            "n": d["n_strings"],
        }
    )
    for key in ("seq_kl", "cross_entropy", "entropy_rate", "entropy_rate_rb"):
        rows.append({"metric": key, "value": d[key], "ci": None, "n": d["n_strings"]})
    v = out.get("diversity") or {}
    if v:
        g = v["generations"]
        rows.append(
            {
                "metric": "distinct cut0 generations",
                "value": g["distinct_share"],
                "ci": None,
                "n": g["n"],
            }
        )
        if "fixed_prompt" in v:
            f = v["fixed_prompt"]
            rows.append(
                {
                    "metric": "distinct completions of one prompt",
                    "value": f["distinct_share"],
                    "ci": None,
                    "n": f["n"],
                }
            )
        for key in ("model_entropy_per_token", "reverse_kl", "seen_in_training"):
            if v.get(key) is not None:
                rows.append({"metric": key, "value": v[key], "ci": None, "n": g["n"]})
    for r in out.get("robustness", []):
        for key in ("clean", "no_new_errors"):
            a = r[key]
            rows.append(
                {
                    "metric": f"corrupted cut{r['cut']} g={r['gamma']:g} {key}",
                    "value": a["accuracy"],
                    "ci": [a["ci_low"], a["ci_high"]],
                    "n": a["n"],
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    """The summary rows as an aligned text table."""
    lines = [f"{'metric':38} {'value':>10}  {'95% CI':>21} {'n':>6}"]
    for r in rows:
        ci = f"[{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]" if r["ci"] else ""
        lines.append(f"{r['metric']:38} {r['value']:>10.5f}  {ci:>21} {r['n']:>6}")
    return "\n".join(lines)


def generate_from_run(
    run_dir: str | Path,
    n: int,
    *,
    prompts: Sequence[Sequence[str]] | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    device: str | None = None,
    threads: int | None = None,
    prompt_labels: Sequence[str] | None = None,
) -> list[list[str]]:
    """`n` generations from BOS, or `n` completions of each prompt (terminal names), from a run's
    latest checkpoint: each a list of token names, prompt included, up to (not including) EOS.
    A prompt with an unknown token is a VocabError naming it and its label (e.g. 'file:3')."""
    from cfglab.data.vocab import Vocab

    if n < 1:
        raise CfglabError(f"-n {n}: give at least one generation")
    if temperature <= 0:
        raise CfglabError(f"--temperature {temperature}: give a positive temperature")
    model, cfg, device = _load(run_dir, device, threads)
    vocab = Vocab.from_grammar(cfg.grammar.load())
    block = model.config.block_size
    prompts = list(prompts or [[]])
    labels = list(prompt_labels or [f"prompt {i + 1}" for i in range(len(prompts))])
    encoded = [
        np.concatenate([[BOS], vocab.encode(p, where=f"{label}: ")])
        for p, label in zip(prompts, labels, strict=True)
    ]
    for label, p in zip(labels, encoded, strict=True):
        if len(p) >= block:
            raise CfglabError(
                f"{label}: the prompt has {len(p) - 1} tokens; the model's "
                f"block_size {block} leaves no room to generate: shorten it"
            )
    rng = np.random.default_rng(seed)
    out: list[list[str]] = []
    for p in encoded:
        gen = torch_generate_fn(
            model,
            eos_id=vocab.eos,
            max_new_tokens=block - len(p),
            temperature=temperature,
            device=device,
        )
        for b in range(0, n, 64):
            for seq in gen([p] * min(64, n - b), rng):
                seq = seq[1:]  # drop BOS
                end = np.flatnonzero(seq == vocab.eos)
                out.append(vocab.decode(seq[: end[0]] if len(end) else seq))
    return out
