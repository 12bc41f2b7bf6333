"""Posterior probabilities of a sentence's parse-tree nodes by inside-outside (stage 3, no torch),
and the best accuracy any reader of the whole string can reach on the tree's labels.

A sentence with several parses leaves its tree uncertain: the level-l ancestor of a token can
be A in one parse and B in another. Given the whole string x the best guess of a label is its
most probable value, so the best possible probe accuracy (the **ceiling** printed beside the
probes) is the mean over tokens of max_a P(ancestor_l(t) = a | x). For an implicit grammar
(cfglab.grammar.implicit) the deepest nonterminal level holds the hidden terminals, and its
ceiling is the best possible accuracy of a probe for them.

How (per string, n tokens, on the binarised grammar of `normal_form.py`):

1. inside: the chart of the scaled left-to-right sweep (`sweep.run`): cells (i, j) and their
   symbols with inside values beta(i, j, A) divided by prod_{m in [i, j)} c_m (c_m the
   conditional probability of token m), after unary closure; top-down filtered, so only
   constituents that fit in some parse of a sentence starting with x are there (every node of
   positive posterior is);
2. outside, compiled (`_outside`): cells by decreasing length; a cell's closed outside alpha is
   complete once every longer cell is done; alpha0(B) = sum_A alpha(A) U*[A, B] carries it down
   unary chains, and each binary rule P -> B C with B over (i, m) and C over (m, j) adds
   p alpha0(P) beta(C) to alpha(B) and p alpha0(P) beta(B) to alpha(C). With the scaling above
   and alpha scaled by the tokens outside the span, no factor c_m appears anywhere;
3. P(a node of A spans (i, j) | x) = alpha0(i, j, A) beta(i, j, A) / beta(0, n, S): added
   symbols of the binarisation (shared suffixes, preterminals) are dropped, every original
   nonterminal's node is counted once (unary chains included);
4. per token, the sum over the cells that cover it (a difference array): the expected number
   of A-nodes above token t, which in a layered grammar is P(ancestor_l(t) = A | x).

The outside pass costs about half the sweep (step 1) that it follows. Measured on 256 strings
(2 shared cores): cfg3f 0.3 s (~2.6 chart cells per token); implicit grammars with overlapping
bags fill the chart (cfg3f with 9 tokens: ~29,000 cells for 350 tokens): cfg3f 15-20 s, cfg3k
(~520 tokens) ~1.2 s per string.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from cfglab.data.sampler import strict_levels
from cfglab.errors import ExactError
from cfglab.exact import sweep
from cfglab.exact.cyk import check_strings
from cfglab.exact.normal_form import NormalForm, normal_form
from cfglab.grammar.cfg import Grammar


def node_posteriors(grammar: Grammar, x: np.ndarray) -> dict[str, np.ndarray]:
    """The nodes of the sentence x's parses with their posterior probabilities: {"start",
    "end", "nt", "prob"} (M,) arrays, one entry per (span, original nonterminal) of positive
    probability: P(a node of nonterminal nt spans tokens start..end-1 | x). ExactError if x is
    not a sentence."""
    nf = normal_form(grammar)
    (x,) = check_strings(grammar, [x])
    cell_i, cell_j, mu = _cells(nf, x)
    c, a = np.nonzero(mu[:, : grammar.n_nt] > 0)
    return {"start": cell_i[c], "end": cell_j[c], "nt": a, "prob": mu[c, a]}


def ancestor_posteriors(grammar: Grammar, x: np.ndarray) -> list[np.ndarray]:
    """Per level l of a layered grammar (`grammar.levels`, the root's included), (n, K_l):
    P(the level-l ancestor of token t is levels[l][k] | x) for the sentence x."""
    levels = _levels(grammar)
    nf = normal_form(grammar)
    (x,) = check_strings(grammar, [x])
    cell_i, cell_j, mu = _cells(nf, x)
    n, n_nt = len(x), grammar.n_nt
    diff = np.zeros((n + 1, n_nt))  # (n+1, NT): + at a span's start, - at its end
    np.add.at(diff, cell_i, mu[:, :n_nt])
    np.add.at(diff, cell_j, -mu[:, :n_nt])
    cover = np.cumsum(diff, axis=0)[:n]  # (n, NT) expected A-nodes above each token
    return [cover[:, list(lev)] for lev in levels]


def ancestor_ceiling(grammar: Grammar, strings: Sequence[np.ndarray]) -> dict:
    """The best possible accuracy of a reader of the whole string on the level-l ancestor of
    each token, per level l >= 1 (the probe family's levels): {"levels", "ceiling" (mean over
    every token of every string of max_a P(ancestor = a | x)), "n_tokens"}."""
    levels = _levels(grammar)
    best = np.zeros(len(levels))
    n_tokens = 0
    for x in strings:
        post = ancestor_posteriors(grammar, x)
        best += [p.max(axis=1).sum() for p in post]
        n_tokens += len(x)
    return {
        "levels": list(range(1, len(levels))),
        "ceiling": (best[1:] / max(n_tokens, 1)).tolist(),
        "n_tokens": n_tokens,
    }


def _levels(grammar: Grammar) -> tuple[tuple[int, ...], ...]:
    levels = strict_levels(grammar)
    if levels is None:
        raise ExactError(
            f"{grammar.name or 'the grammar'} is not layered (every rule of a level-l "
            "nonterminal rewriting into level l+1 only), so its tokens have no ancestor per "
            "level: use node_posteriors"
        )
    return levels


def _cells(nf: NormalForm, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell_i (C,), cell_j (C,), mu (C, N)): the chart's cells and P(a node of each symbol
    spans the cell | x)."""
    n = len(x)
    _, eos, _, err, cell_start, end_off, ent_off, ent_sym, ent_val = sweep.run(nf, x, is_prob=True)
    if err != -1 or n == 0 or not eos[n] > 0:
        raise ExactError(
            f"the string of {n} tokens is not a sentence of the grammar, so it has no parse to "
            "take posteriors over: give sentences (e.g. sampled from the grammar)"
        )
    n_cells = len(cell_start)
    cell_j = np.repeat(np.arange(n + 1), np.diff(end_off[: n + 2]))[:n_cells]
    beta = np.zeros((n_cells, nf.n_sym))  # (C, N) scaled closed inside values
    owner = np.repeat(np.arange(n_cells), np.diff(ent_off))
    beta[owner, ent_sym] = ent_val
    root = int(np.flatnonzero((cell_start == 0) & (cell_j == n))[0])
    order = np.argsort(cell_start - cell_j, kind="stable")  # longest spans first
    if (n + 1) ** 2 * 4 > sweep.MAX_TABLE_BYTES:
        raise ExactError(
            f"a string of {n:,} tokens needs a {n + 1} x {n + 1} cell index for its outside "
            "pass, more than the exact algorithms' table limit: give shorter strings"
        )
    cell_of = np.full((n + 1, n + 1), -1, np.int32)  # (start, end) -> cell number
    cell_of[cell_start, cell_j] = np.arange(n_cells, dtype=np.int32)
    par_off, par_left, par_right, par_p = _rules_by_parent(nf)
    alpha0 = _outside(
        cell_start, cell_j, end_off, cell_of, beta, order, root,
        nf.up_off, nf.up_sym, nf.up_p, par_off, par_left, par_right, par_p,
    )  # fmt: skip
    return cell_start, cell_j, alpha0 * beta / beta[root, 0]


def _rules_by_parent(nf: NormalForm) -> tuple[np.ndarray, ...]:
    """The binary rules P -> B C grouped by P: (off (N+1,), left B, right C, p)."""
    order = np.argsort(nf.bin_parent, kind="stable")
    off = np.searchsorted(nf.bin_parent[order], np.arange(nf.n_sym + 1)).astype(np.int64)
    return off, nf.bin_left[order], nf.bin_right[order], nf.bin_p[order]


@njit(cache=True)
def _outside(cell_i, cell_j, end_off, cell_of, beta, order, root, up_off, up_sym, up_p, par_off,
             par_left, par_right, par_p):  # fmt: skip
    """alpha0 (C, N): the scaled outside weight of a node of each symbol over each cell, unary
    chains above it included (steps 2-3 of the module docstring)."""
    n_sym = beta.shape[1]
    alpha = np.zeros_like(beta)  # outside of the closed symbols (as a child, or the root)
    alpha0 = np.zeros_like(beta)
    alpha[root, 0] = 1.0
    for c in order:
        h, k = cell_i[c], cell_j[c]
        for b in range(n_sym):  # down the unary chains: alpha0 = U*^T alpha
            v = alpha[c, b]
            for q in range(up_off[b], up_off[b + 1]):
                v += up_p[q] * alpha[c, up_sym[q]]
            alpha0[c, b] = v
        for p in range(n_sym):
            a0 = alpha0[c, p]
            if a0 == 0.0:
                continue
            for r in range(par_off[p], par_off[p + 1]):
                left, right, w = par_left[r], par_right[r], par_p[r] * a0
                for c2 in range(end_off[k], end_off[k + 1]):  # the right child's cell (m, k)
                    m = cell_i[c2]
                    if m <= h or beta[c2, right] == 0.0:
                        continue
                    c1 = cell_of[h, m]  # the left child's cell (h, m)
                    if c1 < 0 or beta[c1, left] == 0.0:
                        continue
                    alpha[c1, left] += w * beta[c2, right]
                    alpha[c2, right] += w * beta[c1, left]
    return alpha0
