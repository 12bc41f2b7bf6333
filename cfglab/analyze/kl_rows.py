"""Next-token KL to the exact distribution under an intervention: the yardstick of the
interventions family (cfglab.analyze.interventions), with intervals over strings.

`score_strings` turns fresh labelled true strings into one model input (`BOS x EOS`, padded, as
the probes feed them: cfglab.analyze.states.string_windows) with the exact next-symbol rows of
each string (cfglab.exact.inside.next_token_dist) and the group of every row. Row k of a string
of n tokens (k = 0..n) is the prediction after x_1..x_k, read at model position k; its group is
the eval family's kl_by_level group: "start" for row 0, "L<l>" when x_k ends a level-l subtree
(the shallowest such level; a layered grammar's level, else the depth), else "inside".

`row_kls(model, scored, hooks)` runs the model with writable hooks (cfglab.model.hooks) and
returns every row's KL, defined as the eval family's (cfglab.evaluate.distribution.row_kl, which
analyze may not import; a test keeps the two equal): both distributions over [EOS, terminals]
smoothed as (P + 1e-5) / rowsum, weighted by the unsmoothed exact P*. `pooled` and `ratio`
average per-row (per-pair) numbers and give a 95% percentile bootstrap interval over strings
(pairs): the resampled units are whole strings, so rows of one string move together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cfglab.analyze.states import string_windows
from cfglab.data.tree import shallowest_end, tree_labels
from cfglab.grammar.cfg import Grammar
from cfglab.model.hooks import HookFn, run_with_hooks

KL_EPS = 1e-5  # the authors' smoothing (cfglab.evaluate.distribution.KL_EPS)
BATCH = 64  # strings per forward pass
# hooks for the batch rows in a slice of the input (most hooks ignore it; patching does not)
HookMaker = Callable[[slice], Sequence[tuple[str, HookFn]]]


def no_hooks(rows: slice) -> list:
    return []


@dataclass
class ScoredStrings:
    """True strings as one model input, their exact next-token rows and row groups; R rows in
    all, string b's rows 0..n_b in order."""

    tokens: Tensor  # (B, T) int64 `BOS x EOS PAD ...`, on the model's device
    batch_row: np.ndarray  # (R,) the input row of each scored row
    position: np.ndarray  # (R,) its model position k
    exact: np.ndarray  # (R, S) exact next-symbol probabilities, S = T + 1: column 0 EOS
    string: np.ndarray  # (R,) the string index of each row (= batch_row)
    group: np.ndarray  # (R,) index into `groups`
    groups: list[str]  # "start", "L1", ..., "inside"
    clean: np.ndarray | None = None  # (R,) the unhooked model's row KL (score_strings fills it)

    @property
    def n_strings(self) -> int:
        return int(self.tokens.shape[0])


def row_groups(grammar: Grammar, batch) -> list[str]:
    """Every row's group (module docstring), strings concatenated: sum (n + 1) names."""
    sharp = shallowest_end(tree_labels(grammar, batch).is_boundary)  # (N,) level or -1
    out = []
    for i in range(len(batch)):
        lev = sharp[batch.offsets[i] : batch.offsets[i + 1]]
        out += ["start"] + [f"L{v}" if v > 0 else "inside" for v in lev.tolist()]
    return out


def score_strings(model: nn.Module, grammar: Grammar, batch) -> ScoredStrings:
    """A labelled SampleBatch of true strings as ScoredStrings, with the clean model's KLs."""
    from cfglab.data.vocab import Vocab
    from cfglab.exact.inside import next_token_dist

    vocab = Vocab.from_grammar(grammar)
    strings = batch.strings()
    cfg = model.config
    tokens = string_windows(
        strings, eos=vocab.eos, pad=vocab.pad, block_size=cfg.block_size, causal=True
    )
    lengths = np.array([len(x) for x in strings])
    batch_row = np.repeat(np.arange(len(strings)), lengths + 1)
    position = np.concatenate([np.arange(n + 1) for n in lengths])
    names = row_groups(grammar, batch)
    groups = sorted(set(names), key=_group_order)
    scored = ScoredStrings(
        tokens=tokens.to(next(model.parameters()).device),
        batch_row=batch_row,
        position=position,
        exact=np.concatenate(next_token_dist(grammar, strings)),
        string=batch_row,
        group=np.array([groups.index(g) for g in names]),
        groups=groups,
    )
    scored.clean = row_kls(model, scored)
    return scored


def _group_order(name: str) -> tuple:
    """start, L1, L2, ..., inside."""
    if name.startswith("L"):
        return (1, int(name[1:]))
    return (0 if name == "start" else 2, 0)


def symbol_log_probs(logits: Tensor, n_terminals: int) -> np.ndarray:
    """(R, V) logits -> (R, T+1) float64 probabilities of [EOS, terminals] (the exact rows'
    columns; vocabulary ids: terminals 1..T, EOS T+1), not renormalised."""
    logq = torch.log_softmax(logits.double(), dim=-1)
    cols = torch.cat([torch.tensor([n_terminals + 1]), torch.arange(1, n_terminals + 1)])
    return logq[:, cols.to(logq.device)].exp().cpu().numpy()


def smoothed_kl(p_true: np.ndarray, q_model: np.ndarray) -> np.ndarray:
    """(R, S) exact and model rows -> (R,) sum_c P*_c (log P~*_c - log P~_c), P~ = (P + eps) /
    rowsum: the eval family's row KL."""

    def smooth(p: np.ndarray) -> np.ndarray:
        q = p + KL_EPS
        return q / q.sum(axis=-1, keepdims=True)

    return (p_true * (np.log(smooth(p_true)) - np.log(smooth(q_model)))).sum(axis=-1)


def model_rows(
    model: nn.Module,
    tokens: Tensor,
    batch_row: np.ndarray,
    position: np.ndarray,
    hooks: HookMaker = no_hooks,
    n_terminals: int | None = None,
) -> np.ndarray:
    """The model's [EOS, terminals] probabilities (R, T+1) at (batch_row, position), batch_row
    sorted, running BATCH input rows at a time with hooks(rows slice)."""
    out = []
    for start in range(0, tokens.shape[0], BATCH):
        rows = slice(start, min(start + BATCH, tokens.shape[0]))
        sel = (batch_row >= rows.start) & (batch_row < rows.stop)
        with torch.no_grad():
            logits = run_with_hooks(model, tokens[rows], list(hooks(rows)))  # (b, T, V)
        b = torch.as_tensor(batch_row[sel] - start, device=logits.device)
        k = torch.as_tensor(position[sel], device=logits.device)
        out.append(symbol_log_probs(logits[b, k], n_terminals))
    return np.concatenate(out)


def row_kls(model: nn.Module, scored: ScoredStrings, hooks: HookMaker = no_hooks) -> np.ndarray:
    """(R,) every row's KL(exact || model under `hooks`)."""
    t = scored.exact.shape[1] - 1
    q = model_rows(model, scored.tokens, scored.batch_row, scored.position, hooks, t)
    return smoothed_kl(scored.exact, q)


# ---- intervals over strings ------------------------------------------------------------------
def resample_weights(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_units) how often each unit (string, pair) is drawn in each bootstrap
    resample: the stream (seed, "intervene_bootstrap"), shared by every number of one result
    (common resamples: differences between two numbers get consistent intervals)."""
    from cfglab.seeds import rng

    draws = rng(seed, "intervene_bootstrap").integers(0, n_units, size=(n_boot, n_units))
    return np.stack([np.bincount(d, minlength=n_units) for d in draws]).astype(np.float64)


def _interval(boot: np.ndarray) -> tuple[float | None, float | None]:
    boot = boot[np.isfinite(boot)]
    if not boot.size:
        return None, None
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def ratio(num: np.ndarray, den: np.ndarray, weights: np.ndarray) -> dict:
    """sum(num) / sum(den) over units (U,), with its bootstrap interval: {mean, lo, hi, n};
    mean None when sum(den) <= 0 (nothing to recover: a ratio would be noise)."""
    total = float(den.sum())
    mean = float(num.sum()) / total if total > 0 else None
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = _interval((weights @ num) / (weights @ den))
    return {"mean": mean, "lo": lo, "hi": hi, "n": int(len(num))}


def pooled(values: np.ndarray, scored: ScoredStrings, weights: np.ndarray) -> dict[str, dict]:
    """Per group (and "all"): the mean of per-row `values` (R,) pooled over the group's rows,
    with a bootstrap interval over strings: {group: {mean, lo, hi, n (rows)}}."""
    n_str, n_grp = scored.n_strings, len(scored.groups)
    sums = np.zeros((n_str, n_grp))
    counts = np.zeros((n_str, n_grp))
    np.add.at(sums, (scored.string, scored.group), values)
    np.add.at(counts, (scored.string, scored.group), 1.0)
    out = {"all": ratio(sums.sum(1), counts.sum(1), weights)}
    for g, name in enumerate(scored.groups):
        out[name] = ratio(sums[:, g], counts[:, g], weights)
        out[name]["n"] = int(counts[:, g].sum())
    out["all"]["n"] = int(counts.sum())
    return out
