"""cyk: membership vs NLTK's chart parser and enumeration; parse counts, trees, first errors and
minimum substitutions vs brute force."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from cfglab.data.vocab import Vocab
from cfglab.errors import VocabError
from cfglab.exact import cyk
from cfglab.grammar.builtin import BUILTIN_GRAMMARS, load, random_cfg
from tests.exact.brute import (
    corruptions,
    derivations,
    first_error_brute,
    min_hamming,
    nltk_cfg,
    nltk_recognizes,
    sample_with_spans,
)
from tests.exact.grammars import (
    AMBIGUOUS,
    FINITE_GRAMMARS,
    HAND_WRITTEN,
    LEFT_RECURSIVE,
    RECURSIVE,
)
from tests.oracles import sample_recursive


def _sampled_and_corrupted(g, n_strings, n_corrupt, seed, max_len=None):
    rng = random.Random(seed)
    vocab = Vocab.from_grammar(g)
    strings = []
    while len(strings) < n_strings:
        x = vocab.encode(sample_recursive(g, rng))
        if max_len is None or len(x) <= max_len:
            strings.append(x)
    bad = [y for x in strings for y in corruptions(x, g.n_t, rng, n_corrupt)]
    return strings, bad


def _agree_with_nltk(g, strings):
    ours = cyk.recognize(g, strings)
    ng = nltk_cfg(g)
    vocab = Vocab.from_grammar(g)
    theirs = np.array([nltk_recognizes(ng, vocab.decode(x)) for x in strings])
    np.testing.assert_array_equal(ours, theirs)
    return ours


@pytest.mark.parametrize("name", list(BUILTIN_GRAMMARS))
def test_builtin_agrees_with_nltk(name):
    g = load(name)
    good, bad = _sampled_and_corrupted(g, 1, 3, seed=1)
    ours = _agree_with_nltk(g, good + bad)
    assert ours[: len(good)].all()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILTIN_GRAMMARS))
def test_builtin_agrees_with_nltk_many(name):
    g = load(name)
    good, bad = _sampled_and_corrupted(g, 15, 3, seed=2)
    ours = _agree_with_nltk(g, good + bad)
    assert ours[: len(good)].all()
    assert ours[len(good) :].mean() < 0.5  # most corruptions are rejected (not all: cfg3f)


RANDOM = {
    "paper-0": dict(seed=0),
    "paper-1": dict(seed=1, rules_per_nt=(3, 4)),
    "unary-0": dict(seed=0, sizes=(1, 3, 3, 3, 3), rules_per_nt=(2, 4), rule_len=(1, 3)),
    "unary-1": dict(seed=1, sizes=(1, 3, 4, 3, 2), rules_per_nt=(2, 4), rule_len=(1, 3)),
}


@pytest.mark.parametrize("name", list(RANDOM))
def test_random_cfg_agrees_with_nltk(name):
    g = random_cfg(**RANDOM[name])
    good, bad = _sampled_and_corrupted(g, 2, 3, seed=7, max_len=200)
    ours = _agree_with_nltk(g, good + bad)
    assert ours[: len(good)].all()


@pytest.mark.parametrize("name", list(HAND_WRITTEN))
def test_hand_written_agree_with_nltk_and_enumeration(name):
    """Every token string up to length 6 (7 with enumeration), for grammars with unary rules,
    left recursion and heavy ambiguity."""
    g = HAND_WRITTEN[name]
    ids = range(1, g.n_t + 1)
    all_x = [np.array(s) for n in range(1, 8) for s in itertools.product(ids, repeat=n)]
    ours = cyk.recognize(g, all_x)
    language = set(derivations(g, 7))
    np.testing.assert_array_equal(ours, [tuple(x) in language for x in all_x])
    short = [x for x in all_x if len(x) <= 5]
    _agree_with_nltk(g, short)
    # and sampled long strings with corruptions
    good, bad = _sampled_and_corrupted(g, 4, 3, seed=3, max_len=60)
    assert _agree_with_nltk(g, good + bad)[: len(good)].all()


@pytest.mark.parametrize("name", list(FINITE_GRAMMARS) + ["recursive", "ambiguous"])
def test_counts_and_min_substitutions_equal_enumeration(name):
    g, max_len = FINITE_GRAMMARS.get(name, (HAND_WRITTEN.get(name), 6))
    table = derivations(g, max_len)
    ids = range(1, g.n_t + 1)
    all_x = [s for n in range(1, min(max_len, 6) + 1) for s in itertools.product(ids, repeat=n)]
    counts = cyk.count_parses(g, [np.array(x) for x in all_x])
    assert counts == [table.get(x, (0, 0.0))[0] for x in all_x]
    assert max(counts) > 1  # the grammars are ambiguous: this tests counting, not membership
    subs = cyk.min_substitutions(g, [np.array(x) for x in all_x])
    np.testing.assert_array_equal(subs, [min_hamming(table, x) for x in all_x])
    if name != "ambiguous":  # there every string over {a, b} is a sentence
        assert subs.max() >= 1


def test_ambiguous_counts_are_exact_big_integers():
    """S -> S S | S S S | 'a' | 'b': a^60 has more parses than fit in 64 bits."""
    n = 60
    counts = cyk.count_parses(AMBIGUOUS, [np.ones(n, np.int64)])
    # plane trees with binary and ternary nodes over n leaves:
    # t(1) = 1, t(m) = sum_i t(i) t(m-i) + sum_{i,j} t(i) t(j) t(m-i-j)
    t = [0, 1] + [0] * n
    for m in range(2, n + 1):
        t[m] = sum(t[i] * t[m - i] for i in range(1, m)) + sum(
            t[i] * t[j] * t[m - i - j] for i in range(1, m) for j in range(1, m - i)
        )
    assert counts == [t[n]] and t[n] > 2**64


@pytest.mark.parametrize("name", list(FINITE_GRAMMARS))
def test_first_error_equals_enumeration(name):
    g, max_len = FINITE_GRAMMARS[name]
    table = derivations(g, max_len)
    ids = range(1, g.n_t + 1)
    all_x = [s for n in range(1, max_len + 2) for s in itertools.product(ids, repeat=n)][:3000]
    err = cyk.first_error(g, [np.array(x) for x in all_x])
    np.testing.assert_array_equal(err, [first_error_brute(table, x) for x in all_x])


def test_first_error_on_corrupted_cfg3f():
    g = load("cfg3f")
    good, bad = _sampled_and_corrupted(g, 3, 4, seed=4)
    assert (cyk.first_error(g, good) == -1).all()
    err = cyk.first_error(g, bad)
    ok = cyk.recognize(g, bad)
    for y, e, accepted in zip(bad, err, ok, strict=True):
        if e >= 0:  # the prefix through e is dead, so is the string; the prefix before is alive
            assert not accepted
            assert cyk.first_error(g, [y[:e]])[0] == -1
            assert cyk.first_error(g, [y[: e + 1]])[0] == e


@pytest.mark.parametrize("name", ["cfg3b", "cfg3f"])
def test_parse_is_a_derivation_of_the_string(name):
    """The returned tree uses only grammar rules and yields the string; for cfg3b (unambiguous)
    it is the sampled tree, so its labels are the sampler's."""
    g = load(name)
    rng = random.Random(5)
    rules = {(r.lhs, r.rhs) for r in g.rules}
    for _ in range(3):
        x, spans = sample_with_spans(g, rng)
        (tree,) = cyk.parse(g, [x])
        stack = [tree]
        while stack:
            node = stack.pop()
            rhs = tuple(c.nt if isinstance(c, cyk.Tree) else c + g.n_nt - 1 for c in node.children)
            assert (node.nt, rhs) in rules
            stack.extend(c for c in node.children if isinstance(c, cyk.Tree))
        assert _yield(tree) == list(x)
        if name == "cfg3b":
            np.testing.assert_array_equal(tree.spans(), spans)
            anc, sub, bnd = tree.labels(g)
            assert anc.shape == (len(g.levels), len(x))
            assert bnd[:, -1].all() and bnd[0].sum() == 1
            assert (np.diff(sub, axis=1) >= 0).all()


def _yield(tree):
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, cyk.Tree):
            stack.extend(reversed(node.children))
        else:
            out.append(node)
    return out


def test_parse_deep_recursive_tree_and_rejections():
    x = np.array([1, 2, 2] * 500)  # S -> S A | A: a 1,500-token string, a 1,000-deep tree
    (tree,) = cyk.parse(LEFT_RECURSIVE, [x])
    assert tree is not None and _yield(tree) == list(x)
    assert cyk.count_parses(LEFT_RECURSIVE, [x]) == [1]
    assert cyk.parse(RECURSIVE, [np.array([3])]) == [None]  # 'c' alone is not a sentence


def test_unknown_tokens_are_a_clear_error():
    g = load("cfg3f")
    with pytest.raises(VocabError, match="token id 4 at position 1"):
        cyk.recognize(g, [np.array([1, 4, 2])])
    with pytest.raises(VocabError, match="1-D array"):
        cyk.recognize(g, [np.array([[1, 2]])])


def test_empty_string_and_empty_batch():
    g = load("cfg3f")
    assert cyk.recognize(g, [np.array([], np.int64)]).tolist() == [False]
    assert cyk.recognize(g, []).shape == (0,)
    assert cyk.min_substitutions(g, [np.array([1, 2])]).tolist() == [-1]  # no 2-token sentence


@pytest.mark.parametrize("name", ["cfg3b", "cfg3f", "cfg3e2"])
def test_sampler_strings_are_accepted_and_cfg3b_labels_match(name):
    """Cross-check with the vectorised sampler: all its strings are sentences, and for cfg3b
    (unambiguous) the parse's labels equal the sampler's labels token for token."""
    from cfglab.data.sampler import sample

    g = load(name)
    batch = sample(g, 20, seed=3)
    strings = batch.strings()
    assert cyk.recognize(g, strings).all()
    if name == "cfg3b":
        for s, tree in enumerate(cyk.parse(g, strings)):
            a, b = batch.offsets[s], batch.offsets[s + 1]
            anc, sub, bnd = tree.labels(g)
            np.testing.assert_array_equal(anc, batch.ancestors[:, a:b])
            np.testing.assert_array_equal(sub, batch.subtree[:, a:b])
            np.testing.assert_array_equal(bnd, batch.is_boundary[:, a:b])
            np.testing.assert_array_equal(tree.spans(), batch.spans[s])


@pytest.mark.parametrize("depth", [8, 65, 130])
def test_unary_chains_beyond_int64_are_counted_exactly(depth):
    """A0 -> A1 | B1, Ai / Bi -> Ai+1 | Bi+1, A_depth -> 'a', B_depth -> 'b': 2^(depth-1) unary
    chains reach each leaf (2^64 would wrap to 0 in int64 and make 'a' a non-sentence). Closed
    forms: 'a' and 'b' are the sentences, each with probability 1/2 and 2^(depth-1) parses."""
    from cfglab.exact import inside
    from cfglab.grammar import Grammar

    lines = ["A0 -> A1 | B1"]
    for i in range(1, depth):
        lines += [f"A{i} -> A{i + 1} | B{i + 1}", f"B{i} -> A{i + 1} | B{i + 1}"]
    lines += [f"A{depth} -> 'a'", f"B{depth} -> 'b'"]
    g = Grammar.from_text("\n".join(lines) + "\n")
    vocab = Vocab.from_grammar(g)
    strings = [vocab.encode(["a"]), vocab.encode(["b"]), vocab.encode(["a", "b"])]
    assert cyk.recognize(g, strings).tolist() == [True, True, False]
    assert cyk.count_parses(g, strings) == [2 ** (depth - 1)] * 2 + [0]
    assert np.allclose(np.exp(inside.log_prob(g, strings[:2])), [0.5, 0.5])
