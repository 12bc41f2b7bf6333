"""The robustness references (cfglab.exact.repair) against brute force: grammars small enough
to enumerate by hand, every corrupted prompt of a few tokens, the posterior over clean prompts,
the best completion and the repair-then-complete procedure computed by obvious loops over every
string of the alphabet (sentences and their probabilities from leftmost-derivation expansion,
tests/exact/brute.py), and two cases worked out on paper."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cfglab.exact import repair
from cfglab.grammar.cfg import Grammar
from tests.exact.brute import derivations
from tests.exact.grammars import RECURSIVE

# ambiguous ("a b" from A B and from C B), sentences of 2..6 tokens over a, b
HAND = Grammar.from_text(
    """
    S -> A B [0.4] | B A A [0.3] | 'a' 'a' 'b' [0.2] | C B [0.1]
    A -> 'a' [0.6] | 'a' 'b' [0.4]
    B -> 'b' [0.7] | 'b' 'a' [0.3]
    C -> 'a' [1.0]
    """,
    name="hand",
)
# two clean prompts of 2 tokens with equal probability: "a b" then 'a' | 'b' 'b', "b a" then
# 'a' [0.8] | 'a' 'a' [0.2]
TIE = Grammar.from_text(
    """
    S -> 'a' 'b' X [0.5] | 'b' 'a' Y [0.5]
    X -> 'a' [0.5] | 'b' 'b' [0.5]
    Y -> 'a' [0.8] | 'a' 'a' [0.2]
    """,
    name="tie",
)


def brute_references(grammar, cut, gamma, z, max_len=None):
    """(map repair, ceiling) of one corrupted prompt z by loops over every string."""
    sent = {s: p for s, (_, p) in derivations(grammar, 12).items()}
    t = grammar.n_t
    q: dict[tuple, float] = {}
    for s, p in sent.items():
        if len(s) > cut and (max_len is None or len(s) <= max_len):
            q[s[:cut]] = q.get(s[:cut], 0.0) + p
    like = {
        c: math.prod((1 - gamma) if a == b else gamma / (t - 1) for a, b in zip(c, z, strict=True))
        for c in q
    }
    norm = sum(q[c] * like[c] for c in q)
    post = {c: q[c] * like[c] / norm for c in q}
    longest = max(map(len, sent))
    every_y = [
        y for n in range(longest - cut + 1) for y in itertools.product(range(1, t + 1), repeat=n)
    ]
    w = {y: sum(pc for c, pc in post.items() if c + y in sent) for y in every_y}
    best = max(post.values())
    tied = [c for c in post if post[c] >= best * (1 - 1e-9)]

    def repaired(c_hat):
        starts = {s: p for s, p in sent.items() if s[:cut] == c_hat}
        total = sum(starts.values())
        return sum(p / total * w[s[cut:]] for s, p in starts.items())

    return float(np.mean([repaired(c) for c in tied])), max(w.values())


def one(grammar, cut, gamma, z, max_len=None):
    space = repair.clean_prompts(grammar, cut, max_len)
    out = repair.references(grammar, space, [np.array(z)], gamma, np.random.default_rng(0))
    return out["map_repair"]["value"], out["ceiling"]["value"]


@pytest.mark.parametrize("cut", [1, 2, 3])
@pytest.mark.parametrize("gamma", [0.15, 0.5])
def test_references_equal_brute_force_for_every_corrupted_prompt(cut, gamma):
    space = repair.clean_prompts(HAND, cut)
    assert space.method == "exact"
    zs = [np.array(z) for z in itertools.product([1, 2], repeat=cut)]
    want = [brute_references(HAND, cut, gamma, tuple(z)) for z in zs]
    for z, (map_want, ceiling_want) in zip(zs, want, strict=True):
        out = repair.references(HAND, space, [z], gamma, np.random.default_rng(0))
        assert out["map_repair"]["method"] == out["ceiling"]["method"] == "exact"
        assert out["map_repair"]["value"] == pytest.approx(map_want, abs=1e-12), z
        assert out["ceiling"]["value"] == pytest.approx(ceiling_want, abs=1e-12), z
    # the mean over prompts is the mean of the per-prompt values
    out = repair.references(HAND, space, zs, gamma, np.random.default_rng(0))
    assert out["map_repair"]["value"] == pytest.approx(np.mean([m for m, _ in want]), abs=1e-12)
    assert out["ceiling"]["n"] == len(zs)
    if (cut, gamma) == (2, 0.15):  # the case discriminates (brute force, so independently):
        maps, ceilings = np.array(want).T  # values differ between prompts and from each other
        assert np.ptp(maps) > 0.1 and np.ptp(ceilings) > 0.1 and ceilings.max() < 1
        assert (ceilings - maps).max() > 0.2 and (ceilings - maps).min() < 1e-12


def test_max_len_conditions_the_clean_prompts_like_the_eval():
    for z in [(1, 1), (2, 1), (1, 2)]:
        got = one(HAND, 2, 0.3, z, max_len=4)
        assert got == pytest.approx(brute_references(HAND, 2, 0.3, z, max_len=4), abs=1e-12)
    # and the cap matters here: without it the answer differs
    assert one(HAND, 2, 0.3, (2, 1)) != pytest.approx(one(HAND, 2, 0.3, (2, 1), max_len=4))


def test_clean_prompts_are_repaired_perfectly():
    """gamma = 0: the corrupted prompt is the clean one, so repairing and completing it is
    always right, and so is the best model."""
    space = repair.clean_prompts(HAND, 2)
    for c in space.prompts[np.isfinite(space.log_q)]:
        assert one(HAND, 2, 0.0, tuple(c)) == pytest.approx((1.0, 1.0), abs=1e-12)


def test_worked_examples_with_a_tie():
    """TIE at cut 2: Q(a b) = Q(b a) = 1/2. At gamma 1/2 (two terminals) the prompt tells
    nothing: both prompts tie, repair averages 'a b' (completions a, b b: 1/2 * 1 + 1/2 * 1/2)
    and 'b a' (a, a a: 0.8 * 1 + 0.2 * 1/2), 0.825; 'a' completes both: ceiling 1. At gamma
    0.1, z = a b: P(a b | z) = 0.81 / 0.82, repair picks 'a b': 1/2 + 1/2 * 0.81 / 0.82."""
    for z in [(1, 1), (1, 2), (2, 1), (2, 2)]:
        assert one(TIE, 2, 0.5, z) == pytest.approx((0.825, 1.0), abs=1e-12)
    assert one(TIE, 2, 0.1, (1, 2)) == pytest.approx((0.5 + 0.5 * 0.81 / 0.82, 1.0), abs=1e-12)


def test_the_estimate_agrees_with_the_exact_references():
    """Forced to the estimate (no sentence enumeration): the posterior is the exact one, the
    ceiling never exceeds the exact ceiling, and map repair is unbiased (the tiny grammar's
    posterior fits in the support, so nothing is left out)."""
    cut, gamma = 2, 0.3
    exact = repair.clean_prompts(HAND, cut)
    est = repair.clean_prompts(HAND, cut, max_derivations=0)
    assert est.method == "estimate"
    keep = np.isfinite(est.log_q)
    assert {tuple(c) for c in est.prompts[keep]} == {tuple(c) for c in exact.prompts}
    rng = np.random.default_rng(5)
    zs = list(rng.integers(1, 3, size=(150, cut)))
    pe = repair.posterior(exact, np.array(zs), gamma, HAND.n_t)
    ps = repair.posterior(est, np.array(zs), gamma, HAND.n_t)
    where = {tuple(c): i for i, c in enumerate(est.prompts)}
    cols = [where[tuple(c)] for c in exact.prompts]
    assert np.abs(ps[:, cols] - pe).max() < 1e-12
    diffs_map, gaps = [], []
    for z in zs:
        e = repair.references(HAND, exact, [z], gamma, np.random.default_rng(0))
        s = repair.references(HAND, est, [z], gamma, rng)
        assert s["map_repair"]["method"] == "estimate"
        assert s["ceiling"]["method"] == "lower_bound" and s["mass_outside"] < 1e-9
        assert s["ceiling"]["value"] <= e["ceiling"]["value"] + 1e-12
        diffs_map.append(s["map_repair"]["value"] - e["map_repair"]["value"])
        gaps.append(e["ceiling"]["value"] - s["ceiling"]["value"])
    d = np.array(diffs_map)
    assert abs(d.mean()) < 4 * d.std(ddof=1) / np.sqrt(len(d)) and d.std() > 0
    assert np.mean(gaps) < 0.02  # the candidates nearly always hold the best completion


def test_the_estimate_stays_unbiased_when_the_support_is_cut(monkeypatch):
    """With the support cut to the 2 most probable prompts, map repair still agrees with the
    exact value on average (the rest of the posterior enters through one drawn prompt), and
    the ceiling, summed over the support only, stays a lower bound."""
    monkeypatch.setattr(repair, "SUPPORT", 2)
    cut, gamma = 3, 0.3
    exact = repair.clean_prompts(HAND, cut)
    est = repair.clean_prompts(HAND, cut, max_derivations=0)
    rng = np.random.default_rng(8)
    d, outside = [], []
    for z in rng.integers(1, 3, size=(150, cut)):
        e = repair.references(HAND, exact, [z], gamma, np.random.default_rng(0))
        s = repair.references(HAND, est, [z], gamma, rng)
        assert s["ceiling"]["value"] <= e["ceiling"]["value"] + 1e-12
        d.append(s["map_repair"]["value"] - e["map_repair"]["value"])
        outside.append(s["mass_outside"])
    d = np.array(d)
    assert np.mean(outside) > 0.05  # the cut matters
    assert abs(d.mean()) < 4 * d.std(ddof=1) / np.sqrt(len(d))


def test_infinite_language_is_estimated_and_too_many_prompts_are_absent():
    space = repair.clean_prompts(RECURSIVE, 3)
    assert space.method == "estimate"
    assert abs(np.exp(space.log_q).sum() - 1) < 1e-12
    out = repair.references(RECURSIVE, space, [np.array([1, 1, 2])], 0.2, np.random.default_rng(1))
    assert 0 <= out["map_repair"]["value"] <= 1 and 0 <= out["ceiling"]["value"] <= 1
    gone = repair.clean_prompts(RECURSIVE, 3, max_prefixes=4)
    assert isinstance(gone, str) and "more than 4 viable prefixes" in gone
    out = repair.references(RECURSIVE, gone, [np.array([1, 1, 2])], 0.2, np.random.default_rng(1))
    assert out["map_repair"] is None and out["ceiling"] is None and out["reason"] == gone
