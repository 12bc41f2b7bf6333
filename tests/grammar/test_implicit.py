"""Implicit CFGs: string probabilities by enumeration over hidden readings, the authors' bag
rules, layering and labels, NLTK syntax, the CLI and its errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cfglab.cli import main
from cfglab.data.sampler import sample
from cfglab.errors import ConfigError
from cfglab.exact import inside
from cfglab.grammar import Grammar, implicit_bags, load, make_implicit, random_cfg
from tests.oracles import nltk_accepts, nltk_grammar

# a tiny layered, ambiguous grammar with a finite language (strings of 2..4 tokens), 3 terminals
TINY = Grammar.from_text(
    """
    S -> A B | B A
    A -> 'x' | 'y' 'z' | 'x' 'x'
    B -> 'z' | 'x' 'x'
    """
)


def expected_log_prob(base: Grammar, implicit: Grammar, tokens: tuple[int, ...]) -> float:
    """The oracle: sum over every hidden terminal string that can emit `tokens` of
    P_base(terminal string) * product of the emission probabilities (read off the rules of
    the hidden nonterminals, which are independent of how make_implicit built them)."""
    emit: dict[int, dict[int, float]] = {}  # token id -> {base terminal id: probability}
    for j in range(base.n_t):
        a = base.n_nt + j  # the hidden nonterminal of base terminal j (id j + 1)
        for ri in implicit.rules_of[a]:
            r = implicit.rules[ri]
            emit.setdefault(r.rhs[0] - implicit.n_nt + 1, {})[j + 1] = r.prob
    readings = [emit.get(v, {}) for v in tokens]
    total = 0.0
    for hidden in itertools.product(*(list(r) for r in readings)):
        p_base = math.exp(inside.log_prob(base, [np.array(hidden)])[0])
        total += p_base * math.prod(r[h] for r, h in zip(readings, hidden, strict=True))
    return math.log(total) if total > 0 else -math.inf


@pytest.mark.parametrize(
    "mode,tokens,weights,seed",
    [("disjoint", 7, "uniform", 0), ("disjoint", 5, "nu1", 0), ("overlap", 6, "nu1", 3)],
)
def test_string_probabilities_by_enumeration(mode, tokens, weights, seed):
    g = make_implicit(TINY, mode, tokens, weights, seed)
    if mode == "overlap":  # the case of interest: some token has two hidden readings
        bags = implicit_bags(TINY.n_t, mode, tokens, seed)
        assert len({v for b in bags for v in b}) < sum(len(b) for b in bags)
    ids = range(1, g.n_t + 1)
    strings = [s for n in range(1, 5) for s in itertools.product(ids, repeat=n)]
    got = inside.log_prob(g, [np.array(s) for s in strings])
    mass = 0.0
    for s, lp in zip(strings, got, strict=True):
        want = expected_log_prob(TINY, g, s)
        if want == -math.inf:
            assert lp == -math.inf, s
        else:
            assert lp == pytest.approx(want, abs=1e-12), s
            mass += math.exp(lp)
    assert mass == pytest.approx(1.0, abs=1e-12)  # the language has no string over 4 tokens


def test_disjoint_bags_are_the_authors_round_robin():
    bags = implicit_bags(3, "disjoint", 10)
    assert bags == [[1, 4, 7, 10], [2, 5, 8], [3, 6, 9]]
    for v in range(1, 11):  # the authors' 0-based rule: token v+1 -> terminal v mod |T|
        assert v in bags[(v - 1) % 3]


def test_overlap_bags_are_seeded_distinct_draws():
    n_t, tokens = 3, 60
    draws = tokens * 3 // (2 * n_t)  # 30 draws per terminal
    a = implicit_bags(n_t, "overlap", tokens, seed=5)
    assert a == implicit_bags(n_t, "overlap", tokens, seed=5)
    assert a != implicit_bags(n_t, "overlap", tokens, seed=6)
    sizes = [len(b) for b in a]
    for b in a:
        assert b == sorted(set(b)) and 1 <= b[0] and b[-1] <= tokens
    # E[distinct values of m draws from V] = V (1 - (1 - 1/V)^m): 30 draws from 60 -> 23.6
    expected = tokens * (1 - (1 - 1 / tokens) ** draws)
    many = [len(b) for s in range(200) for b in implicit_bags(n_t, "overlap", tokens, seed=s)]
    assert abs(np.mean(many) - expected) < 0.3 and max(sizes) <= draws


def test_structure_levels_and_labels_read_the_hidden_terminal():
    base = load("cfg3b")
    g = make_implicit(base, "disjoint", 9, seed=0)
    assert g.levels is not None and len(g.levels) == len(base.levels) + 1
    assert [g.nonterminals[a] for a in g.levels[-1]] == ["t1", "t2", "t3"]
    assert g.terminals == tuple(str(v) for v in range(1, 10))
    assert Grammar.from_text(g.to_text()) == g
    b = sample(g, 50, seed=1)
    # disjoint: the hidden terminal of token v is (v - 1) mod 3, the deepest ancestor's index
    assert np.array_equal(b.ancestors[-1], (b.ids - 1) % 3)
    assert np.all(b.is_boundary[-1])  # every hidden terminal's subtree is one token
    # the base labels are the implicit ones without the last level
    hidden = base.n_nt + b.ancestors[-1]  # base terminal symbol of each token
    assert inside.log_prob(base, [hidden[: b.offsets[1]] - base.n_nt + 1])[0] > -np.inf


def test_unused_tokens_are_dropped_and_names_never_clash():
    g = make_implicit(TINY, "overlap", 12, seed=1)
    used = sorted({v for b in implicit_bags(3, "overlap", 12, seed=1) for v in b})
    assert len(used) < 12  # this seed leaves some tokens out of every bag
    assert g.terminals == tuple(str(v) for v in used)
    clash = Grammar.from_text("S -> t1 'a' | 'b'\nt1 -> 'a' 'b'")
    h = make_implicit(clash, "disjoint", 2)
    assert set(h.nonterminals) == {"S", "t1", "tt1", "tt2"}


def test_nltk_reads_and_accepts_the_written_grammar():
    import nltk

    g = make_implicit(random_cfg(sizes=(1, 3, 3, 3), seed=0), "overlap", 8, seed=2)
    ng = nltk_grammar(g)
    for s in sample(g, 5, seed=0, labels=False).strings():
        assert nltk_accepts(ng, [g.terminals[i - 1] for i in s])
    weighted = make_implicit(TINY, "disjoint", 6, "nu1")
    pcfg = nltk.PCFG.fromstring(weighted.to_text())
    ours = {
        (weighted.nonterminals[r.lhs], tuple(weighted.symbol_name(x) for x in r.rhs), r.prob)
        for r in weighted.rules
    }
    assert {(str(p.lhs()), tuple(map(str, p.rhs())), p.prob()) for p in pcfg.productions()} == ours


def test_bad_values_name_the_fix():
    with pytest.raises(ConfigError, match="choose from disjoint, overlap"):
        make_implicit(TINY, "mixed", 9)
    with pytest.raises(ConfigError, match="choose from uniform, nu1"):
        make_implicit(TINY, "disjoint", 9, weights="NU2")
    with pytest.raises(ConfigError, match=">= the grammar's 3 terminals"):
        make_implicit(TINY, "disjoint", 2)


def test_cli_writes_the_grammar(tmp_path, capsys):
    out = tmp_path / "imp.cfg"
    argv = ["grammar", "implicit", "cfg3b", "--mode", "overlap", "--tokens", "12"]
    assert main([*argv, "--weights", "nu1", "--seed", "4", "-o", str(out)]) == 0
    assert load(str(out)) == make_implicit(load("cfg3b"), "overlap", 12, "nu1", 4)
    assert main(["grammar", "check", str(out)]) == 0
    assert main(["grammar", "implicit", "cfg3b", "--tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfglab: error: ") and "terminals" in err
