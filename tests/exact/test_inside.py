"""inside: string, prefix and next-token probabilities vs enumeration, closed forms and Monte
Carlo; no underflow on 2,000-token strings."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from cfglab.data.vocab import Vocab
from cfglab.errors import VocabError
from cfglab.exact import cyk, inside, sweep
from cfglab.grammar.builtin import load
from cfglab.grammar.cfg import Grammar
from tests.exact.brute import corruptions, derivations
from tests.exact.grammars import FINITE_GRAMMARS, HAND_WRITTEN, LEFT_RECURSIVE, RECURSIVE
from tests.oracles import sample_recursive

ENUMERATED = {name: (g, 6) for name, g in HAND_WRITTEN.items()} | FINITE_GRAMMARS


@pytest.mark.parametrize("name", list(ENUMERATED))
def test_log_prob_equals_enumeration(name):
    """Every token string up to the enumeration length: exact to 1e-12 relative, -inf outside
    (enumeration is exact for strings no longer than its bound, recursive grammars included)."""
    g, max_len = ENUMERATED[name]
    table = derivations(g, max_len)
    ids = range(1, g.n_t + 1)
    all_x = [s for n in range(1, min(max_len, 7) + 1) for s in itertools.product(ids, repeat=n)]
    lp = inside.log_prob(g, [np.array(x) for x in all_x])
    for x, v in zip(all_x, lp, strict=True):
        if x in table:
            assert math.exp(v) == pytest.approx(table[x][1], rel=1e-12, abs=0)
        else:
            assert v == -np.inf


@pytest.mark.parametrize("name", list(FINITE_GRAMMARS))
def test_prefix_probs_and_next_token_equal_enumeration(name):
    """Finite languages: P(prefix) and P(next | prefix) summed over every sentence, to 1e-12."""
    g, max_len = FINITE_GRAMMARS[name]
    table = {x: p for x, (_, p) in derivations(g, max_len).items()}
    prefix_p = defaultdict(float)
    next_p = defaultdict(lambda: np.zeros(g.n_t + 1))
    for x, p in table.items():
        for k in range(len(x) + 1):
            prefix_p[x[:k]] += p
            next_p[x[:k]][x[k] if k < len(x) else 0] += p
    strings = list(table) + [x[:-1] + (t,) for x in table for t in range(1, g.n_t + 1)]
    lpp = inside.log_prefix_prob(g, [np.array(x) for x in strings])
    dist = inside.next_token_dist(g, [np.array(x) for x in strings])
    for x, lp, rows in zip(strings, lpp, dist, strict=True):
        for k in range(len(x) + 1):
            want = prefix_p.get(x[:k], 0.0)
            if want == 0.0:
                assert lp[k] == -np.inf
                assert np.isnan(rows[k]).all()
                continue
            assert math.exp(lp[k]) == pytest.approx(want, rel=1e-12, abs=0)
            np.testing.assert_allclose(rows[k], next_p[x[:k]] / want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["cfg3f", "cfg3k", "cfg3e1"])
def test_next_token_rows_sum_to_one(name):
    g = load(name)
    rng = random.Random(11)
    vocab = Vocab.from_grammar(g)
    good = [vocab.encode(sample_recursive(g, rng)) for _ in range(2)]
    bad = [y for x in good for y in corruptions(x, g.n_t, rng, 3)]
    dist = inside.next_token_dist(g, good + bad)
    err = cyk.first_error(g, good + bad)
    for x, rows, e in zip(good + bad, dist, err, strict=True):
        assert rows.shape == (len(x) + 1, g.n_t + 1)
        last = len(x) if e == -1 else e
        np.testing.assert_allclose(rows[: last + 1].sum(axis=1), 1.0, rtol=0, atol=1e-12)
        assert (rows[: last + 1] >= 0).all() and np.isnan(rows[last + 1 :]).all()
        assert rows[0, 0] == 0.0  # no empty sentence
        # the string's own next tokens have positive probability up to the first error
        assert (rows[np.arange(last), x[:last]] > 0).all()
        if e >= 0:
            assert rows[e, x[e]] == 0.0
    lp = inside.log_prob(g, good)
    lpp = inside.log_prefix_prob(g, good)
    for x, v, pp, rows in zip(good, lp, lpp, dist[: len(good)], strict=True):
        # chain rule: log P(x) = sum_k log P(x_k | x_<k) + log P(EOS | x)
        chain = np.log(rows[np.arange(len(x)), x]).sum() + np.log(rows[-1, 0])
        assert chain == pytest.approx(v, rel=1e-12)
        assert pp[-1] + np.log(rows[-1, 0]) == pytest.approx(v, rel=1e-12)


@pytest.mark.parametrize("name", ["cfg3f", "recursive", "ambiguous"])
def test_log_prob_and_next_is_log_prob_and_next_token_dist(name, monkeypatch):
    """One sweep per string gives what the two functions give, bit for bit, also when strings
    run in many compiled calls (a tiny work budget) or are rejected, blank or dead early."""
    g = load(name) if name.startswith("cfg") else HAND_WRITTEN[name]
    rng = random.Random(5)
    vocab = Vocab.from_grammar(g)
    good = [vocab.encode(sample_recursive(g, rng))[:300] for _ in range(4)]
    strings = good + [y for x in good for y in corruptions(x, g.n_t, rng, 2)]
    strings += [np.zeros(0, np.int64), good[0][:1]]
    want_lp, want_rows = inside.log_prob(g, strings), inside.next_token_dist(g, strings)
    for budget in (None, 50):
        if budget:
            monkeypatch.setattr(sweep, "WORK_PER_CALL", budget)
        got = list(inside.log_prob_and_next(g, strings))
        np.testing.assert_array_equal([lp for lp, _ in got], want_lp)
        for (_, rows), want in zip(got, want_rows, strict=True):
            np.testing.assert_array_equal(rows, want)


def _monte_carlo_check(g, n_samples, max_prefix, seed, min_count=400):
    """Next-token frequencies after sampled prefixes agree with the exact distribution within
    5 standard errors (plus a 1/count allowance)."""
    rng = random.Random(seed)
    vocab = Vocab.from_grammar(g)
    samples = [tuple(vocab.encode(sample_recursive(g, rng))) for _ in range(n_samples)]
    counts: dict[tuple, Counter] = defaultdict(Counter)
    for x in samples:
        for k in range(min(len(x), max_prefix) + 1):
            counts[x[:k]][x[k] if k < len(x) else 0] += 1
    prefixes = [p for p, c in counts.items() if sum(c.values()) >= min_count]
    assert len(prefixes) >= 4
    dist = inside.next_token_dist(g, [np.array(p, dtype=np.int64) for p in prefixes])
    for p, rows in zip(prefixes, dist, strict=True):
        m = sum(counts[p].values())
        freq = np.array([counts[p][t] for t in range(g.n_t + 1)]) / m
        exact = rows[len(p)]
        sigma = np.sqrt(exact * (1 - exact) / m)
        assert (np.abs(freq - exact) <= 5 * sigma + 1.0 / m).all(), (p, freq, exact)
    return len(prefixes)


def test_monte_carlo_next_token_recursive():
    assert _monte_carlo_check(RECURSIVE, 20_000, 3, seed=0) >= 10


def test_monte_carlo_next_token_cfg3f():
    assert _monte_carlo_check(load("cfg3f"), 2_000, 4, seed=1, min_count=200) >= 10


def test_2000_token_string_keeps_precision():
    """S -> S A [0.6] | A [0.4]; A -> 'a' [0.7] | 'b' 'b' [0.3]: P(x) = 0.6^(m-1) 0.4 0.7^na 0.3^nb
    for m = na + nb units. A 2,000-token string has P ~ e^-1300, far below float64's range."""
    rng = random.Random(3)
    units = []
    while sum(len(u) for u in units) < 2000:
        units.append([1] if rng.random() < 0.7 else [2, 2])
    x = np.array([t for u in units for t in u][:2000])
    if x[-1] == 2 and (x == 2).sum() % 2:  # do not end inside a 'b b' unit
        x = np.append(x[:-1], 1)
    na = int((x == 1).sum())
    nb = int((x == 2).sum()) // 2
    m = na + nb
    want = (m - 1) * math.log(0.6) + math.log(0.4) + na * math.log(0.7) + nb * math.log(0.3)
    assert want < -1000
    (got,) = inside.log_prob(LEFT_RECURSIVE, [x])
    assert got == pytest.approx(want, rel=1e-12)
    (rows,) = inside.next_token_dist(LEFT_RECURSIVE, [x])
    (lpp,) = inside.log_prefix_prob(LEFT_RECURSIVE, [x])
    # closed-form rows: inside a 'b b' unit the next token is 'b'; otherwise EOS 0.4, a 0.42,
    # b 0.18 (row 0: a 0.7, b 0.3)
    pos, mid = 0, np.zeros(len(x) + 1, bool)
    for u in units:
        if pos + len(u) > len(x):
            break
        if len(u) == 2:
            mid[pos + 1] = True
        pos += len(u)
    want_rows = np.tile([0.4, 0.42, 0.18], (len(x) + 1, 1))
    want_rows[0] = [0.0, 0.7, 0.3]
    want_rows[mid] = [0.0, 0.0, 1.0]
    np.testing.assert_allclose(rows, want_rows, rtol=1e-12, atol=1e-15)
    assert lpp[-1] == pytest.approx(want - math.log(0.4), rel=1e-12)


def test_long_ambiguous_string_matches_catalan_closed_form():
    """S -> S S [0.4] | 'a' [0.6]: P(a^n) = Catalan(n-1) 0.4^(n-1) 0.6^n (10^177 parses)."""
    g = Grammar.from_text("S -> S S [0.4] | 'a' [0.6]")
    n = 300
    log_catalan = math.lgamma(2 * n - 1) - math.lgamma(n + 1) - math.lgamma(n)
    want = log_catalan + (n - 1) * math.log(0.4) + n * math.log(0.6)
    (got,) = inside.log_prob(g, [np.ones(n, np.int64)])
    assert got == pytest.approx(want, rel=1e-12)
    m = 100  # exact counts are Python big integers: kept short
    assert cyk.count_parses(g, [np.ones(m, np.int64)]) == [math.comb(2 * m - 2, m - 1) // m]


def test_non_sentences_and_bad_tokens():
    g = load("cfg3f")
    assert inside.log_prob(g, [np.array([1, 2, 3])]).tolist() == [-np.inf]
    with pytest.raises(VocabError, match="token id 0"):
        inside.next_token_dist(g, [np.array([1, 0])])
    (rows,) = inside.next_token_dist(g, [np.array([], np.int64)])
    assert rows.shape == (1, 4) and rows[0].sum() == pytest.approx(1.0)


def test_a_probability_below_the_float_range_is_an_error_not_zero():
    """A left-corner chain of 1,100 levels at 1/2 each (P = 2^-1100 < 1e-308): recognition still
    works, and exact probabilities refuse with an ExactError instead of returning -inf for a
    sentence."""
    from cfglab.errors import ExactError
    from cfglab.grammar import Grammar

    depth = 1100
    lines = ["%start A0"] + [f"A{i} -> A{i + 1} 'c' [0.5] | 'b' [0.5]" for i in range(depth)]
    g = Grammar.from_text("\n".join(lines + [f"A{depth} -> 'a' [1.0]"]) + "\n")
    vocab = Vocab.from_grammar(g)
    deep = vocab.encode(["a"] + ["c"] * depth)
    assert cyk.recognize(g, [deep]).tolist() == [True]
    with pytest.raises(ExactError, match="below the smallest floating-point number"):
        inside.log_prob(g, [deep])
