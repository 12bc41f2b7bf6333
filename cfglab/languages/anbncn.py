"""aⁿbⁿcⁿ (n >= 1): the textbook language no context-free grammar generates (three counts
that must agree). A built-in of cfglab.languages.

Sampling: n from CountPmf(n_min, n_max, ratio) (default uniform on 1..20, so 3 to 60 tokens),
then the string; P(aⁿbⁿcⁿ) = P(N = n). Worked example, n = 2::

    tokens     a a b b c c          ids 1 1 2 2 3 3
    block      0 0 1 1 2 2          offset 0 1 0 1 0 1
    dependent -1 -1 0 1 2 3         (b at offset o -> a at o; c at offset o -> b at o)

Next-token distribution: after aᵏ (k >= 1) the next token is a with P(N > k | N >= k) and b
with P(N = k | N >= k); after the first b, n is known and the rest (bⁿcⁿ, then EOS) is certain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cfglab.languages.base import CountPmf
from cfglab.languages.blocks import BlockLanguage


@dataclass(frozen=True)
class AnBnCn(BlockLanguage):
    n_max: int = 20  # the largest n sampled
    n_min: int = 1  # the smallest n sampled (> 1: e.g. a test set of longer strings)
    ratio: float = 1.0  # P(n+1) / P(n): 1 uniform, < 1 favours short strings

    name: ClassVar[str] = "anbncn"
    letters: ClassVar[tuple[str, ...]] = ("a", "b", "c")
    refs: ClassVar[tuple[int, ...]] = (0, 0)  # b and c repeat a's count

    def __post_init__(self) -> None:
        self.counts()  # ConfigError on a bad parameter, before any use

    def counts(self) -> list[CountPmf]:
        return [CountPmf(self.n_min, self.n_max, self.ratio, "anbncn n")]
