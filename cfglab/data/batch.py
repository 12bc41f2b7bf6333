"""A batch of sampled strings and their tree labels: the value the sampler returns (no torch).

`SampleBatch` holds the strings concatenated (`ids`, `offsets`) and, for layered grammars, per
level and token: the NT ancestor, the ordinal of its subtree and whether the token ends it
(`ancestors[level, t]`, `subtree[level, t]`, `is_boundary[level, t]`); for other grammars the
[nt, start, end] spans of each string's tree, kept as the sampler's compact source tables until
asked for. See cfglab.data.sampler for how they are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SampleBatch:
    """`n` strings concatenated, with optional labels. `strings()` splits them."""

    ids: np.ndarray  # (N_total,) int64 token ids 1..T (vocab.py), strings concatenated
    offsets: np.ndarray  # (n+1,) int64: string i is ids[offsets[i]:offsets[i+1]]
    ancestors: np.ndarray | None = None  # (L, N_total) int16, layered grammars with labels
    subtree: np.ndarray | None = None  # (L, N_total) int32
    is_boundary: np.ndarray | None = None  # (L, N_total) bool
    _span_parts: list[_SpanSource] | None = field(default=None, repr=False)
    _span_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def strings(self) -> list[np.ndarray]:
        return np.split(self.ids, self.offsets[1:-1])

    def _span_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        # computed on first use only: most callers want the per-level labels or nothing
        if self._span_parts is None:
            return None
        if self._span_cache is None:
            done = [part.rows_and_counts() for part in self._span_parts]
            rows = np.concatenate([r for r, _, _ in done])
            depth = np.concatenate([d for _, _, d in done])
            offsets = np.zeros(len(self) + 1, dtype=np.int64)
            np.cumsum(np.concatenate([c for _, c, _ in done]), out=offsets[1:])
            self._span_cache = (rows, offsets, depth)
        return self._span_cache

    @property
    def span_rows(self) -> np.ndarray | None:
        """(K_total, 3) int64 rows (nt, start, end_exclusive) of all strings, pre-order."""
        table = self._span_table()
        return None if table is None else table[0]

    @property
    def span_offsets(self) -> np.ndarray | None:
        """(n+1,) int64: string i's span rows are span_rows[span_offsets[i]:span_offsets[i+1]]."""
        table = self._span_table()
        return None if table is None else table[1]

    @property
    def span_depth(self) -> np.ndarray | None:
        """(K_total,) int64 depth of each span row's node in its tree (the root 0), aligned with
        span_rows; for a layered grammar the depth is the node's level."""
        table = self._span_table()
        return None if table is None else table[2]

    @property
    def spans(self) -> list[np.ndarray] | None:
        """Per string a (K, 3) int64 array (nt, start, end_exclusive), pre-order (parents before
        children, left to right); None without labels. Positions are within the string."""
        table = self._span_table()
        return None if table is None else np.split(table[0], table[1][1:-1])


@dataclass
class _SpanSource:
    """One batch's derivation trees, kept to compute its spans on demand."""

    gsym: list[np.ndarray]  # per generation: symbols
    gstr: list[np.ndarray]  # per generation: string index (within this batch)
    gnt: list[np.ndarray]  # per generation: positions of the nonterminal nodes
    start: list[np.ndarray]  # per generation: first token of each node, within its string
    size: list[np.ndarray]  # per generation: tokens under each node
    offsets: np.ndarray  # (n+1,) token offsets of this batch's strings

    def rows_and_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows (K, 3) in pre-order, span rows per string (n,), depth of each row (K,))."""
        # pre-order = by position in the batch; nodes that start at the same token form a
        # leftmost chain, ordered by depth, which the stable sort keeps (generations in order)
        rows, where, owner, depth = [], [], [], []
        for g, nt in enumerate(self.gnt):
            if nt.size == 0:
                continue
            st = self.start[g][nt]
            rows.append(np.stack([self.gsym[g][nt], st, st + self.size[g][nt]], axis=1))
            where.append(self.offsets[self.gstr[g][nt]] + st)
            owner.append(self.gstr[g][nt])
            depth.append(np.full(nt.size, g, dtype=np.int64))  # generation g = depth g
        order = np.argsort(np.concatenate(where), kind="stable")
        n = self.offsets.size - 1
        return (
            np.concatenate(rows)[order].astype(np.int64),
            np.bincount(np.concatenate(owner), minlength=n),
            np.concatenate(depth)[order],
        )


def _concat(parts: list[SampleBatch]) -> SampleBatch:
    if len(parts) == 1:
        return parts[0]
    lengths = np.concatenate([p.lengths for p in parts])
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = SampleBatch(ids=np.concatenate([p.ids for p in parts]), offsets=offsets)
    if parts[0]._span_parts is not None:
        out._span_parts = [src for p in parts for src in p._span_parts]
    if parts[0].ancestors is not None:
        out.ancestors = np.concatenate([p.ancestors for p in parts], axis=1)
        out.subtree = np.concatenate([p.subtree for p in parts], axis=1)
        out.is_boundary = np.concatenate([p.is_boundary for p in parts], axis=1)
    return out
