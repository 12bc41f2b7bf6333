"""Distance to the true distribution: the paper's next-token KL and sequence-level measures
(stage 6a, metric family).

On fresh true strings, the exact next-symbol distribution after every prefix
(`cfglab.exact.inside.next_token_dist`) is compared with the model's: the smoothed next-token KL
(overall, and by prefix length), the sequence-level KL(P || Q) per token, the model's
cross-entropy and the grammar's entropy rate on the same strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from cfglab.data.vocab import BOS
from cfglab.errors import CfglabError
from cfglab.evaluate.adapters import LogProbFn
from cfglab.evaluate.context import EvalContext
from cfglab.grammar.cfg import Grammar

KL_EPS = 1e-5  # the authors' smoothing constant for both distributions (SPEC.md, KL bullet)
DEFAULT_POSITION_BUCKETS = (0, 1, 10, 50, 100, 200, 300, 400)  # left edges of KL position buckets

DEFINITIONS: dict[str, str] = {
    "kl": (
        "next-token KL(true || model) on fresh true strings x (length n): for each of the n+1 "
        "prefixes x_<=k (k = 0..n) take the exact next-symbol distribution P* over [EOS, "
        "terminals] and the model's probabilities of the same T+1 symbols; smooth both as P~ = (P"
        " + 1e-5) / rowsum (this also renormalises the model's mass on the T+1 symbols); row KL ="
        " sum_c P*_c (log P~*_c - log P~model_c) with the unsmoothed P* as weights; KL(x) = mean "
        "over the n+1 rows; reported KL = mean over strings (± standard error over strings)."
    ),
    "kl_by_position": (
        "row KL pooled over all strings' rows whose prefix length k falls in the bucket [lo, hi),"
        " averaged over those rows (so long strings weigh more than in 'kl')."
    ),
    "seq_kl": (
        "sequence-level KL(P || Q) per token = sum over true strings of (log P(x) - log Q(x)) / "
        "sum over strings of (n + 1), where P(x) is the exact string probability and Q(x) the "
        "model's probability of x followed by EOS (full-vocabulary softmax, unsmoothed); nats per"
        " predicted token (n tokens + EOS). Equals cross_entropy - entropy_rate on the same "
        "strings."
    ),
    "cross_entropy": (
        "the model's mean negative log-likelihood of the true strings' tokens and their EOS: -sum"
        " log Q(x) / sum (n + 1), nats per predicted token."
    ),
    "kl_by_level": (
        "row KL pooled over all strings' rows, grouped by the NT that ends just before the row: "
        "row k follows token x_k; if x_k ends a subtree, the group is the shallowest such level "
        "L1, L2, ... (depth below the root; a layered grammar's level), else 'inside'; row 0 "
        "(after BOS) is 'start'. Tells which level's structure the model has not learned yet."
    ),
    "entropy_rate_rb": (
        "the grammar's entropy rate estimated from the exact rows' entropies: sum over rows of "
        "H(P*(.|x_<=k)) / sum (n + 1); the same quantity as entropy_rate, lower variance."
    ),
    "entropy_rate": (
        "the grammar's true entropy per predicted token on the same strings: -sum log P(x) / sum "
        "(n + 1); 'entropy_rate_rb' is the lower-variance estimate sum over rows of "
        "H(P*(.|x_<=k)) / sum (n + 1). A perfect model's cross-entropy."
    ),
}


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
    kl_by_level: dict[str, dict] = field(default_factory=dict)  # group -> {kl, n_rows}

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
    groups: Sequence[Sequence[str]] | None = None,
) -> DistributionResult:
    """All distribution metrics from the exact rows and the model's rows of each true string.

    true_strings[i]: (n,) terminal ids; p_true[i]: (n+1, T+1) exact next-symbol probabilities
    (column 0 EOS, column j terminal j), as `exact.inside.next_token_dist`; model_logq[i]:
    (n+1, V) the model's next-token log-probabilities for input [BOS, x_1..x_n]; groups[i]:
    the n+1 rows' groups for kl_by_level (`row_levels`), None: no kl_by_level.
    Definitions: DEFINITIONS['kl'], ['kl_by_position'], ['kl_by_level'], ['seq_kl'],
    ['cross_entropy'], ['entropy_rate'].
    """
    edges = list(buckets)
    bucket_sum = np.zeros(len(edges))
    bucket_cnt = np.zeros(len(edges), dtype=np.int64)
    kl_strings, logp_sum, logq_sum, h_rows, n_rows = [], 0.0, 0.0, 0.0, 0
    row_kls = []
    for x, p, lq in zip(true_strings, p_true, model_logq, strict=True):
        n = len(x)
        if p.shape != (n + 1, n_terminals + 1) or lq.shape[0] != n + 1:
            raise CfglabError(
                f"distribution rows do not match a string of length {n}: exact "
                f"{p.shape}, model {lq.shape}; expected ({n + 1}, {n_terminals + 1})"
                f" and ({n + 1}, V)"
            )
        rk = row_kl(p, model_symbol_probs(lq, n_terminals), eps)  # (n+1,)
        row_kls.append(rk)
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
        kl_by_level=kl_by_level(row_kls, groups) if groups is not None else {},
    )


def row_levels(is_boundary: np.ndarray) -> list[str]:
    """(L, n) boundaries of one string (levels = depths, cfglab.data.tree) -> the n + 1 KL rows'
    groups: "start", then per token "L<l>" (the shallowest level >= 1 whose subtree it ends)
    or "inside"."""
    from cfglab.data.tree import shallowest_end

    sharp = shallowest_end(is_boundary)
    return ["start"] + [f"L{lev}" if lev > 0 else "inside" for lev in sharp.tolist()]


def kl_by_level(row_kls: Sequence[np.ndarray], groups: Sequence[Sequence[str]]) -> dict[str, dict]:
    """Mean row KL per group, pooled over strings: {group: {"kl", "n_rows"}}."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for kls, labels in zip(row_kls, groups, strict=True):
        for value, group in zip(kls.tolist(), labels, strict=True):
            sums[group] = sums.get(group, 0.0) + value
            counts[group] = counts.get(group, 0) + 1
    order = sorted(sums, key=lambda g: (g not in ("start", "inside"), g))
    return {g: {"kl": sums[g] / counts[g], "n_rows": counts[g]} for g in order}


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


def _exact_rows(ctx: EvalContext) -> tuple[list[np.ndarray], list[np.ndarray], list[list[str]]]:
    """The KL strings (stream 'eval_kl'), their exact rows and row groups: once per memo."""
    from cfglab.data.tree import tree_labels
    from cfglab.exact import inside

    key = ("distribution_exact", ctx.n_kl)
    if key not in ctx.memo:
        batch = ctx.true_batch(ctx.n_kl, "eval_kl")
        strings = batch.strings()
        p_true = list(ctx.exact(inside.next_token_dist, ctx.grammar, strings))
        off = batch.offsets
        if isinstance(ctx.grammar, Grammar):
            ends = tree_labels(ctx.grammar, batch).is_boundary
            groups = [row_levels(ends[:, off[i] : off[i + 1]]) for i in range(len(strings))]
        else:  # a language (cfglab.languages): the row after a token, by the token's segment
            block = batch.labels["block"]
            groups = [
                ["start"] + [f"block{b}" for b in block[off[i] : off[i + 1]].tolist()]
                for i in range(len(strings))
            ]
        ctx.memo[key] = (strings, p_true, groups)
    return ctx.memo[key]


def measure(ctx: EvalContext) -> dict:
    """DistributionResult on eval.n_kl fresh true strings (stream 'eval_kl')."""
    strings, p_true, groups = _exact_rows(ctx)
    logq: list[np.ndarray] = []
    b = ctx.settings.batch_size
    for i in range(0, len(strings), b):
        logq.extend(ctx.model([np.concatenate([[BOS], s]) for s in strings[i : i + b]]))
    return distribution_metrics(strings, p_true, logq, ctx.grammar.n_t, groups=groups).to_dict()


def summary_rows(result: dict) -> list[dict]:
    half = 1.96 * result["kl_stderr"]
    rows = [
        {
            "metric": "kl",
            "value": result["kl"],
            "ci_low": result["kl"] - half,
            "ci_high": result["kl"] + half,
            "n": result["n_strings"],
        }
    ]
    for key in ("seq_kl", "cross_entropy", "entropy_rate", "entropy_rate_rb"):
        rows.append({"metric": key, "value": result[key], "n": result["n_strings"]})
    for group, v in result.get("kl_by_level", {}).items():
        rows.append({"metric": "kl_by_level", "level": group, "value": v["kl"], "n": v["n_rows"]})
    return rows
