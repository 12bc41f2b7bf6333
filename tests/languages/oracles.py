"""Independent oracles for the languages' tests: regexes and counting on letter strings, the
count distribution written out from its definition, prefix viability by construction.

Nothing here calls cfglab.languages; a test builds an oracle from a language's parameters and
compares. One entry of ORACLES per registered language (a test checks none is missing).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass


def pmf(k: int, lo: int, hi: int, ratio: float) -> float:
    """P(N = k) for N on lo..hi with P(k+1) / P(k) = ratio (the definition, summed directly)."""
    if not lo <= k <= hi:
        return 0.0
    return ratio ** (k - lo) / sum(ratio ** (j - lo) for j in range(lo, hi + 1))


@dataclass
class Oracle:
    alphabet: str  # the letters, in token-id order
    member: Callable[[str], bool]  # the formal language (any count)
    prob: Callable[[str], float]  # P(string) under the sampling distribution
    viable: Callable[[str], bool]  # a prefix of some sentence of the formal language
    max_len: int  # the longest string with positive probability

    def first_error(self, s: str) -> int:
        return next((e for e in range(len(s)) if not self.viable(s[: e + 1])), -1)


def anbncn(n_max: int = 20, n_min: int = 1, ratio: float = 1.0) -> Oracle:
    def member(s: str) -> bool:
        m = re.fullmatch(r"(a+)(b+)(c+)", s)
        return bool(m) and len(m[1]) == len(m[2]) == len(m[3])

    def prob(s: str) -> float:
        return pmf(len(s) // 3, n_min, n_max, ratio) if member(s) else 0.0

    def viable(s: str) -> bool:
        return any(("a" * n + "b" * n + "c" * n).startswith(s) for n in range(1, len(s) + 2))

    return Oracle("abc", member, prob, viable, 3 * n_max)


def copy(m_max: int = 20, m_min: int = 1, ratio: float = 1.0, alphabet: int = 2) -> Oracle:
    letters = "abcdefghijklmnopqrstuvwxyz"[:alphabet]

    def member(s: str) -> bool:
        h = len(s) // 2
        return len(s) >= 2 and len(s) % 2 == 0 and s[:h] == s[h:] and set(s) <= set(letters)

    def prob(s: str) -> float:
        return (
            pmf(len(s) // 2, m_min, m_max, ratio) / alphabet ** (len(s) // 2) if member(s) else 0.0
        )

    def viable(s: str) -> bool:  # some |w| = m >= len/2 with s[i] == s[i - m] past m
        return any(
            all(s[i] == s[i - m] for i in range(m, len(s)))
            for m in range(max(1, (len(s) + 1) // 2), len(s) + 2)
        )

    return Oracle(letters, member, prob, viable, 2 * m_max)


def cross_serial(
    n_max: int = 10, m_max: int = 10, n_min: int = 1, m_min: int = 1, ratio: float = 1.0
) -> Oracle:
    def member(s: str) -> bool:
        m = re.fullmatch(r"(a+)(b+)(c+)(d+)", s)
        return bool(m) and len(m[1]) == len(m[3]) and len(m[2]) == len(m[4])

    def prob(s: str) -> float:
        if not member(s):
            return 0.0
        m = re.fullmatch(r"(a+)(b+)(c+)(d+)", s)
        return pmf(len(m[1]), n_min, n_max, ratio) * pmf(len(m[2]), m_min, m_max, ratio)

    def viable(s: str) -> bool:
        r = range(1, len(s) + 2)
        return any(("a" * n + "b" * m + "c" * n + "d" * m).startswith(s) for n in r for m in r)

    return Oracle("abcd", member, prob, viable, 2 * (n_max + m_max))


ORACLES: dict[str, Callable[..., Oracle]] = {
    "anbncn": anbncn,
    "copy": copy,
    "cross_serial": cross_serial,
}


def all_strings(alphabet: str, max_len: int) -> list[str]:
    """Every string over `alphabet` of length 0..max_len, shortest first."""
    return ["".join(t) for n in range(max_len + 1) for t in itertools.product(alphabet, repeat=n)]


def prefix_masses(oracle: Oracle, members: list[str]) -> dict[str, float]:
    """P(a sampled string starts with p) for every prefix p of the given members (all members
    of positive probability must be given)."""
    mass: dict[str, float] = {}
    for s in members:
        p = oracle.prob(s)
        for k in range(len(s) + 1):
            mass[s[:k]] = mass.get(s[:k], 0.0) + p
    return mass
