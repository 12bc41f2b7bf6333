"""Block languages: runs of distinct letters whose lengths repeat earlier counts (aⁿbⁿcⁿ,
aⁿbᵐcⁿdᵐ). The machinery both built-ins share; each declares its blocks in its own module.

A block language has B blocks, one letter each (token ids 1..B in block order). The first F are
*free*: block f's count is drawn from its own CountPmf, independently. The other B - F are
*determined*: each repeats the count of one free block (`refs`). A string is the B runs in
order, so the free counts fix it. Worked example, aⁿbᵐcⁿdᵐ (free a, b; c repeats a's count, d
b's) with n = 2, m = 1::

    tokens     a a b c c d          ids  1 1 2 3 3 4
    block      0 0 1 2 2 3          offset 0 1 0 0 1 0
    dependent -1 -1 -1 0 1 2        (c at offset o -> a at offset o; d -> b)

A token's dependent is the same offset in the nearest earlier block with the same count.

Exact next-token distribution after a prefix x_<=k. While the free runs are being read (the
prefix ends r tokens into free block f, after free runs r_0..r_{f-1}), the only uncertainty is
whether block f goes on: with S_f(r) = P(N_f >= r),

    P(next = letter f | x_<=k) = S_f(r+1) / S_f(r),  P(next = letter f+1) = P_f(r) / S_f(r)
    P(x_<=k is a prefix) = prod_{g<f} P_g(r_g) * S_f(r)

(k = 0 is block 0 with r = 0: S(0) = 1, P(0) = 0). Once every free run is read, the rest of
the string is fixed: the determined runs, then EOS, each with probability 1. O(len) per string.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np

from cfglab.errors import GrammarError
from cfglab.languages.base import MAX_SHAPES, CountPmf, Language, LanguageBatch, token_positions


def _run(x: np.ndarray, start: int, token: int) -> int:
    """Length of the run of `token` in x from position `start`."""
    same = x[start:] == token
    return int(same.size if same.all() else np.argmin(same))


@dataclass(frozen=True)
class BlockLanguage(Language):
    """Free blocks then determined blocks (module docstring). Subclasses set `letters`,
    `refs` and give their free counts' distributions in `counts()`."""

    letters: ClassVar[tuple[str, ...]] = ()  # one per block, in order
    refs: ClassVar[tuple[int, ...]] = ()  # per determined block, the free block it repeats

    def counts(self) -> list[CountPmf]:
        """The free blocks' count distributions, one per free block."""
        raise NotImplementedError

    @cached_property
    def _pmfs(self) -> list[CountPmf]:
        return self.counts()  # kept: their tables are read for every string

    @property
    def terminals(self) -> tuple[str, ...]:
        return self.letters

    @property
    def label_classes(self) -> dict[str, int]:
        return {"block": len(self.letters), "offset": max(c.n_max for c in self._pmfs)}

    @property
    def n_free(self) -> int:
        return len(self.letters) - len(self.refs)

    @property
    def _count_of(self) -> np.ndarray:
        """(B,) the free block whose count each block has."""
        return np.array([*range(self.n_free), *self.refs], dtype=np.int64)

    @property
    def _source(self) -> np.ndarray:
        """(B,) the nearest earlier block with the same count (-1: none): the dependents."""
        c = self._count_of
        return np.array(
            [max((j for j in range(b) if c[j] == c[b]), default=-1) for b in range(len(c))],
            dtype=np.int64,
        )

    # ---- shapes and sampling -------------------------------------------------------------------
    def _shapes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pmfs = self._pmfs
        support = [np.arange(c.n_min, c.n_max + 1) for c in pmfs]
        size = int(np.prod([len(s) for s in support]))
        if size > MAX_SHAPES:
            raise GrammarError(
                f"{self.name}: {size} combinations of counts exceed {MAX_SHAPES}; lower n_max"
            )
        grid = np.meshgrid(*support, indexing="ij")
        params = np.stack([g.ravel() for g in grid], axis=1).astype(np.int64)  # (K, F)
        probs = np.ones(len(params))
        for f, c in enumerate(pmfs):
            probs *= c.pmf[params[:, f]]
        # a free count appears once, plus once per determined block that repeats it
        times = 1 + np.bincount(np.asarray(self.refs, dtype=np.int64), minlength=self.n_free)
        return params, probs, params @ times

    def _build(self, params: np.ndarray, rng, labels: bool) -> LanguageBatch:
        counts = params[:, self._count_of]  # (n, B) tokens per block
        offsets, owner, pos = token_positions(counts.sum(axis=1))
        ends = np.cumsum(counts, axis=1)  # (n, B) one past each block's last token
        block = (pos[:, None] >= ends[owner]).sum(axis=1)  # (N_total,)
        batch = LanguageBatch(ids=block + 1, offsets=offsets)
        if labels:
            starts = ends - counts
            offset = pos - starts[owner, block]
            src = self._source[block]
            dependent = np.where(src >= 0, starts[owner, np.maximum(src, 0)] + offset, -1)
            batch.labels = {"block": block, "offset": offset, "dependent": dependent}
        return batch

    # ---- exact -----------------------------------------------------------------------------------
    def _scan(self, x: np.ndarray) -> tuple[list[int], int, int]:
        """(the free runs read, first error or -1, tokens in those runs)."""
        pos, runs = 0, []
        for f in range(self.n_free):
            r = _run(x, pos, f + 1)
            if r == 0:  # block f cannot be empty: a token here is an error, an end is not
                return runs, (pos if pos < len(x) else -1), pos
            runs.append(r)
            pos += r
        expected = self._determined(runs)
        tail = x[pos:]
        m = min(len(tail), len(expected))
        bad = np.flatnonzero(tail[:m] != expected[:m])
        if bad.size:
            return runs, pos + int(bad[0]), pos
        return runs, (pos + len(expected) if len(tail) > len(expected) else -1), pos

    def _determined(self, runs: list[int]) -> np.ndarray:
        """The token ids of the determined blocks, given the free runs."""
        ids = np.arange(self.n_free, len(self.letters)) + 1
        return np.repeat(ids, [runs[r] for r in self.refs])

    def _judge_one(self, x: np.ndarray) -> tuple[bool, int]:
        runs, err, pos = self._scan(x)
        complete = len(runs) == self.n_free and len(x) == pos + len(self._determined(runs))
        return err < 0 and complete, err

    def _log_prob_one(self, x: np.ndarray) -> float:
        ok, _ = self._judge_one(x)
        if not ok:
            return -np.inf
        runs, _, _ = self._scan(x)
        with np.errstate(divide="ignore"):
            return float(sum(np.log(c.at(c.pmf, r)) for c, r in zip(self._pmfs, runs, strict=True)))

    def _prefix_table(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        runs, err, free_end = self._scan(x)
        n = len(x)
        last = n if err < 0 else err  # rows 0..last follow a viable prefix
        pmfs = self._pmfs
        lpp = np.full(n + 1, -np.inf)
        rows = np.zeros((n + 1, self.n_t + 1))
        starts = np.concatenate([[0], np.cumsum(runs)]).astype(np.int64)  # free block starts
        with np.errstate(divide="ignore", invalid="ignore"):
            done = np.concatenate(
                [
                    [0.0],
                    np.cumsum([np.log(c.at(c.pmf, r)) for c, r in zip(pmfs, runs, strict=False)]),
                ]
            )  # log P of the completed free runs before each block
            # free phase: k in 0..free_end; k = 0 sits in block 0 with r = 0, and k at a
            # block's end stays in that block (it may go on)
            k = np.arange(min(free_end, last) + 1)
            f = np.searchsorted(starts[1:], k, side="left") if runs else np.zeros_like(k)
            for b in np.unique(f):
                c, at = pmfs[b], k[f == b]
                r = at - starts[b]
                s_r = c.at(c.tail, r)
                lpp[at] = done[b] + np.log(s_r)
                rows[at, b + 1] = c.at(c.tail, r + 1) / s_r  # block b goes on
                rows[at, b + 2] = c.at(c.pmf, r) / s_r  # the next block starts
            if len(runs) == self.n_free and last > free_end:
                # determined phase: one continuation, then EOS (column 0)
                at = np.arange(free_end + 1, last + 1)
                lpp[at] = done[-1]
                nxt = np.append(self._determined(runs), 0)
                rows[at, nxt[at - free_end]] = 1.0
        rows[~(lpp > -np.inf)] = np.nan
        return lpp, rows

    def _labels_of(self, x: np.ndarray) -> dict[str, np.ndarray]:
        runs, _, _ = self._scan(x)
        return self._build(np.array([runs], dtype=np.int64), None, True).labels
