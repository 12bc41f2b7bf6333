"""The derivation tree of labelled strings as per-token tables by depth (no torch).

The sampler gives every labelled string its derivation tree as spans (`SampleBatch.spans`,
pre-order, with each node's depth). `tree_labels` turns them into per-token tables by *depth*
(the root at depth 0), which for a layered grammar (the cfg3 family) are exactly its levels:

    ancestor[d, t]     the nonterminal of the depth-d node above token t (-1: none, the token's
                       leaf is shallower; never for a layered grammar)
    subtree[d, t]      the ordinal of that node among its string's depth-d nodes (-1: none)
    is_boundary[d, t]  token t is the last token of its depth-d node
    token_depth[t]     nonterminal nodes above token t (the root counted)
    end_label[t]       the nonterminal of the smallest (deepest) node ending at token t, or
                       n_nt ("none") when no node ends there
    ends[a, t]         some node of nonterminal a ends at token t

Worked example (`S -> NP VP`, `NP -> 'the' N`, `N -> 'dog'`, `VP -> 'ran'`; nonterminals S=0,
NP=1, N=2, VP=3) on "the dog ran":

    token          the  dog  ran
    ancestor[1]    NP   NP   VP        is_boundary[1]  F T T
    ancestor[2]    -1   N    -1        is_boundary[2]  F T F
    token_depth    2    3    2
    end_label      none N    VP        (dog ends N and NP: the smaller one, N)

`shallowest_end` is b# of the attention statistics and of KL by level: the shallowest level
(closest to the root, the root excluded) whose node ends at each token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cfglab.data.sampler import strict_levels
from cfglab.grammar.cfg import Grammar

MAX_DEPTH = 12  # depth levels kept for a grammar that is not layered (deeper nodes: not tabled)


@dataclass
class TreeLabels:
    """Per-token tree tables of a labelled batch, by depth (module docstring); N = tokens."""

    ancestor: np.ndarray  # (D, N) int64 nonterminal id, -1 where the token has no depth-d node
    subtree: np.ndarray  # (D, N) int64 ordinal of the depth-d node in its string, -1 if none
    is_boundary: np.ndarray  # (D, N) bool
    token_depth: np.ndarray  # (N,) int64
    end_label: np.ndarray  # (N,) int64, n_nt = no node ends here
    ends: np.ndarray  # (n_nt, N) bool

    @property
    def n_levels(self) -> int:
        return self.ancestor.shape[0]


def tree_labels(grammar: Grammar, batch, max_depth: int = MAX_DEPTH) -> TreeLabels:
    """The tables of the module docstring for a SampleBatch drawn with labels=True. For a
    layered grammar they cover every level (read off the sampler's per-level labels);
    otherwise depths 0..max_depth-1 (from the spans)."""
    layered = strict_levels(grammar)
    if layered is not None and batch.ancestors is not None:
        return _from_levels(grammar, batch, layered)
    rows, depth = batch.span_rows, batch.span_depth
    if rows is None:
        raise ValueError("tree_labels needs a SampleBatch sampled with labels=True")
    n_tok, n_nt = int(batch.offsets[-1]), grammar.n_nt
    string = np.repeat(np.arange(len(batch)), np.diff(batch.span_offsets))  # (K,) row -> string
    start = batch.offsets[string] + rows[:, 1]  # absolute token positions, (K,)
    end = batch.offsets[string] + rows[:, 2]  # exclusive
    n_levels = min(max_depth, int(depth.max()) + 1)
    ancestor = np.full((n_levels, n_tok), -1, dtype=np.int64)
    subtree = np.full((n_levels, n_tok), -1, dtype=np.int64)
    is_boundary = np.zeros((n_levels, n_tok), dtype=bool)
    for d in range(n_levels):
        sel = np.flatnonzero(depth == d)  # disjoint spans, left to right within each string
        size = end[sel] - start[sel]
        cover = np.repeat(start[sel] - np.cumsum(size) + size, size) + np.arange(size.sum())
        ancestor[d, cover] = np.repeat(rows[sel, 0], size)
        per_string = np.bincount(string[sel], minlength=len(batch))
        ordinal = np.arange(sel.size) - np.repeat(np.cumsum(per_string) - per_string, per_string)
        subtree[d, cover] = np.repeat(ordinal, size)
        is_boundary[d, end[sel] - 1] = True
    # nodes above each token: +1 where a node starts, -1 where it ends, summed left to right
    change = np.zeros(n_tok + 1, dtype=np.int64)
    np.add.at(change, start, 1)
    np.add.at(change, end, -1)
    token_depth = np.cumsum(change)[:n_tok]
    # the deepest node ending at each token: rows sorted by (end token, depth), last one wins
    order = np.lexsort((depth, end))
    last = np.flatnonzero(np.r_[end[order][1:] != end[order][:-1], True])
    end_label = np.full(n_tok, n_nt, dtype=np.int64)
    end_label[end[order][last] - 1] = rows[order][last, 0]
    ends = np.zeros((n_nt, n_tok), dtype=bool)
    ends[rows[:, 0], end - 1] = True
    return TreeLabels(ancestor, subtree, is_boundary, token_depth, end_label, ends)


def _from_levels(grammar: Grammar, batch, levels) -> TreeLabels:
    """The tables of a layered grammar from the sampler's per-level labels (no spans needed:
    level l is depth l, and every token has a node at every level)."""
    n_tok, n_nt = batch.ancestors.shape[1], grammar.n_nt
    ancestor = np.stack(
        [np.array(lev, dtype=np.int64)[batch.ancestors[i]] for i, lev in enumerate(levels)]
    )
    is_boundary = batch.is_boundary.astype(bool)
    end_label = np.full(n_tok, n_nt, dtype=np.int64)
    ends = np.zeros((n_nt, n_tok), dtype=bool)
    for lev in range(len(levels)):  # deeper levels overwrite: the smallest node ending there
        at = np.flatnonzero(is_boundary[lev])
        end_label[at] = ancestor[lev, at]
        ends[ancestor[lev, at], at] = True
    token_depth = np.full(n_tok, len(levels), dtype=np.int64)
    return TreeLabels(
        ancestor, batch.subtree.astype(np.int64), is_boundary, token_depth, end_label, ends
    )


def shallowest_end(is_boundary: np.ndarray) -> np.ndarray:
    """b#: (L, n) bool -> (n,) the smallest level >= 1 whose subtree ends at each token, -1 if
    none. (A token ending a level-l subtree also ends the deeper ones containing it.)"""
    ends = is_boundary[1:]  # the root level ends only at the last token
    first = ends.argmax(0) + 1
    return np.where(ends.any(0), first, -1)
