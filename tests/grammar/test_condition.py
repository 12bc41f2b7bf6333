"""The metadata-conditioned grammar against brute force: every derivation tree enumerated with its
probability, string and top-level rule choices; P(x | choices) and P(next | prefix, choices) by
summing trees, compared with the exact algorithms run on `condition(g, choices)`."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest

from cfglab.errors import GrammarError
from cfglab.exact import cyk, inside
from cfglab.grammar.builtin import random_cfg
from cfglab.grammar.cfg import Grammar
from cfglab.grammar.condition import choices_of, condition

# ambiguous and not layered: terminals at several depths, the same string from different trees
# (S -> A B and S -> C with C -> A B), a nonterminal below itself (B -> 'b' B)
MIXED = Grammar.from_text(
    """
    S -> A B [0.5] | C [0.3] | 'c' A [0.2]
    A -> 'a' [0.6] | 'a' 'b' [0.4]
    B -> 'b' [0.7] | 'b' B [0.3]
    C -> A B [0.8] | 'c' [0.2]
    """
)
LAYERED = random_cfg((1, 2, 2, 2), rules_per_nt=(2, 2), rule_len=(2, 3), seed=3)


def trees(g: Grammar, sym: int, depth: int, budget: int):
    """Every (probability, tokens, choices per depth from this node) derivable from sym with at
    most `budget` tokens; choices[d] lists the rule indices of the depth-d nodes, left to right."""
    if budget <= 0:  # no rule derives the empty string: every symbol takes a token
        return
    if g.is_terminal(sym):
        yield 1.0, (sym - g.n_nt + 1,), []
        return
    for j, ri in enumerate(g.rules_of[sym]):
        rule = g.rules[ri]
        for parts in _products(g, rule.rhs, depth + 1, budget):
            p, tokens, below = rule.prob, (), defaultdict(list)
            for q, t, ch in parts:
                p, tokens = p * q, tokens + t
                for d, idx in enumerate(ch):
                    below[d].extend(idx)
            yield p, tokens, [[j]] + [below[d] for d in sorted(below)]


def _products(g, rhs, depth, budget):
    if not rhs:
        yield []
        return
    for first in trees(g, rhs[0], depth, budget - (len(rhs) - 1)):
        for rest in _products(g, rhs[1:], depth, budget - len(first[1])):
            if len(first[1]) + sum(len(r[1]) for r in rest) <= budget:
                yield [first, *rest]


def brute(g: Grammar, depth: int, max_len: int):
    """{choices (top `depth` depths): ({string: P(string, choices)}, P(choices))} over all
    trees with at most max_len tokens."""
    out: dict = defaultdict(lambda: defaultdict(float))
    for p, tokens, ch in trees(g, 0, 0, max_len):
        key = tuple(tuple(c) for c in ch[:depth])
        out[key][tokens] += p
    return out


def prefix_mass(strings: dict, prefix: tuple) -> float:
    return sum(p for x, p in strings.items() if x[: len(prefix)] == prefix)


# LAYERED is finite (every tree enumerated: exact to rounding); MIXED is infinite, enumerated to
# 18 tokens, so prefix masses miss the tail beyond it (B -> 'b' B: < 0.3^11 ~ 2e-6)
@pytest.mark.parametrize(
    "g,depth,max_len,tol", [(LAYERED, 1, 30, 1e-9), (LAYERED, 2, 30, 1e-9), (MIXED, 1, 18, 1e-5)]
)
def test_conditioned_probabilities_equal_enumeration(g, depth, max_len, tol):
    table = brute(g, depth, max_len)
    assert len(table) > 1  # several metadata values to tell apart
    for key, strings in table.items():
        gc = condition(g, [list(c) for c in key])
        p_choices = math.prod(
            g.rules[g.rules_of[a][j]].prob for a, j in _nodes(g, key)
        )  # the chosen rules' product: the metadata's own probability
        xs = [np.array(x) for x in strings]
        got = np.exp(inside.log_prob(gc, xs))
        want = np.array([strings[x] / p_choices for x in strings])
        np.testing.assert_allclose(got, want, rtol=1e-9)  # whole strings: no tail missing
        # next-token rows: ratios of enumerated prefix masses (only complete for short prefixes)
        for x in xs[:20]:
            rows = inside.next_token_dist(gc, [x])[0]
            for k in range(min(len(x), 6) + 1):
                pre = tuple(x[:k])
                mass = prefix_mass(strings, pre)
                want_eos = strings.get(pre, 0.0) / mass
                assert rows[k, 0] == pytest.approx(want_eos, abs=tol)
                for t in range(1, g.n_t + 1):
                    assert rows[k, t] == pytest.approx(
                        prefix_mass(strings, (*pre, t)) / mass, abs=tol
                    )


def _nodes(g: Grammar, key):
    """(nonterminal, rule index) of every chosen node, breadth first."""
    frontier, out = [0], []
    for chosen in key:
        nxt = []
        for a, j in zip(frontier, chosen, strict=True):
            out.append((a, j))
            nxt += [s for s in g.rules[g.rules_of[a][j]].rhs if not g.is_terminal(s)]
        frontier = nxt
    return out


def test_choices_of_a_parse_is_the_metadata_that_conditions_it():
    """Round trip on every tree: the parse of a string under the conditioned grammar exists,
    and the choices read off a tree of g are the ones used to condition."""
    for _p, tokens, ch in itertools.islice(trees(LAYERED, 0, 0, 30), 200):
        key = [list(c) for c in ch[:2]]
        gc = condition(LAYERED, key)
        assert cyk.recognize(gc, [np.array(tokens)])[0]
    x = np.array(next(trees(LAYERED, 0, 0, 30))[1])
    (tree,) = cyk.parse(LAYERED, [x])
    assert condition(LAYERED, choices_of(LAYERED, tree, 2)) is not None
    assert cyk.recognize(condition(LAYERED, choices_of(LAYERED, tree, 2)), [x])[0]


def test_metadata_that_does_not_fit_the_grammar_is_refused():
    with pytest.raises(GrammarError, match="give 0..1"):
        condition(LAYERED, [[2]])
    with pytest.raises(GrammarError, match="leave 3 nonterminals: give 3"):
        condition(LAYERED, [[0], [0]])  # the root's first rule, 10 -> 8 8 8, has 3 children
    assert condition(LAYERED, []) is LAYERED
