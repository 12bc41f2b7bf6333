"""aⁿbᵐcⁿdᵐ (n, m >= 1): cross-serial dependencies, the pattern of Swiss German's verb
clusters (Shieber 1985: the i-th noun phrase's case is governed by the i-th verb, so the
dependencies cross instead of nesting). No context-free grammar generates it. A built-in of
cfglab.languages.

Sampling: n and m independent, each from its CountPmf (defaults uniform on 1..10 with one
shared `ratio`, so 4 to 40 tokens); P(aⁿbᵐcⁿdᵐ) = P(N = n) P(M = m). Worked example, n = 2,
m = 1::

    tokens     a a b c c d          ids 1 1 2 3 3 4
    block      0 0 1 2 2 3          offset 0 1 0 0 1 0
    dependent -1 -1 -1 0 1 2        (c at offset o -> a at o; d at offset o -> b at o)

Next-token distribution: while reading a's (k of them) a goes on with P(N > k | N >= k); while
reading b's (j of them) b goes on with P(M > j | M >= j), else c starts; after the first c the
rest (cⁿdᵐ, then EOS) is certain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cfglab.languages.base import CountPmf
from cfglab.languages.blocks import BlockLanguage


@dataclass(frozen=True)
class CrossSerial(BlockLanguage):
    n_max: int = 10  # the largest n (a's and c's)
    m_max: int = 10  # the largest m (b's and d's)
    n_min: int = 1
    m_min: int = 1
    ratio: float = 1.0  # P(k+1) / P(k) for both counts: 1 uniform, < 1 favours short strings

    name: ClassVar[str] = "cross_serial"
    letters: ClassVar[tuple[str, ...]] = ("a", "b", "c", "d")
    refs: ClassVar[tuple[int, ...]] = (0, 1)  # c repeats a's count, d b's

    def __post_init__(self) -> None:
        self.counts()  # ConfigError on a bad parameter, before any use

    def counts(self) -> list[CountPmf]:
        return [
            CountPmf(self.n_min, self.n_max, self.ratio, "cross_serial n"),
            CountPmf(self.m_min, self.m_max, self.ratio, "cross_serial m"),
        ]
