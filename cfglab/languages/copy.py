"""ww (w nonempty, over a small alphabet): the copy language, the classic mildly
context-sensitive case (a CFG can nest dependencies, not repeat them in order). A built-in of
cfglab.languages.

Sampling: m = |w| from CountPmf(m_min, m_max, ratio) (default uniform on 1..20, so 2 to 40
tokens), then w uniform over the `alphabet` letters a, b, ...; P(ww) = P(M = m) / alphabet^m.
Worked example, w = a b b (m = 3)::

    tokens     a b b a b b          ids 1 2 2 1 2 2
    block      0 0 0 1 1 1          offset 0 1 2 0 1 2
    dependent -1 -1 -1 0 1 2        (the second w copies the first, token by token)

Exact prefix mass of x_<=k, summing over m (s = alphabet; S(m) = P(M >= m)): every m >= k leaves
x_<=k inside the first w, S(k) s^-k in all; an m with k/2 <= m < k needs x_<=k to repeat with
period m (x_{m+j} = x_j), P(M = m) s^-m each. The next token splits the same terms: m > k gives
each letter S(k+1) s^-(k+1); an m with k/2 < m <= k whose period holds gives the letter x_{k-m}
its P(M = m) s^-m; m = k/2 gives EOS. The periods are read off the longest common prefix of x
and each of its shifts (the Z-function, O(n)); a prefix costs O(n), a string O(n^2) time in
blocks of bounded memory.
Every string is a prefix of some ww (take w = x), so nothing is ever a first error.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np

from cfglab.errors import GrammarError
from cfglab.languages.base import (
    CountPmf,
    Language,
    LanguageBatch,
    normalised_rows,
    token_positions,
)

CHUNK_CELLS = 1 << 20  # (prefix, |w|) cells weighed at once: ~50 MB, whatever the length


def _labels(pos: np.ndarray, half: np.ndarray) -> dict[str, np.ndarray]:
    """Labels of tokens at positions `pos` of strings whose w has length `half` (per token)."""
    second = pos >= half
    offset = pos - np.where(second, half, 0)
    return {
        "block": second.astype(np.int64),
        "offset": offset,
        "dependent": np.where(second, offset, -1),
    }


def _periods(x: np.ndarray) -> np.ndarray:
    """(n+1,) lcp[m] = length of the longest common prefix of x and x[m:] (lcp[0] = n,
    lcp[n] = 0): the Z-function, O(n) by reusing the rightmost match found so far."""
    n, xs = len(x), x.tolist()
    z = [0] * (n + 1)
    z[0] = n
    left = right = 0  # x[left:right] matches x[:right-left], right as far as seen
    for i in range(1, n):
        if i < right:
            z[i] = min(right - i, z[i - left])
        while i + z[i] < n and xs[z[i]] == xs[i + z[i]]:
            z[i] += 1
        if i + z[i] > right:
            left, right = i, i + z[i]
    return np.array(z, dtype=np.int64)


@dataclass(frozen=True)
class Copy(Language):
    m_max: int = 20  # the longest w sampled
    m_min: int = 1  # the shortest w sampled
    ratio: float = 1.0  # P(|w| = m+1) / P(|w| = m): 1 uniform, < 1 favours short strings
    alphabet: int = 2  # letters a, b, ... that w is drawn from, uniformly

    name: ClassVar[str] = "copy"

    def __post_init__(self) -> None:
        a = self.alphabet
        if isinstance(a, bool) or not isinstance(a, int) or not 1 <= a <= 26:
            raise GrammarError(f"copy alphabet={a!r}: give a whole number of letters, 1..26")
        self.count()

    def count(self) -> CountPmf:
        return CountPmf(self.m_min, self.m_max, self.ratio, "copy m")

    @cached_property
    def _count(self) -> CountPmf:
        return self.count()  # kept: its tables are read for every string

    @property
    def terminals(self) -> tuple[str, ...]:
        return tuple(string.ascii_lowercase[: self.alphabet])

    @property
    def label_classes(self) -> dict[str, int]:
        return {"block": 2, "offset": self.m_max}

    def _shapes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self._count
        m = np.arange(c.n_min, c.n_max + 1, dtype=np.int64)
        return m[:, None], c.pmf[m], 2 * m

    def _build(self, params: np.ndarray, rng: np.random.Generator, labels: bool) -> LanguageBatch:
        half = params[:, 0]  # (n,) |w|
        letters = rng.integers(1, self.alphabet + 1, size=int(half.sum()))  # every w, joined
        offsets, owner, pos = token_positions(2 * half)
        w_start = np.cumsum(half) - half  # (n,) where each w starts in `letters`
        lab = _labels(pos, half[owner])
        batch = LanguageBatch(ids=letters[w_start[owner] + lab["offset"]], offsets=offsets)
        if labels:
            batch.labels = lab
        return batch

    def _judge_one(self, x: np.ndarray) -> tuple[bool, int]:
        h = len(x) // 2
        return bool(len(x) >= 2 and len(x) % 2 == 0 and np.array_equal(x[:h], x[h:])), -1

    def _log_prob_one(self, x: np.ndarray) -> float:
        c, m = self._count, len(x) // 2
        if not self._judge_one(x)[0] or c.pmf[min(m, c.n_max + 1)] == 0:
            return -np.inf
        return float(math.log(c.pmf[m]) - m * math.log(self.alphabet))

    def _prefix_table(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(x)
        lcp = _periods(x)
        rows = np.zeros((n + 1, self.n_t + 1))  # unnormalised, row k scaled by exp(-scale[k])
        scale = np.zeros(n + 1)
        step = max(1, CHUNK_CELLS // (n + 1))  # prefixes per block: bounded memory
        for k0 in range(0, n + 1, step):
            k1 = min(n + 1, k0 + step)
            scale[k0:k1] = self._weigh(x, lcp, k0, k1, rows[k0:k1])
        return normalised_rows(rows, scale)

    def _weigh(self, x: np.ndarray, lcp: np.ndarray, k0: int, k1: int, out: np.ndarray):
        """The next-symbol weights after the prefixes of lengths k0..k1-1 (module docstring)
        into out (k1-k0, T+1), each row scaled by exp(-scale); returns scale (k1-k0,)."""
        c, log_s = self._count, math.log(self.alphabet)
        k = np.arange(k0, k1)[:, None]  # (R, 1) prefix length
        m = np.arange(max(1, k0 // 2), k1)[None, :]  # (1, M) |w|: only k/2 <= m <= k count
        with np.errstate(divide="ignore"):
            log_w = np.log(c.at(c.pmf, m)) - m * log_s  # (1, M) log P(M = m) s^-m
            fresh = np.log(c.at(c.tail, k[:, 0] + 1)) - (k[:, 0] + 1) * log_s  # (R,)
        periodic = lcp[m] >= k - m  # (R, M) x_<=k repeats with period m
        copy = periodic & (m <= k) & (2 * m >= k + 1)  # the next token copies x_{k-m}
        end = periodic & (2 * m == k)  # x_<=k is ww with |w| = m
        log_w = np.broadcast_to(log_w, copy.shape)
        top = np.where(copy | end, log_w, -np.inf).max(axis=1, initial=-np.inf)
        scale = np.maximum(fresh, top)
        scale = np.where(np.isfinite(scale), scale, 0.0)  # (R,) keeps exp() in range
        out[:, 1:] = np.exp(fresh - scale)[:, None]  # every letter: m > k
        r, j = np.nonzero(copy)
        np.add.at(out, (r, x[k[r, 0] - m[0, j]]), np.exp(log_w[r, j] - scale[r]))
        r, j = np.nonzero(end)
        np.add.at(out[:, 0], r, np.exp(log_w[r, j] - scale[r]))
        return scale

    def _labels_of(self, x: np.ndarray) -> dict[str, np.ndarray]:
        pos = np.arange(len(x))
        return _labels(pos, np.full(len(x), len(x) // 2))
