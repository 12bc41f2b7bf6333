"""Sentences, viable prefixes and exact completions (cfglab.exact.language) against brute-force
expansion of leftmost derivations (tests/exact/brute.py) and Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest

from cfglab.exact import language
from cfglab.grammar import load
from tests.exact.brute import derivations
from tests.exact.grammars import FINITE, FINITE_MAX_LEN, RECURSIVE, TINY_LAYERED, TINY_MAX_LEN

FINITE_CASES = [(FINITE, FINITE_MAX_LEN)] + [(g, TINY_MAX_LEN) for g in TINY_LAYERED.values()]


@pytest.mark.parametrize("grammar,max_len", FINITE_CASES)
def test_sentences_and_counts_equal_brute_force(grammar, max_len):
    brute = derivations(grammar, max_len)
    got = language.enumerate_sentences(grammar)
    assert set(got) == set(brute)
    assert max(abs(got[s] - p) for s, (_, p) in brute.items()) < 1e-12
    assert language.count_derivations(grammar) == sum(c for c, _ in brute.values())
    assert sum(got.values()) == pytest.approx(1.0, abs=1e-12)


def test_recursive_or_too_large_languages_are_not_enumerated():
    assert language.count_derivations(RECURSIVE) is None
    assert language.enumerate_sentences(RECURSIVE) is None
    assert language.enumerate_sentences(FINITE, max_derivations=3) is None


def test_quickstart_language_size():
    """The number quoted in cfglab.exact.repair's docstring."""
    g = load("configs/grammars/quickstart.cfg")
    assert language.count_derivations(g) == 247_347


@pytest.mark.parametrize("grammar,max_len", FINITE_CASES)
@pytest.mark.parametrize("length", [1, 2, 3])
def test_prefixes_equal_brute_force(grammar, max_len, length):
    want: dict[tuple, float] = {}
    for s, (_, p) in derivations(grammar, max_len).items():
        if len(s) >= length:
            want[s[:length]] = want.get(s[:length], 0.0) + p
    prefixes, log_pp = language.enumerate_prefixes(grammar, length)
    got = {tuple(c): float(np.exp(lp)) for c, lp in zip(prefixes, log_pp, strict=True)}
    assert set(got) == set(want)
    assert max(abs(got[c] - want[c]) for c in want) < 1e-12
    assert [tuple(c) for c in prefixes] == sorted(got)  # lexicographic order
    assert language.enumerate_prefixes(grammar, length, max_prefixes=len(want) - 1) is None


def test_completions_are_exact_samples_of_the_rest():
    """Completions of the prefix 'a' of FINITE: frequencies against P(s) / P(prefix) within
    4 standard errors, every completion a sentence's rest, and a cap that leaves some
    unfinished."""
    sent = {s: p for s, (_, p) in derivations(FINITE, FINITE_MAX_LEN).items()}
    starts = {s[1:]: p for s, p in sent.items() if s[:1] == (1,)}
    total = sum(starts.values())
    n = 1500
    ys = language.sample_completions(FINITE, [np.array([1])] * n, np.random.default_rng(3), 8)
    seen: dict[tuple, int] = {}
    for y in ys:
        seen[tuple(y)] = seen.get(tuple(y), 0) + 1
    assert set(seen) <= set(starts)
    for y, p in starts.items():
        q = p / total
        assert abs(seen.get(y, 0) / n - q) < 4 * np.sqrt(q * (1 - q) / n) + 1e-9, y
    capped = language.sample_completions(FINITE, [np.array([1])] * 200, np.random.default_rng(4), 1)
    assert any(y is None for y in capped) and all(y is None or len(y) <= 1 for y in capped)


def test_rejection_completions_have_the_same_law():
    """completions_by_rejection for the prefixes 'a' and 'b' of FINITE: frequencies against
    P(s) / P(prefix) within 4 standard errors; a prefix no sentence has is never drawn."""
    sent = {s: p for s, (_, p) in derivations(FINITE, FINITE_MAX_LEN).items()}
    n = 1500
    prefixes = [np.array([1])] * n + [np.array([2])] * n + [np.array([9])]
    ys, drawn = language.completions_by_rejection(
        FINITE, prefixes, np.random.default_rng(5), 8, batch=2000
    )
    assert drawn[:-1].all() and not drawn[-1] and ys[-1] is None
    for tok, part in ((1, ys[:n]), (2, ys[n : 2 * n])):
        starts = {s[1:]: p for s, p in sent.items() if s[:1] == (tok,)}
        total = sum(starts.values())
        seen: dict[tuple, int] = {}
        for y in part:
            seen[tuple(y)] = seen.get(tuple(y), 0) + 1
        assert set(seen) <= set(starts)
        for y, p in starts.items():
            q = p / total
            assert abs(seen.get(y, 0) / n - q) < 4 * np.sqrt(q * (1 - q) / n) + 1e-9, (tok, y)
