"""Built-in grammars equal the authors' files; random_cfg follows the authors' recipe."""

import json
from pathlib import Path

import numpy as np
import pytest

from cfglab.errors import GrammarError
from cfglab.grammar import BUILTIN_GRAMMARS, load, random_cfg

AUTHORS = Path(__file__).resolve().parents[2].parent / "shared" / "paper" / "grammars"


def authors_rules(path: Path) -> set[tuple[str, tuple[str, ...], float]]:
    """The rule set of an authors' JSON file, read independently of cfglab: (lhs id, rhs ids,
    probability), ids as strings."""
    data = json.loads(path.read_text())
    rules = set()
    for lev, nodes in enumerate(data["all"][:-1]):
        below = data["idx"][lev + 1]
        for node in nodes:
            for child in node["children"]:
                rules.add(
                    (
                        str(node["id"]),
                        tuple(str(below[c]) for c in child),
                        round(1 / len(node["children"]), 12),
                    )
                )
    return rules


@pytest.mark.skipif(not AUTHORS.is_dir(), reason="../shared/paper/grammars not present")
@pytest.mark.parametrize("name", BUILTIN_GRAMMARS)
def test_builtin_equals_authors_file(name):
    g = load(name)
    ours = {
        (g.nonterminals[r.lhs], tuple(g.symbol_name(s) for s in r.rhs), round(r.prob, 12))
        for r in g.rules
    }
    assert ours == authors_rules(AUTHORS / f"{name}.json")
    assert len(ours) == len(g.rules)  # no rule lost to de-duplication
    assert g.nonterminals[0] == str(json.loads((AUTHORS / f"{name}.json").read_text())["idx"][0][0])


def test_the_paper_family_is_complete():
    assert {
        "cfg3b",
        "cfg3i",
        "cfg3h",
        "cfg3g",
        "cfg3f",
        "cfg3e1",
        "cfg3e2",
        "cfg3j",
        "cfg3k",
    } <= set(BUILTIN_GRAMMARS)


def test_license_and_attribution_ship_with_the_data():
    from importlib import resources

    files = resources.files("cfglab.grammar").joinpath("files")
    assert "Apache" in files.joinpath("LICENSE-Apache-2.0.txt").read_text()
    assert "PhysicsLM4" in files.joinpath("README.md").read_text()


def test_unknown_grammar_name_lists_the_choices():
    with pytest.raises(GrammarError, match="cfg3f"):
        load("cfg3z")


@pytest.mark.parametrize("seed", range(6))
def test_random_cfg_follows_the_recipe(seed):
    sizes = (1, 3, 4, 4, 3)
    g = random_cfg(sizes=sizes, rules_per_nt=(2, 3), rule_len=(2, 3), seed=seed)
    assert g.levels is not None
    assert len(g.levels) == len(sizes) - 1
    assert all(len(lv) <= s for lv, s in zip(g.levels, sizes, strict=False))
    assert g.n_t <= sizes[-1]
    for nts in g.levels:
        seen = set()
        for a in nts:
            assert 2 <= len(g.rules_of[a]) <= 3
            for ri in g.rules_of[a]:
                rhs = g.rules[ri].rhs
                assert 2 <= len(rhs) <= 3
                assert rhs not in seen  # no rule shared within a level
                seen.add(rhs)
    assert random_cfg(sizes=sizes, seed=seed) == g
    assert random_cfg(sizes=sizes, seed=seed + 100) != g


def test_random_cfg_distinct_symbols():
    g = random_cfg(sizes=(1, 3, 4, 4), rule_len=(3, 3), distinct_symbols_in_rule=True, seed=3)
    assert all(len(set(r.rhs)) == len(r.rhs) for r in g.rules)


def test_random_cfg_paper_defaults_give_paper_like_lengths():
    lengths = [random_cfg(seed=s).mean_length for s in range(20)]
    assert 100 < np.median(lengths) < 500  # cfg3b..f have means 236..308


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sizes=(2, 3)),
        dict(sizes=(1,)),
        dict(rules_per_nt=(3, 2)),
        dict(sizes=(1, 2, 2), rule_len=(3, 3), distinct_symbols_in_rule=True),
        dict(sizes=(1, 3, 3), rule_len=(3, 3), rules_per_nt=(3, 3), distinct_symbols_in_rule=True),
        dict(sizes=(1, 1, 2), rules_per_nt=(9, 9), rule_len=(1, 1)),
    ],
)
def test_random_cfg_rejects_impossible_recipes(kwargs):
    with pytest.raises(GrammarError):
        random_cfg(**kwargs)
