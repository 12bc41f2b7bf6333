"""Corruption noise: identity at rate 0, exact semantics per kind, empirical rates within
binomial sampling error, uniform replacement terminals, seeding, and clear errors; perturbed
pretraining on labelled batches, checked by rebuilding every tree from its labels."""

import math

import numpy as np
import pytest

from cfglab.data.noise import (
    KINDS,
    TrainingNoise,
    corrupt,
    corrupt_fraction,
    perturb_fraction,
    perturb_rule,
    perturb_tokens,
)
from cfglab.data.sampler import sample
from cfglab.errors import ConfigError, VocabError
from cfglab.exact.cyk import recognize
from cfglab.grammar import Grammar, load, random_cfg

T = 5


def random_strings(n: int = 400, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, T + 1, size=int(rng.integers(1, 60))) for _ in range(n)]


def within(observed: int, trials: int, p: float, sigmas: float = 4.0) -> bool:
    """Binomial count within `sigmas` standard deviations of its mean."""
    return abs(observed - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p)) + 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_rate_zero_is_the_identity(kind):
    strings = random_strings()
    out = corrupt(strings, T, 0.0, seed=1, kinds=(kind,))
    assert len(out) == len(strings)
    assert all(np.array_equal(a, b) for a, b in zip(out, strings, strict=True))


def test_substitution_changes_exactly_the_hit_tokens_at_the_rate():
    strings = random_strings(2000)
    rate = 0.15
    out = corrupt(strings, T, rate, seed=2)
    old, new = np.concatenate(strings), np.concatenate(out)
    assert old.shape == new.shape  # substitution keeps every length
    changed = old != new
    assert within(int(changed.sum()), old.size, rate)
    # every replacement is a different terminal, uniform over the other T-1 (chi-square)
    diff = (new[changed] - old[changed]) % T  # 1..T-1
    counts = np.bincount(diff, minlength=T)[1:]
    exp = changed.sum() / (T - 1)
    assert ((counts - exp) ** 2 / exp).sum() < 18.5  # chi2(3) 0.9997 quantile
    assert new.min() >= 1 and new.max() <= T


def test_rate_one_substitutes_every_token():
    two = [s % 2 + 1 for s in random_strings()]  # a 2-terminal alphabet: the other token is forced
    out = corrupt(two, 2, 1.0, seed=3)
    assert all(np.array_equal(o, 3 - s) for o, s in zip(out, two, strict=True))


def test_insert_and_delete_rates_and_shapes():
    strings = random_strings(2000)
    n_tok = sum(len(s) for s in strings)
    ins = corrupt(strings, T, 0.2, seed=4, kinds=("insert",))
    added = sum(len(o) - len(s) for o, s in zip(ins, strings, strict=True))
    assert within(added, n_tok, 0.2)
    for o, s in zip(ins, strings, strict=True):  # the original is a subsequence, in order
        it = iter(o.tolist())
        assert all(tok in it for tok in s.tolist())
    dele = corrupt(strings, T, 0.2, seed=5, kinds=("delete",))
    removed = sum(len(s) - len(o) for o, s in zip(dele, strings, strict=True))
    assert within(removed, n_tok, 0.2, sigmas=5)  # (the never-empty rule shifts it slightly)
    for o, s in zip(dele, strings, strict=True):
        it = iter(s.tolist())
        assert len(o) >= 1 and all(tok in it for tok in o.tolist())
    everything = corrupt(strings, T, 1.0, seed=6, kinds=("delete",))
    assert all(np.array_equal(o, s[:1]) for o, s in zip(everything, strings, strict=True))


def test_kinds_compose_in_order_and_seeding_is_reproducible():
    strings = random_strings()
    a = corrupt(strings, T, 0.3, seed=7, kinds=("substitute", "insert", "delete"))
    b = corrupt(strings, T, 0.3, seed=7, kinds=("substitute", "insert", "delete"))
    c = corrupt(strings, T, 0.3, seed=8, kinds=("substitute", "insert", "delete"))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert corrupt([], T, 0.5, seed=0) == []


def test_corrupt_fraction_chooses_rho_of_the_strings():
    strings = random_strings(3000)
    out, chosen = corrupt_fraction(strings, T, fraction=0.1, seed=9, rate=0.5)
    assert within(int(chosen.sum()), len(strings), 0.1)
    for o, s, c in zip(out, strings, chosen, strict=True):
        if not c:
            assert o is s
    changed = sum(not np.array_equal(o, s) for o, s in zip(out, strings, strict=True))
    assert changed <= chosen.sum() and changed > 0.9 * chosen.sum()


def test_bad_arguments_name_the_fix():
    s = random_strings(3)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        corrupt(s, T, 1.5, seed=0)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        corrupt(s, T, -0.1, seed=0)
    with pytest.raises(ConfigError, match="choose from substitute, insert, delete"):
        corrupt(s, T, 0.1, seed=0, kinds=("swap",))
    with pytest.raises(ConfigError, match="list of kinds"):
        corrupt(s, T, 0.1, seed=0, kinds="insert")
    with pytest.raises(ConfigError, match="at least 2 terminals"):
        corrupt([np.array([1, 1])], 1, 0.1, seed=0)
    with pytest.raises(VocabError, match="not a terminal id"):
        corrupt([np.array([1, 6])], T, 0.1, seed=0)
    with pytest.raises(ConfigError, match="fraction"):
        corrupt_fraction(s, T, fraction=2.0, seed=0)


# ---- perturbed pretraining on labelled batches -----------------------------------------------
def runs_of(values: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [s, e) of equal values."""
    cut = [0, *(np.flatnonzero(np.diff(values)) + 1).tolist(), len(values)]
    return list(zip(cut[:-1], cut[1:], strict=True))


def rebuild_tree(g: Grammar, toks, anc, sub, bnd) -> list[tuple[int, int, tuple]]:
    """Rebuild a string's layered tree from its labels alone, checking it is well formed:
    per level the subtrees are runs of ordinals 0, 1, 2, ... with one ancestor each and a
    boundary exactly at their last token; each level's runs nest in the level above's. Returns
    every node as (level, nt, children) where children are the level-below NTs (or tokens)."""
    levels = g.levels
    nodes = []
    for lev in range(len(levels)):
        runs = runs_of(sub[lev])
        assert [int(sub[lev, s]) for s, _ in runs] == list(range(len(runs)))
        assert bnd[lev].tolist() == [t == e - 1 for s, e in runs for t in range(s, e)]
        below = (
            runs_of(sub[lev + 1])
            if lev + 1 < len(levels)
            else [(t, t + 1) for t in range(len(toks))]
        )
        starts = {s for s, _ in below}
        for s, e in runs:
            assert len(set(anc[lev, s:e].tolist())) == 1
            assert s in starts and (e in starts or e == len(toks))  # nested in this node
            if lev + 1 < len(levels):
                kids = tuple(levels[lev + 1][int(anc[lev + 1, a])] for a, b in below if s <= a < e)
            else:
                kids = tuple(g.n_nt + int(t) - 1 for t in toks[s:e])
            nodes.append((lev, levels[lev][int(anc[lev, s])], kids))
    return nodes


def foreign_nodes(g: Grammar, batch) -> list[list[tuple[int, int, int]]]:
    """Per string, the nodes whose children are not a rule of their own NT, as (level, ordinal,
    NT whose rule it is); asserts that such a rule belongs to another NT of the same level."""
    rules = {(r.lhs, r.rhs) for r in g.rules}
    out = []
    for i, toks in enumerate(batch.strings()):
        lo, hi = batch.offsets[i], batch.offsets[i + 1]
        tree = rebuild_tree(
            g, toks, batch.ancestors[:, lo:hi], batch.subtree[:, lo:hi], batch.is_boundary[:, lo:hi]
        )
        bad, ordinal = [], {}
        for lev, nt, kids in tree:
            k = ordinal[lev] = ordinal.get(lev, -1) + 1
            if (nt, kids) not in rules:
                owners = [b for b in g.levels[lev] if (b, kids) in rules]
                assert owners and nt not in owners
                bad.append((lev, k, owners[0]))
        out.append(bad)
    return out


GRAMMARS = {"cfg3f": load("cfg3f"), "small": random_cfg(sizes=(1, 2, 3, 3), seed=3)}


@pytest.mark.parametrize("name", GRAMMARS)
def test_rule_noise_keeps_every_label_well_formed(name):
    g = GRAMMARS[name]
    clean = sample(g, 60, seed=4)
    assert all(bad == [] for bad in foreign_nodes(g, clean))  # the oracle accepts clean trees
    noisy, nodes = perturb_rule(clean, g, seed=5)
    assert len(noisy) == len(clean) and noisy.spans is None
    levels_hit = set()
    for bad, (lev, k) in zip(foreign_nodes(g, noisy), nodes.tolist(), strict=True):
        assert len(g.levels[lev]) >= 2
        assert [(b[0], b[1]) for b in bad] == [(lev, k)]  # exactly the perturbed node
        levels_hit.add(lev)
    assert len(levels_hit) >= 2  # nodes are drawn over every eligible level
    assert recognize(g, noisy.strings()).mean() < 0.5  # mostly outside the language
    again, _ = perturb_rule(clean, g, seed=5)
    assert np.array_equal(again.ids, noisy.ids) and np.array_equal(again.subtree, noisy.subtree)


@pytest.mark.parametrize(
    "kinds", [("substitute",), ("insert",), ("delete",), ("substitute", "insert", "delete")]
)
def test_token_noise_keeps_labels_aligned(kinds):
    g = load("cfg3b")
    clean = sample(g, 40, seed=6)
    noisy = perturb_tokens(clean, g.n_t, 0.2, seed=7, kinds=kinds)
    want = corrupt(clean.strings(), g.n_t, 0.2, seed=7, kinds=kinds)  # the same tokens
    assert all(np.array_equal(a, b) for a, b in zip(noisy.strings(), want, strict=True))
    for i, toks in enumerate(noisy.strings()):
        lo, hi = noisy.offsets[i], noisy.offsets[i + 1]
        rebuild_tree(  # well formed (rules may break: tokens changed)
            g, toks, noisy.ancestors[:, lo:hi], noisy.subtree[:, lo:hi], noisy.is_boundary[:, lo:hi]
        )
    if kinds == ("substitute",):
        for name in ("ancestors", "subtree", "is_boundary"):
            assert np.array_equal(getattr(noisy, name), getattr(clean, name))


def test_inserted_token_takes_its_right_neighbours_labels_and_deletion_drops_subtrees():
    g = load("cfg3b")
    clean = sample(g, 3, seed=8)
    ins = perturb_tokens(clean, g.n_t, 1.0, seed=0, kinds=("insert",))  # before every token
    assert len(ins.ids) == 2 * len(clean.ids)
    assert np.array_equal(ins.ancestors[:, 0::2], clean.ancestors)
    assert np.array_equal(ins.ancestors[:, 1::2], clean.ancestors)
    assert np.array_equal(ins.subtree[:, 1::2], clean.subtree)
    assert not ins.is_boundary[:, 0::2].any()  # an inserted token never ends a subtree
    assert np.array_equal(ins.is_boundary[:, 1::2], clean.is_boundary)
    gone = perturb_tokens(clean, g.n_t, 1.0, seed=0, kinds=("delete",))  # first token stays
    assert gone.lengths.tolist() == [1, 1, 1]
    assert np.array_equal(gone.ancestors, clean.ancestors[:, clean.offsets[:-1]])
    assert not gone.subtree.any() and gone.is_boundary.all()
    # deleting a whole subtree renumbers the ordinals after it
    one = sample(g, 1, seed=9)
    last = np.flatnonzero(one.subtree[-2] == 0)  # tokens of the first level-(L-2) subtree
    keep = np.ones(len(one.ids), dtype=bool)
    keep[last] = False
    from cfglab.data.noise import _relabel

    cut = _relabel(one, one.ids[keep], np.array([0, keep.sum()]), np.flatnonzero(keep))
    assert cut.subtree[-2, 0] == 0 and np.array_equal(cut.subtree[-2], one.subtree[-2, keep] - 1)


def test_perturb_fraction_touches_only_the_chosen_strings():
    g = load("cfg3b")
    clean = sample(g, 400, seed=10)
    assert perturb_fraction(clean, g, TrainingNoise(0.0), seed=1)[0] is clean
    for noise in (TrainingNoise(0.25, "rule"), TrainingNoise(0.25, "token", 0.3, ["insert"])):
        noisy, hit = perturb_fraction(clean, g, noise, seed=1)
        assert within(int(hit.sum()), 400, 0.25)
        pairs = list(zip(noisy.strings(), clean.strings(), hit, strict=True))
        assert all(np.array_equal(a, b) for a, b, h in pairs if not h)
        assert sum(not np.array_equal(a, b) for a, b, h in pairs if h) >= 0.9 * hit.sum()
        for i in np.flatnonzero(~hit)[:20]:
            lo, hi, clo = noisy.offsets[i], noisy.offsets[i + 1], clean.offsets[i]
            assert np.array_equal(noisy.subtree[:, lo:hi], clean.subtree[:, clo : clo + hi - lo])
        for i, toks in enumerate(noisy.strings()):  # the merged labels are all well formed
            lo, hi = noisy.offsets[i], noisy.offsets[i + 1]
            labels = (noisy.ancestors, noisy.subtree, noisy.is_boundary)
            rebuild_tree(g, toks, *(x[:, lo:hi] for x in labels))


def test_noise_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        TrainingNoise(1.5)
    with pytest.raises(ConfigError, match="choose from token, rule"):
        TrainingNoise(0.1, "tree")
    with pytest.raises(ConfigError, match="choose from substitute"):
        TrainingNoise(0.1, kinds=("swap",))
    flat = Grammar.from_text("S -> 'a' S | 'b'")
    with pytest.raises(ConfigError, match="not layered"):
        TrainingNoise(0.1, "rule").check(flat)
    single = Grammar.from_text("S -> A A\nA -> 'a' | 'b'")
    with pytest.raises(ConfigError, match="no level"):
        TrainingNoise(0.1, "rule").check(single)
    TrainingNoise(0.0, "rule").check(single)  # inactive noise never fails
    g = load("cfg3b")
    with pytest.raises(ConfigError, match="labels=True"):
        perturb_rule(sample(g, 2, seed=0, labels=False), g, seed=0)
