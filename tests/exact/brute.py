"""Slow, obviously-correct oracles for the exact stage's tests (enumeration, NLTK, samplers).

Kept beside the tests (tests/oracles.py holds the shared ones): derivation counting, Hamming
distance to the language, prefix viability and a tree-recording sampler.
"""

from __future__ import annotations

import random
import re

import numpy as np

from cfglab.grammar.cfg import Grammar


def derivations(grammar: Grammar, max_len: int) -> dict[tuple[int, ...], tuple[int, float]]:
    """Every sentence of length <= max_len as token ids -> (number of derivation trees, total
    probability), by expanding leftmost derivations (no epsilon rules: forms never shrink)."""
    out: dict[tuple[int, ...], tuple[int, float]] = {}
    stack = [((0,), 1.0)]
    nt = grammar.n_nt
    while stack:
        form, p = stack.pop()
        if len(form) > max_len:
            continue
        i = next((k for k, s in enumerate(form) if s < nt), None)
        if i is None:
            key = tuple(s - nt + 1 for s in form)
            c, q = out.get(key, (0, 0.0))
            out[key] = (c + 1, q + p)
            continue
        for ri in grammar.rules_of[form[i]]:
            r = grammar.rules[ri]
            stack.append((form[:i] + r.rhs + form[i + 1 :], p * r.prob))
    return out


def min_hamming(sentences, x: tuple[int, ...]) -> int:
    """Fewest substitutions turning x into one of `sentences` (-1 if none has its length)."""
    best = [sum(a != b for a, b in zip(s, x, strict=True)) for s in sentences if len(s) == len(x)]
    return min(best) if best else -1


def first_error_brute(sentences, x: tuple[int, ...]) -> int:
    """First k with x[:k+1] a prefix of no sentence (exact when `sentences` is the whole,
    finite language), else -1."""
    prefixes = {s[:k] for s in sentences for k in range(len(s) + 1)}
    for k in range(len(x)):
        if x[: k + 1] not in prefixes:
            return k
    return -1


def nltk_cfg(grammar: Grammar):
    """The grammar's language as an nltk.CFG (weights dropped: NLTK's CFG reader has none)."""
    import nltk

    return nltk.CFG.fromstring(re.sub(r"\[[^\]]*\]", "", grammar.to_text()))


def nltk_recognizes(nltk_cfg, tokens: list[str]) -> bool:
    """Membership by NLTK's chart parser, read off the chart (no tree extraction, which NLTK
    refuses for long, highly ambiguous strings)."""
    import nltk

    try:
        nltk_cfg.check_coverage(tokens)
    except ValueError:
        return False
    chart = nltk.ChartParser(nltk_cfg, max_time=None).chart_parse(tokens)
    return any(
        True for _ in chart.select(start=0, end=len(tokens), is_complete=True, lhs=nltk_cfg.start())
    )


def sample_with_spans(grammar: Grammar, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """(token ids (n,), spans (K, 3) of (nt, start, end) in pre-order) of one derivation."""
    nt = grammar.n_nt
    tokens: list[int] = []
    spans: list[list[int]] = []

    def expand(sym: int) -> None:
        if sym >= nt:
            tokens.append(sym - nt + 1)
            return
        row = [sym, len(tokens), -1]
        spans.append(row)
        rules = grammar.rules_of[sym]
        ri = rng.choices(rules, weights=[grammar.rules[r].prob for r in rules])[0]
        for s in grammar.rules[ri].rhs:
            expand(s)
        row[2] = len(tokens)

    expand(0)
    return np.array(tokens, dtype=np.int64), np.array(spans, dtype=np.int64).reshape(-1, 3)


def corruptions(x: np.ndarray, n_t: int, rng: random.Random, k: int) -> list[np.ndarray]:
    """k single-token corruptions of x: one position set to a different terminal."""
    out = []
    for _ in range(k):
        y = x.copy()
        pos = rng.randrange(len(y))
        y[pos] = rng.choice([t for t in range(1, n_t + 1) if t != y[pos]])
        out.append(y)
    return out
