"""The sampler against independent oracles: NLTK's chart parser, trees rebuilt from the labels
alone, exact string probabilities by brute-force enumeration, chi-square on rule frequencies,
and the authors' generator (pre-order `random.Random.randint`)."""

import math
import os
import random
from collections import Counter

import numpy as np
import pytest

from cfglab.data.physicslm4 import PhysicsLM4Stream
from cfglab.data.sampler import SampleBatch, sample
from cfglab.errors import SamplingError
from cfglab.grammar import BUILTIN_GRAMMARS, Grammar, load
from tests.oracles import all_strings, nltk_chart_accepts, nltk_grammar

# a small ambiguous, recursive PCFG with a unary rule (S -> VP) and left recursion
PCFG_TEXT = """
%start S
S -> NP VP [0.9] | VP [0.1]
NP -> 'the' N [0.6] | NP PP [0.4]
PP -> 'with' NP [1.0]
VP -> 'sees' NP [0.7] | VP PP [0.3]
N -> 'cat' [0.5] | 'dog' [0.25] | "it's" [0.25]
"""
# tiny and ambiguous, for exact string probabilities by enumeration
TINY_TEXT = """
S -> S S [0.3] | 'a' [0.5] | 'b' A [0.2]
A -> 'a' [0.6] | S [0.4]
"""


def chi2_quantile(df: int, p: float = 0.999) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (scipy is not a dependency)."""
    z = {0.999: 3.0902, 0.9999: 3.7190}[p]
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2_stat(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


# ---- independent checkers: rebuild trees from the labels ---------------------------------------
def rules_by_name(g: Grammar) -> dict[tuple[str, tuple[str, ...]], int]:
    return {
        (g.nonterminals[r.lhs], tuple(g.symbol_name(s) for s in r.rhs)): i
        for i, r in enumerate(g.rules)
    }


def runs(values: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the maximal runs of equal values."""
    cut = np.flatnonzero(np.diff(values)) + 1
    edges = [0, *cut.tolist(), len(values)]
    return list(zip(edges[:-1], edges[1:], strict=False))


def check_layered_labels(g: Grammar, batch: SampleBatch) -> Counter:
    """Rebuild every tree from ancestors + subtree ordinals alone; assert it is a derivation of
    the string by the grammar's rules and that the boundaries match it. Returns rule counts."""
    known = rules_by_name(g)
    levels = g.levels
    n_lev = len(levels)
    counts: Counter = Counter()
    for i, toks in enumerate(batch.strings()):
        a, b = batch.offsets[i], batch.offsets[i + 1]
        anc = batch.ancestors[:, a:b].astype(np.int64)
        sub = batch.subtree[:, a:b].astype(np.int64)
        bnd = batch.is_boundary[:, a:b]
        names = [g.terminals[t - 1] for t in toks]
        for lev in range(n_lev):
            segs = runs(sub[lev])
            # ordinals count subtrees 0, 1, 2 ... left to right; each is one contiguous run
            assert [sub[lev, s] for s, _ in segs] == list(range(len(segs)))
            expect_bnd = np.zeros(len(toks), dtype=bool)
            expect_bnd[[e - 1 for _, e in segs]] = True
            assert np.array_equal(bnd[lev], expect_bnd), (i, lev)
            for s, e in segs:
                assert len(set(anc[lev, s:e].tolist())) == 1  # one ancestor per subtree
                nt = g.nonterminals[levels[lev][anc[lev, s]]]
                if lev + 1 < n_lev:
                    kids = runs(sub[lev + 1, s:e])
                    # children are nested: a child subtree never crosses its parent's edge
                    assert sub[lev + 1, s] != (sub[lev + 1, s - 1] if s else -1)
                    rhs = tuple(
                        g.nonterminals[levels[lev + 1][anc[lev + 1, s + ks]]] for ks, _ in kids
                    )
                else:
                    rhs = tuple(names[s:e])
                assert (nt, rhs) in known, f"string {i}: {nt} -> {rhs} is not a rule"
                counts[known[(nt, rhs)]] += 1
        assert anc[0].tolist() == [0] * len(toks)  # level 0 is the root
    return counts


def check_spans(g: Grammar, batch: SampleBatch) -> Counter:
    """Rebuild every tree from its pre-order spans; assert children tile each node and form one
    of its rules (unary rules and recursion included). Returns rule counts."""
    known = rules_by_name(g)
    counts: Counter = Counter()
    for toks, spans in zip(batch.strings(), batch.spans, strict=True):
        n = len(toks)
        assert spans.shape[1] == 3 and spans[0].tolist() == [0, 0, n]  # the root spans it all
        children: list[list[int]] = [[] for _ in spans]
        stack: list[int] = []
        for k, (_, s, e) in enumerate(spans.tolist()):
            while stack and not (spans[stack[-1], 1] <= s and e <= spans[stack[-1], 2]):
                stack.pop()
            if k:
                assert stack, "a span outside the root"
                children[stack[-1]].append(k)
            stack.append(k)
        for k, (nt, s, e) in enumerate(spans.tolist()):
            assert s < e
            rhs, pos = [], s
            for c in children[k]:
                cs, ce = int(spans[c, 1]), int(spans[c, 2])
                assert cs >= pos  # children in order, disjoint
                rhs += [g.terminals[t - 1] for t in toks[pos:cs]]
                rhs.append(g.nonterminals[spans[c, 0]])
                pos = ce
            rhs += [g.terminals[t - 1] for t in toks[pos:e]]
            key = (g.nonterminals[nt], tuple(rhs))
            assert key in known, f"{key[0]} -> {key[1]} is not a rule"
            counts[known[key]] += 1
    return counts


def rule_chi2(g: Grammar, counts: Counter) -> tuple[float, int]:
    """Chi-square of rule counts against rule probabilities, summed over nonterminals."""
    stat, df = 0.0, 0
    for rs in g.rules_of:
        obs = np.array([counts.get(r, 0) for r in rs], dtype=float)
        if len(rs) < 2 or obs.sum() == 0:
            continue
        exp = obs.sum() * np.array([g.rules[r].prob for r in rs])
        stat += chi2_stat(obs, exp)
        df += len(rs) - 1
    return stat, df


# ---- every built-in grammar ----------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN_GRAMMARS)
def test_builtin_labels_rebuild_valid_trees_and_rule_frequencies_match(name):
    g = load(name)
    batch = sample(g, 150, seed=11)
    assert len(batch) == 150 and batch.ids.dtype == np.int64
    assert batch.ancestors.shape == (len(g.levels), batch.ids.size)
    assert batch.ancestors.dtype == np.int16 and batch.subtree.dtype == np.int32
    assert batch.ids.min() >= 1 and batch.ids.max() <= g.n_t
    counts = check_layered_labels(g, batch)
    assert check_spans(g, batch) == counts  # the two label forms describe the same trees
    stat, df = rule_chi2(g, counts)
    assert stat < chi2_quantile(df), f"rule frequencies off: chi2={stat:.1f}, df={df}"
    # mean length against the analytic expectation (4 standard errors)
    lengths = batch.lengths
    se = lengths.std() / math.sqrt(len(lengths))
    assert abs(lengths.mean() - g.mean_length) < 4 * se


@pytest.mark.parametrize("name", BUILTIN_GRAMMARS)
def test_builtin_strings_accepted_by_nltk(name):
    # NLTK's chart parser takes 0.02-0.3 s per cfg3 string on one core: the 4 shortest of 20
    # here, 100 per grammar under -m slow, all 10,000 with CFGLAB_NLTK_STRINGS=10000 (~2 CPU hours)
    g = load(name)
    nltk_cfg = nltk_grammar(g)
    strings = sorted(sample(g, 20, seed=3, labels=False).strings(), key=len)[:4]
    for s in strings:
        assert nltk_chart_accepts(nltk_cfg, [g.terminals[t - 1] for t in s])


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_GRAMMARS)
def test_builtin_many_strings_accepted_by_nltk(name):
    n = int(os.environ.get("CFGLAB_NLTK_STRINGS", "100"))
    g = load(name)
    nltk_cfg = nltk_grammar(g)
    for s in sample(g, n, seed=5, labels=False).strings():
        assert nltk_chart_accepts(nltk_cfg, [g.terminals[t - 1] for t in s])


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_GRAMMARS)
def test_builtin_10000_trees_valid(name):
    g = load(name)
    batch = sample(g, 10_000, seed=6)
    counts = check_layered_labels(g, batch)
    stat, df = rule_chi2(g, counts)
    assert stat < chi2_quantile(df)


# ---- general grammars: unary rules, recursion, ambiguity ---------------------------------------
def test_pcfg_spans_and_rule_frequencies():
    g = Grammar.from_text(PCFG_TEXT, name="pcfg")
    assert g.levels is None
    batch = sample(g, 3000, seed=2)
    assert batch.ancestors is None and len(batch.spans) == 3000
    counts = check_spans(g, batch)
    stat, df = rule_chi2(g, counts)
    assert stat < chi2_quantile(df), f"chi2={stat:.1f}, df={df}"
    import nltk

    nltk_cfg = nltk.PCFG.fromstring(g.to_text())  # weighted text: NLTK's PCFG reader
    for s in batch.strings()[:50]:
        assert nltk_chart_accepts(nltk_cfg, [g.terminals[t - 1] for t in s])


def string_frequencies_match(g: Grammar, batch: SampleBatch, exact: dict) -> None:
    """Chi-square of sampled string counts against exact probabilities (tail pooled)."""
    counts = Counter(tuple(g.terminals[t - 1] for t in s) for s in batch.strings())
    n = len(batch)
    keys = [k for k, p in exact.items() if p * n >= 5]
    obs = [counts.get(k, 0) for k in keys]
    exp = [exact[k] * n for k in keys]
    obs.append(n - sum(obs))
    exp.append(n - sum(exp))
    stat = chi2_stat(np.array(obs, float), np.array(exp, float))
    assert stat < chi2_quantile(len(keys)), f"chi2={stat:.1f}, df={len(keys)}"


def test_string_probabilities_match_brute_force_enumeration():
    g = Grammar.from_text(TINY_TEXT)
    exact = all_strings(g, 6)
    assert 0.9 < sum(exact.values()) < 1.0
    batch = sample(g, 20_000, seed=4, labels=False)
    string_frequencies_match(g, batch, exact)


def test_max_len_samples_the_conditional_distribution():
    g = Grammar.from_text(TINY_TEXT)
    exact = all_strings(g, 4)
    z = sum(exact.values())
    batch = sample(g, 20_000, seed=8, max_len=4)
    assert batch.lengths.max() <= 4
    check_spans(g, batch)
    string_frequencies_match(g, batch, {k: p / z for k, p in exact.items()})


def test_max_len_on_a_layered_grammar_keeps_labels_right():
    g = load("cfg3f")
    batch = sample(g, 200, seed=9, max_len=230)  # about half the draws are rejected
    assert len(batch) == 200 and batch.lengths.max() <= 230
    check_layered_labels(g, batch)
    check_spans(g, batch)


def test_max_len_errors_name_the_fix():
    g = load("cfg3f")
    with pytest.raises(SamplingError, match="raise max_len to at least"):
        sample(g, 5, seed=0, max_len=10)
    long_text = "S -> 'a' S [0.9] | 'a' [0.1]\n"  # mean length 10, P(length <= 1) = 0.1
    with pytest.raises(SamplingError, match="raise max_len"):
        sample(Grammar.from_text(long_text), 2000, seed=0, max_len=1, max_tries=2)
    assert sample(Grammar.from_text(long_text), 50, seed=0, max_len=1).lengths.tolist() == [1] * 50
    with pytest.raises(SamplingError, match="n >= 0"):
        sample(g, -1, seed=0)


def test_reproducible_and_seed_dependent():
    g = load("cfg3h")
    a, b, c = sample(g, 20, seed=1), sample(g, 20, seed=1), sample(g, 20, seed=2)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.offsets, b.offsets)
    assert np.array_equal(a.ancestors, b.ancestors) and np.array_equal(a.span_rows, b.span_rows)
    assert not np.array_equal(a.ids[:200], c.ids[:200])
    assert np.array_equal(a.ids, sample(g, 20, seed=1, labels=False).ids)
    assert len(sample(g, 0, seed=1)) == 0


def test_batches_larger_than_one_chunk_stay_consistent(monkeypatch):
    import cfglab.data.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "_NODES_PER_BATCH", 5000)  # a few strings per chunk
    g = load("cfg3b")
    batch = sample(g, 60, seed=3, max_len=300)
    assert len(batch) == 60 and batch.lengths.max() <= 300
    check_layered_labels(g, batch)
    check_spans(g, batch)


def test_deep_recursion_thousands_of_tokens():
    # right- and left-recursive chains: the derivation is as deep as the string is long
    for text, root_first in (
        ("S -> 'a' S [0.999] | 'a' [0.001]", True),
        ("S -> S 'a' [0.999] | 'a' [0.001]", False),
    ):
        g = Grammar.from_text(text)
        batch = sample(g, 20, seed=0)
        assert batch.lengths.max() > 2000  # P(max of 20 < 2000) ~ 1e-16
        assert set(batch.ids.tolist()) == {1}
        for n_tok, spans in zip(batch.lengths, batch.spans, strict=True):
            k = np.arange(n_tok)
            want = (
                np.stack([0 * k, k, k * 0 + n_tok], 1)
                if root_first
                else np.stack([0 * k, 0 * k, n_tok - k], 1)
            )
            assert np.array_equal(spans, want)
    # mixed terminals and nonterminals on one level: spans only, no per-level labels
    g = Grammar.from_text("A -> 'a' B | 'b' B\nB -> 'c' C\nC -> 'd'")
    batch = sample(g, 50, seed=0)
    assert batch.ancestors is None and set(batch.lengths.tolist()) == {3}
    check_spans(g, batch)


def test_authors_generator_deeper_than_the_recursion_limit():
    import sys

    # uniform over 999 recursive rules and one stop: mean length 1000
    g = Grammar.from_text("S -> " + " | ".join(f"'t{i}' S" for i in range(999)) + " | 'end'")
    lengths = [len(PhysicsLM4Stream(g, seed).next_ids()) for seed in range(10)]
    assert max(lengths) > sys.getrecursionlimit()
    assert sample(g, 10, seed=0).lengths.max() > sys.getrecursionlimit()


# ---- the authors' generator ---------------------------------------------------------------
def authors_recursive(g: Grammar, rng: random.Random, sym: int = 0) -> list[int]:
    """The authors' CFG_Node.generate as plain recursion (independent of cfglab's stack)."""
    if g.is_terminal(sym):
        return [sym - g.n_nt + 1]
    rules = g.rules_of[sym]
    rhs = g.rules[rules[rng.randint(0, len(rules) - 1)]].rhs
    return [t for s in rhs for t in authors_recursive(g, rng, s)]


def test_the_authors_stream_is_their_recursion():
    """PhysicsLM4Stream (cfglab/data/physicslm4.py) equals the authors' generator written as
    plain recursion, string after string of one Random stream."""
    for name in ("cfg3b", "cfg3k"):
        g = load(name)
        for seed in range(3):
            stream, rng = PhysicsLM4Stream(g, seed), random.Random(seed)
            for _ in range(3):
                assert stream.next_ids() == authors_recursive(g, rng)


def test_parts_concatenate_to_the_batch():
    """Streaming (`sample_parts`, what `cfglab sample` writes) yields exactly `sample`'s strings
    and labels, in several parts for a large n."""
    from cfglab.data.sampler import _concat, sample_parts

    g = load("cfg3b")
    whole = sample(g, 9000, seed=4)
    parts = list(sample_parts(g, 9000, 4))
    assert len(parts) > 1
    joined = _concat(parts)
    np.testing.assert_array_equal(joined.ids, whole.ids)
    np.testing.assert_array_equal(joined.offsets, whole.offsets)
    np.testing.assert_array_equal(joined.ancestors, whole.ancestors)
    np.testing.assert_array_equal(joined.is_boundary, whole.is_boundary)


def test_guide_table_size_does_not_change_draws(monkeypatch):
    """Grammars with very many nonterminals get a coarser guide table (memory); the draws are
    the same whatever its size."""
    import cfglab.data.sampler as S

    g = Grammar.from_text(PCFG_TEXT)
    want = sample(g, 3000, seed=8, labels=False)
    monkeypatch.setattr(S, "_GUIDE_CELLS", 1)
    assert S._tables(g).guide.shape[1] == 16
    got = sample(g, 3000, seed=8, labels=False)
    np.testing.assert_array_equal(got.ids, want.ids)


def test_astronomically_long_strings_are_refused_before_any_draw():
    from cfglab.grammar import random_cfg

    deep = random_cfg(sizes=(1, *[3] * 299), seed=0)  # mean length ~1e120
    assert deep.mean_length > 1e100
    with pytest.raises(SamplingError, match="max_len"):
        sample(deep, 1, seed=0)
    heavy = Grammar.from_text("S -> S S [0.4999] | 'a' [0.5001]")  # mean 2500, sd ~1.8e5
    with pytest.raises(SamplingError, match="too long to sample"):
        sample(heavy, 1, seed=0)
    assert len(sample(heavy, 50, seed=0, max_len=30, labels=False)) == 50


def test_runaway_batches_stop_with_an_error(monkeypatch):
    import cfglab.data.sampler as S

    monkeypatch.setattr(S, "_MAX_BATCH_NODES", 5000)
    with pytest.raises(SamplingError, match="max_len"):
        sample(load("cfg3f"), 200, seed=0)


def test_bad_arguments_are_sampling_errors():
    g = load("cfg3b")
    for kwargs in ({"n": -1}, {"n": 2.5}, {"seed": -3}, {"max_len": 0}):
        with pytest.raises(SamplingError):
            sample(g, **{"n": 2, "seed": 0, **kwargs})
