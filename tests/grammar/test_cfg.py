"""Grammar text syntax, validation and derived quantities, checked against NLTK and sampling."""

import random
import warnings
from pathlib import Path

import nltk
import numpy as np
import pytest

from cfglab.data.sampler import sample
from cfglab.errors import GrammarError, GrammarWarning
from cfglab.grammar import BUILTIN_GRAMMARS, Grammar, load, random_cfg
from tests.oracles import sample_recursive

BAD = sorted((Path(__file__).parent / "bad").glob("*.cfg"))

PCFG_TEXT = """
# a small ambiguous, recursive PCFG with a unary rule
%start S
S -> NP VP [0.9] | VP [0.1]
NP -> 'the' N [0.6] | NP PP [0.4]
PP -> 'with' NP [1.0]
VP -> 'sees' NP [0.7] | VP PP [0.3]
N -> 'cat' [0.5] | 'dog' [0.25] | "it's" [0.25]
"""


def nltk_productions(grammar) -> set:
    return {
        (
            str(p.lhs()),
            tuple(str(s) for s in p.rhs()),
            round(p.prob(), 12) if hasattr(p, "prob") else None,
        )
        for p in grammar.productions()
    }


def cfglab_productions(g: Grammar, with_prob: bool = True) -> set:
    return {
        (
            g.nonterminals[r.lhs],
            tuple(g.symbol_name(s) for s in r.rhs),
            round(r.prob, 12) if with_prob else None,
        )
        for r in g.rules
    }


def test_reads_pcfg_like_nltk():
    g = Grammar.from_text(PCFG_TEXT)
    assert cfglab_productions(g) == nltk_productions(nltk.PCFG.fromstring(PCFG_TEXT))
    assert g.nonterminals[0] == "S"
    assert set(g.terminals) == {"the", "with", "sees", "cat", "dog", "it's"}


def test_unweighted_rules_are_uniform():
    g = Grammar.from_text("S -> A B | 'c' | A\nA -> 'a'\nB -> 'b' | 'c'")
    assert [r.prob for r in g.rules if r.lhs == 0] == [1 / 3] * 3
    assert cfglab_productions(g, with_prob=False) == {
        (lhs, rhs, None)
        for lhs, rhs, _ in nltk_productions(
            nltk.CFG.fromstring("S -> A B | 'c' | A\nA -> 'a'\nB -> 'b' | 'c'")
        )
    }


@pytest.mark.filterwarnings("ignore::cfglab.errors.GrammarWarning")  # cfg3e1's dead rules
@pytest.mark.parametrize("name", BUILTIN_GRAMMARS)
def test_builtin_text_round_trip_is_exact_and_nltk_reads_it(name):
    g = load(name)
    text = g.to_text()
    again = Grammar.from_text(text, name=name)
    assert again == g and again.to_text() == text
    assert cfglab_productions(g, with_prob=False) == {
        (lhs, rhs, None) for lhs, rhs, _ in nltk_productions(nltk.CFG.fromstring(text))
    }


def test_weighted_round_trip_is_exact():
    g = Grammar.from_text("S -> A [0.1] | 'b' [0.7] | 'c' [0.2]\nA -> 'a' [1.0]")
    text = g.to_text()
    assert "[0.1]" in text and Grammar.from_text(text) == g
    assert cfglab_productions(g) == nltk_productions(nltk.PCFG.fromstring(text))


def test_comments_quotes_and_start_directive():
    g = Grammar.from_text("""
        # leading comment
        X -> 'a#b' Y   # trailing comment
        %start Y
        Y -> "q'r" | X 'z'
    """)
    assert g.nonterminals == ("Y", "X")
    assert set(g.terminals) == {"a#b", "q'r", "z"}
    assert Grammar.from_text(g.to_text()) == g


def test_terminal_order_is_numeric_then_names():
    g = Grammar.from_text("S -> '10' '2' 'b' 'a' '1'")
    assert g.terminals == ("1", "2", "10", "a", "b")


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_malformed_grammar_raises_one_clear_error(path):
    text = path.read_bytes().decode("utf-8", errors="replace")
    expected = text.splitlines()[0].removeprefix("# expect: ") if text.startswith("#") else None
    with pytest.raises(GrammarError) as info:
        load(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    if expected and "expect:" in text.splitlines()[0]:
        assert expected in message


def test_at_least_ten_kinds_of_malformed_fixtures():
    assert len(BAD) >= 10


def test_unreachable_nonterminal_is_a_warning_not_an_error():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = Grammar.from_text("S -> 'a' | 'b'\nU -> 'c'")
    assert any(issubclass(w.category, GrammarWarning) and "'U'" in str(w.message) for w in caught)
    assert g.n_nt == 2


def test_unary_rules_are_supported():
    g = Grammar.from_text("S -> A | 'x' S\nA -> B\nB -> 'b'")
    assert g.levels is None
    assert g.mean_length == pytest.approx(2.0)  # E = 1/2 * 1 + 1/2 * (1 + E)


def test_critical_recursion_is_rejected():
    with pytest.raises(GrammarError, match="infinite"):
        Grammar.from_text("S -> S S [0.5] | 'a' [0.5]")


@pytest.mark.parametrize("name", ["cfg3b", "cfg3f", "cfg3e2"])
def test_mean_length_matches_sampling(name):
    g = load(name)
    rng = random.Random(0)
    lengths = np.array([len(sample_recursive(g, rng)) for _ in range(400)])
    stderr = lengths.std() / np.sqrt(len(lengths))
    assert abs(lengths.mean() - g.mean_length) < 4 * stderr


def test_levels_of_layered_and_general_grammars():
    g = load("cfg3f")
    assert [len(level) for level in g.levels] == [1, 3, 3, 3, 3, 3]
    assert g.levels[0] == (0,)
    for lev, nts in enumerate(g.levels):
        for a in nts:
            for ri in g.rules_of[a]:
                rhs = g.rules[ri].rhs
                if lev + 1 < len(g.levels):
                    assert all(s in g.levels[lev + 1] for s in rhs)
                else:
                    assert all(g.is_terminal(s) for s in rhs)
    assert Grammar.from_text(PCFG_TEXT).levels is None
    assert Grammar.from_text("S -> A 'b'\nA -> 'a'").levels is None  # terminal one level early


def test_length_variance_closed_forms():
    # geometric: L = 1 + Geometric, mean 1/(1-p), variance p/(1-p)^2
    g = Grammar.from_text("S -> 'a' S [0.75] | 'a' [0.25]")
    assert g.mean_length == pytest.approx(4.0)
    assert g.length_sd**2 == pytest.approx(0.75 / 0.25**2)
    # binary branching: S -> S S [p] | 'a': leaves of a subcritical Galton-Watson tree
    p = 0.3
    g = Grammar.from_text(f"S -> S S [{p}] | 'a' [{1 - p}]")
    mean = (1 - p) / (1 - 2 * p)
    assert g.mean_length == pytest.approx(mean)
    # Var = E[Var(L|rule)] + Var(E[L|rule]) = p (2 Var + mean^2) + (1-p) (1 - mean)^2
    var = (p * mean**2 + (1 - p) * (1 - mean) ** 2) / (1 - 2 * p)
    assert g.length_sd**2 == pytest.approx(var)


@pytest.mark.parametrize("name", ["cfg3f", "cfg3b"])
def test_length_sd_matches_sampling(name):
    g = load(name)
    lengths = sample(g, 4000, seed=1, labels=False).lengths
    assert lengths.std() == pytest.approx(g.length_sd, rel=0.08)


def test_deep_and_wide_grammars_read_in_linear_time():
    """300 levels (mean length ~1e120: finite, reported) and one line of 120k alternatives
    (once 307 s: `not in` on lists) both read in seconds."""
    import time

    deep = random_cfg(sizes=(1, *[3] * 299), seed=0)
    g = Grammar.from_text(deep.to_text())
    assert 1e100 < g.mean_length < float("inf") and g.length_sd > 0
    wide = "S -> " + " | ".join(f"'t{i}'" for i in range(120_000)) + "\n"
    t0 = time.perf_counter()
    g = Grammar.from_text(wide)
    assert g.n_t == 120_000 and g.mean_length == pytest.approx(1.0)
    assert time.perf_counter() - t0 < 30  # ~1-2 s; quadratic reading took minutes


def test_terminals_the_strings_format_cannot_carry_are_rejected():
    for text, phrase in [
        ("S -> 'a b'", "whitespace"),
        ("S -> 'a\u00a0b'", "whitespace"),
        ("S -> ''", "empty"),
        ("S -> '<eos>' 'a'", "special token"),
        ("S -> 'a' | '<pad>'", "special token"),
    ]:
        with pytest.raises(GrammarError, match=phrase):
            Grammar.from_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "S -> A 'x'\nA -> '01'\nS -> '1' 'y'\n",  # '01' appears before '1'
        "S -> '1' 'y' | A 'x'\nA -> '01'\n",  # '1' appears before '01'
        "S -> '00' '0' | '007' '7'\n",
    ],
)
def test_terminals_of_one_value_get_ids_by_their_text(text):
    """'1' and '01' (equal as numbers) are ordered by their text, not by where each first
    appears: the rewritten text (a run's grammar.cfg) reads back with the same ids."""
    g = Grammar.from_text(text)
    assert Grammar.from_text(g.to_text()) == g
    numbers = [t for t in g.terminals if t.isdecimal()]
    assert numbers == sorted(numbers, key=lambda t: (int(t), t))


def test_a_digit_that_is_not_a_number_is_a_plain_name():
    g = Grammar.from_text("S -> '²' 'a' | '2'\n")  # '²'.isdigit() but int('²') fails
    assert g.terminals == ("2", "a", "²")


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"idx": [[0]], "all": []}, "needs a level of nonterminals"),  # terminals only
        ({"idx": [], "all": []}, "needs a level of nonterminals"),
        ({"idx": [[5], [1, 2]], "all": [[{"children": [[True]]}]]}, "outside level 1"),
    ],
)
def test_malformed_authors_json_is_one_clear_error(tmp_path, data, needle):
    import json

    path = tmp_path / "g.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GrammarError, match=needle):
        load(str(path))
