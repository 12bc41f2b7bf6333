"""Inside-outside posteriors (cfglab.exact.posterior) against brute force: every parse tree of
every short sentence enumerated by a recursive split over the *original* rules (no normal form,
no chart), each token's ancestor posterior summed by hand; on a toy ambiguous layered grammar
with unary rules and on a toy implicit grammar (overlapping bags); plus an unambiguous cfg3
grammar (ceiling 1) and a Monte Carlo identity on an ambiguous one."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from cfglab.data.sampler import sample
from cfglab.errors import ExactError
from cfglab.exact import posterior
from cfglab.grammar import builtin
from cfglab.grammar.cfg import Grammar
from cfglab.grammar.implicit import make_implicit
from tests.exact.brute import derivations
from tests.exact.grammars import RECURSIVE

# levels: S | A B | C D | terminals; unary A -> D, B -> C; ambiguous ("a b" is C D or C(a b)...)
LAYERED = Grammar.from_text(
    """
    S -> A B [0.4] | B A [0.3] | A A [0.3]
    A -> C D [0.5] | D [0.2] | C C D [0.3]
    B -> D C [0.6] | C [0.4]
    C -> 'a' [0.5] | 'a' 'b' [0.3] | 'b' [0.2]
    D -> 'b' [0.6] | 'a' 'a' [0.4]
    """,
    name="toy-layered",
)
# the hidden terminals t1 = {1, 4}, t2 = {3, 4}: token 4 can be either (bags of seed 0)
IMPLICIT = make_implicit(
    Grammar.from_text(
        """
        S -> A B [0.5] | B A [0.3] | A A [0.2]
        A -> 'a' 'b' [0.6] | 'b' [0.4]
        B -> 'a' [0.7] | 'b' 'a' 'a' [0.3]
        """,
        name="toy-base",
    ),
    "overlap",
    4,
    seed=0,
)


def brute_ancestors(grammar: Grammar, x: tuple[int, ...]) -> list[np.ndarray]:
    """Per level, (n, K_l) P(ancestor | x) from every parse tree, enumerated recursively."""
    nt = grammar.n_nt

    @functools.cache
    def trees(sym: int, i: int, j: int) -> tuple:
        if grammar.is_terminal(sym):
            return ((1.0, ()),) if j == i + 1 and x[i] == sym - nt + 1 else ()
        out = []
        for ri in grammar.rules_of[sym]:
            rule = grammar.rules[ri]
            for p, nodes in splits(rule.rhs, i, j):
                out.append((rule.prob * p, ((sym, i, j), *nodes)))
        return tuple(out)

    @functools.cache
    def splits(rhs: tuple, i: int, j: int) -> tuple:
        if len(rhs) == 1:
            return trees(rhs[0], i, j)
        return tuple(
            (p1 * p2, n1 + n2)
            for m in range(i + 1, j)
            for p1, n1 in trees(rhs[0], i, m)
            for p2, n2 in splits(rhs[1:], m, j)
        )

    parses = trees(0, 0, len(x))
    total = sum(p for p, _ in parses)
    out = []
    for lev in grammar.levels:
        col = {a: k for k, a in enumerate(lev)}
        post = np.zeros((len(x), len(lev)))
        for p, nodes in parses:
            for a, i, j in nodes:
                if a in col:
                    post[i:j, col[a]] += p / total
        out.append(post)
    return out


@pytest.mark.parametrize("grammar,max_len", [(LAYERED, 6), (IMPLICIT, 6)])
def test_ancestor_posteriors_equal_brute_force(grammar, max_len):
    sentences = derivations(grammar, max_len)
    ambiguous = 0
    for x, (count, _) in sentences.items():
        got = posterior.ancestor_posteriors(grammar, np.array(x))
        want = brute_ancestors(grammar, x)
        assert len(got) == len(want) == len(grammar.levels)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and np.abs(g - w).max() < 1e-9, x
            assert np.abs(g.sum(axis=1) - 1).max() < 1e-9  # one ancestor per level
        ambiguous += count > 1 and any(((w > 1e-9) & (w < 1 - 1e-9)).any() for w in want)
    assert ambiguous >= 10  # the case discriminates: many strings with uncertain ancestors


@pytest.mark.parametrize("grammar,max_len", [(LAYERED, 5), (IMPLICIT, 5)])
def test_ceiling_is_the_mean_best_posterior(grammar, max_len):
    xs = [np.array(x) for x in derivations(grammar, max_len)]
    got = posterior.ancestor_ceiling(grammar, xs)
    best = [np.concatenate([brute_ancestors(grammar, tuple(x))[lev].max(axis=1) for x in xs])
            for lev in range(1, len(grammar.levels))]  # fmt: skip
    assert got["levels"] == list(range(1, len(grammar.levels)))
    assert got["n_tokens"] == sum(len(x) for x in xs)
    assert np.allclose(got["ceiling"], [b.mean() for b in best], atol=1e-12, rtol=0)
    assert min(got["ceiling"]) < 0.99  # ambiguity costs something


def test_node_posteriors_sum_to_the_expected_node_counts():
    """Each position's nodes at the deepest level (the hidden terminal: a one-token node)."""
    x = np.array([3, 3])  # token names '4' '4' (ids are dense: '1' '3' '4'): t2 t1, t1 t2, t2 t2
    nodes = posterior.node_posteriors(IMPLICIT, x)
    want = brute_ancestors(IMPLICIT, tuple(x))[-1]
    assert ((want > 0.01) & (want < 0.99)).any()  # the hidden terminal of a '4' is uncertain
    deepest = list(IMPLICIT.levels[-1])
    for k, a in enumerate(deepest):
        for t in range(len(x)):
            hit = (nodes["nt"] == a) & (nodes["start"] == t) & (nodes["end"] == t + 1)
            assert nodes["prob"][hit].sum() == pytest.approx(want[t, k], abs=1e-12)


def test_unambiguous_grammar_has_ceiling_one_and_the_true_labels():
    g = builtin.load("cfg3b")  # 0% ambiguity: every posterior is the sampler's tree
    batch = sample(g, 8, seed=4)
    assert posterior.ancestor_ceiling(g, batch.strings())["ceiling"] == [1.0] * 5
    x = batch.strings()[0]
    post = posterior.ancestor_posteriors(g, x)
    for lev in range(len(g.levels)):  # the sampler's labels: index within the level
        assert post[lev].max(axis=1).min() == 1.0
        assert post[lev].argmax(axis=1).tolist() == batch.ancestors[lev, : len(x)].tolist()


def test_posterior_of_the_true_label_matches_its_monte_carlo_identity():
    """For x ~ P, E[P(true ancestor | x)] = E[sum_a P(a | x)^2] (the true label is a draw from
    the posterior): on cfg3f (ambiguous) the two means agree within 4 standard errors."""
    g = builtin.load("cfg3f")
    batch = sample(g, 300, seed=9)
    for lev in (1, 2):
        d = []
        for s, x in enumerate(batch.strings()):
            p = posterior.ancestor_posteriors(g, x)[lev]
            true = batch.ancestors[lev, batch.offsets[s] : batch.offsets[s + 1]]  # level index
            d.append(np.mean(p[np.arange(len(x)), true] - (p**2).sum(axis=1)))
        d = np.array(d)
        assert abs(d.mean()) < 4 * d.std(ddof=1) / np.sqrt(len(d))


def test_non_sentences_and_unlayered_grammars_are_refused():
    with pytest.raises(ExactError, match="not a sentence"):
        posterior.ancestor_posteriors(LAYERED, np.array([2, 2, 2, 2, 2, 2, 2]))
    with pytest.raises(ExactError, match="not layered"):
        posterior.ancestor_ceiling(RECURSIVE, [np.array([1])])
