"""Evaluation metrics against independent oracles: textbook intervals, coverage simulations,
brute-force enumeration on tiny grammars and KL values worked out by hand."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

import cfglab.data.saved as DS
import cfglab.errors as E
import cfglab.evaluate.accuracy as A
import cfglab.evaluate.adapters as AD
import cfglab.evaluate.distribution as D
import cfglab.evaluate.diversity as V
import cfglab.evaluate.loss_floor as F
import cfglab.evaluate.run as R
import cfglab.evaluate.stats as S
from cfglab.config import EvalConfig
from cfglab.grammar.cfg import Grammar
from tests.oracles import (
    all_strings,
    bruteforce_logprob_model,
    bruteforce_next_token_dist,
    sample_recursive,
)

# A finite, weighted grammar (9 strings, lengths 1..5): small enough to enumerate.
TINY = Grammar.from_text("""
S -> A B [0.6] | B [0.4]
A -> 'a' [0.5] | 'a' 'b' [0.5]
B -> 'b' [0.3] | 'c' A [0.7]
""")
TINY_MAX = 5
COIN = Grammar.from_text("S -> 'a' [0.5] | 'b' [0.5]")
EPS = D.KL_EPS


def ids(grammar: Grammar, names: list[str]) -> np.ndarray:
    return np.array([grammar.terminals.index(t) + 1 for t in names], dtype=np.int64)


def true_strings(grammar: Grammar, n: int, seed: int) -> list[np.ndarray]:
    rng = random.Random(seed)
    return [ids(grammar, sample_recursive(grammar, rng)) for _ in range(n)]


# ---- confidence intervals ---------------------------------------------------------------------
def test_intervals_match_textbook_values():
    # 8 of 10: Wilson (0.4902, 0.9433), Clopper-Pearson (0.4439, 0.9748) (Brown, Cai & DasGupta)
    assert S.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert S.clopper_pearson_interval(8, 10) == pytest.approx((0.4439, 0.9748), abs=1e-4)
    # the extremes: 0/n and n/n have a closed form, (alpha/2)^(1/n)
    assert S.clopper_pearson_interval(20, 20)[0] == pytest.approx(0.025 ** (1 / 20), rel=1e-6)
    assert S.clopper_pearson_interval(0, 20)[1] == pytest.approx(1 - 0.025 ** (1 / 20), rel=1e-6)


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.98])
def test_interval_coverage_with_a_planted_error_rate(rate):
    rng = np.random.default_rng(0)
    n, reps = 200, 1000
    ks = rng.binomial(n, rate, size=reps)
    wilson = np.mean([lo <= rate <= hi for lo, hi in (S.wilson_interval(k, n) for k in ks)])
    exact = np.mean([lo <= rate <= hi for lo, hi in (S.clopper_pearson_interval(k, n) for k in ks)])
    assert 0.92 <= wilson <= 0.985, wilson
    assert exact >= 0.94, exact


# ---- judging generations ----------------------------------------------------------------------
def test_split_generation():
    t = 3  # EOS = 4, MASK = 5
    s, ended, bad = A.split_generation(np.array([0, 1, 2, 4, 3]), t)
    assert s.tolist() == [1, 2] and ended and bad == -1
    s, ended, bad = A.split_generation(np.array([0, 1, 5, 2]), t)
    assert s.tolist() == [1, 5, 2] and not ended and bad == 1


def test_judge_generations_categories():
    pytest.importorskip("cfglab.exact.cyk")
    a, b, c = (ids(TINY, [x])[0] for x in "abc")
    eos, bos, mask = TINY.n_t + 1, 0, TINY.n_t + 2
    seqs = [
        [bos, a, b, eos],  # "a b": correct
        [bos, c, a, b, eos, a],  # "c a b": correct, tokens after EOS ignored
        [bos, a, eos],  # premature EOS: error at index 1
        [bos, a, a, b, eos],  # "a a" is no prefix: error at index 1
        [bos, c, a],  # viable but no EOS: unfinished
        [bos, c, mask, eos],  # special token at index 1
    ]
    correct, first, _, _, bad = A.judge_generations(TINY, [np.array(s) for s in seqs])
    assert correct.tolist() == [True, True, False, False, False, False]
    assert first.tolist() == [-1, -1, 1, 1, -1, 1]
    assert bad.tolist() == [False] * 5 + [True]
    res = A.accuracy_from_judgements(correct, first_error=first, bad_token=bad)
    assert (res.n, res.n_correct, res.n_unfinished, res.n_bad_token) == (6, 2, 1, 1)


def test_planted_error_rate_through_the_judge():
    """A generator that corrupts a true string with probability 0.2: every corruption is
    ungrammatical, so the judged accuracy estimates 0.8 and its CI covers it."""
    pytest.importorskip("cfglab.exact.cyk")
    rate, n = 0.8, 400
    eos = TINY.n_t + 1
    bad_tail = ids(TINY, ["c", "c"])  # "cc" occurs in no string of TINY

    def generate(prompts, rng):
        out = []
        for _ in prompts:
            x = true_strings(TINY, 1, int(rng.integers(1 << 30)))[0]
            if rng.random() > rate:
                x = np.concatenate([x, bad_tail])
            out.append(np.concatenate([[0], x, [eos]]))
        return out

    res, _ = A.judge_accuracy(TINY, generate([np.array([0])] * n, np.random.default_rng(1)))
    assert res.ci_low <= rate <= res.ci_high
    assert res.cp_low <= rate <= res.cp_high
    assert abs(res.accuracy - rate) < 0.06


# ---- KL: by hand, brute force ------------------------------------------------------------------
def test_uniform_model_kl_by_hand():
    """COIN: S -> 'a' | 'b' (1/2 each); vocabulary of 6 ids so the uniform model gives 1/6 to
    each of [EOS, a, b], i.e. 1/3 after renormalisation. For x = 'a' the exact rows are
    [0, .5, .5] then [1, 0, 0]; the smoothed rows are (P + eps) / (1 + 3 eps), so
    KL(x) = 1/2 [log(3 (.5 + eps) / (1 + 3 eps)) + log(3 (1 + eps) / (1 + 3 eps))]; same for 'b'.
    Sequence KL per token = (log .5 - 2 log(1/6)) / 2; cross-entropy log 6; entropy rate log 2 / 2.
    """
    d = 1 + 3 * EPS
    kl = 0.5 * (math.log(3 * (0.5 + EPS) / d) + math.log(3 * (1 + EPS) / d))
    strings = [np.array([1]), np.array([2]), np.array([1])]
    p_true = [np.array([[0, 0.5, 0.5], [1.0, 0, 0]])] * 3
    model = AD.uniform_logprob_fn(6)
    logq = model([np.concatenate([[0], s]) for s in strings])
    res = D.distribution_metrics(strings, p_true, logq, 2, buckets=(0, 1))
    assert res.kl == pytest.approx(kl, rel=1e-12)
    assert [b["kl"] for b in res.kl_by_position] == pytest.approx(
        [math.log(3 * (0.5 + EPS) / d), math.log(3 * (1 + EPS) / d)], rel=1e-12
    )
    assert res.seq_kl == pytest.approx((math.log(0.5) + 2 * math.log(6)) / 2, rel=1e-12)
    assert res.cross_entropy == pytest.approx(math.log(6), rel=1e-12)
    assert res.entropy_rate == pytest.approx(math.log(2) / 2, rel=1e-12)
    assert res.entropy_rate_rb == pytest.approx(math.log(2) / 2, rel=1e-12)


def test_bruteforce_oracle_scores_zero_and_uniform_matches_direct_sum():
    strings = true_strings(TINY, 40, seed=3)
    p_true = [bruteforce_next_token_dist(TINY, list(s), TINY_MAX) for s in strings]
    oracle = bruteforce_logprob_model(TINY, TINY_MAX)
    res = D.distribution_metrics(
        strings, p_true, oracle([np.concatenate([[0], s]) for s in strings]), TINY.n_t
    )
    assert abs(res.kl) < 1e-9 and abs(res.seq_kl) < 1e-12
    assert res.cross_entropy == pytest.approx(res.entropy_rate, rel=1e-12)
    # log P(x) from the rows equals the enumerated string probability
    table = all_strings(TINY, TINY_MAX)
    logp = sum(math.log(table[tuple(TINY.terminals[i - 1] for i in s)]) for s in strings)
    assert res.entropy_rate == pytest.approx(-logp / sum(len(s) + 1 for s in strings), rel=1e-12)

    # uniform over V = 7: direct double loop with the formula written out
    uni = D.distribution_metrics(
        strings,
        p_true,
        AD.uniform_logprob_fn(7)([np.concatenate([[0], s]) for s in strings]),
        TINY.n_t,
    )
    per_string = []
    for p in p_true:
        rows = []
        for row in p:
            ps = (row + EPS) / (row + EPS).sum()
            rows.append(sum(row[c] * (math.log(ps[c]) - math.log(1 / 4)) for c in range(4)))
        per_string.append(sum(rows) / len(rows))
    assert uni.kl == pytest.approx(sum(per_string) / len(per_string), rel=1e-12)
    assert uni.seq_kl == pytest.approx(uni.cross_entropy - uni.entropy_rate, rel=1e-12)
    assert uni.cross_entropy == pytest.approx(math.log(7), rel=1e-12)


def test_entropy_estimates_agree_with_enumeration():
    """Both entropy-rate estimators converge to H(P) / E[n + 1] computed by enumeration."""
    table = all_strings(TINY, TINY_MAX)
    h = -sum(p * math.log(p) for p in table.values())
    mean_tokens = sum(p * (len(s) + 1) for s, p in table.items())
    strings = true_strings(TINY, 3000, seed=5)
    cache: dict[tuple, np.ndarray] = {}
    p_true = [
        cache.setdefault(tuple(s), bruteforce_next_token_dist(TINY, list(s), TINY_MAX))
        for s in strings
    ]
    logq = AD.uniform_logprob_fn(7)([np.concatenate([[0], s]) for s in strings])
    res = D.distribution_metrics(strings, p_true, logq, TINY.n_t)
    assert res.entropy_rate == pytest.approx(h / mean_tokens, rel=0.03)
    assert res.entropy_rate_rb == pytest.approx(h / mean_tokens, rel=0.02)


def test_packed_loss_floor_agrees_with_enumeration():
    """The floor estimate lands within 4 of its standard errors of H(P) / E[n + 2] computed by
    enumeration, and that standard error is the spread of repeated estimates."""
    from cfglab.exact.inside import log_prob

    table = all_strings(TINY, TINY_MAX)
    h = -sum(p * math.log(p) for p in table.values())
    exact = h / sum(p * (len(s) + 2) for s, p in table.items())
    estimates, errors = [], []
    for seed in range(20):
        strings = true_strings(TINY, 500, seed=100 + seed)
        out = F.packed_loss_floor(np.array([len(s) for s in strings]), log_prob(TINY, strings))
        assert out["n_strings"] == 500
        assert abs(out["value"] - exact) < 4 * out["stderr"]
        estimates.append(out["value"])
        errors.append(out["stderr"])
    assert np.std(estimates, ddof=1) == pytest.approx(np.mean(errors), rel=0.4)


def test_distribution_metrics_rejects_mismatched_rows():
    with pytest.raises(E.CfglabError, match="do not match"):
        D.distribution_metrics([np.array([1, 2])], [np.ones((2, 3)) / 3], [np.zeros((3, 6))], 2)


# ---- diversity --------------------------------------------------------------------------------
def test_collision_support_estimates_a_uniform_support():
    rng = np.random.default_rng(0)
    k, m = 5000, 3000
    strings = [np.array([v]) for v in rng.integers(0, k, size=m)]
    stats = V.collision_stats(strings)
    assert stats["collision_support"] == pytest.approx(k, rel=0.25)
    assert stats["distinct"] == len({int(s[0]) for s in strings})
    distinct = V.collision_stats([np.array([i]) for i in range(100)])
    assert distinct["equal_pairs"] == 0 and distinct["collision_support"] is None
    assert distinct["collision_support_lower"] == pytest.approx(100 * 99 / 2 / 3)


def test_diversity_entropy_reverse_kl_and_seen_fraction():
    strings = [np.array([1]), np.array([2]), np.array([1]), np.array([1, 1])]
    logq = np.log([0.25, 0.25, 0.25, 0.1])
    logp = np.array([math.log(0.5)] * 3 + [-math.inf])  # the last one is not in the language
    out = V.diversity(
        strings,
        model_logq=logq,
        true_logp=logp,
        training=V.training_set([np.array([1]), np.array([3])]),
    )
    assert out["generations"]["distinct"] == 3 and out["generations"]["equal_pairs"] == 1
    assert out["seen_in_training"] == pytest.approx(0.5)
    assert out["model_entropy_per_string"] == pytest.approx(-logq.mean())
    assert out["share_in_language"] == pytest.approx(0.75)
    # Q given the language: 0.25 / 0.75 per string of it, against P = 0.5
    want = 3 * (math.log(0.25) - math.log(0.75) - math.log(0.5)) / 6
    assert out["reverse_kl"] == pytest.approx(want)


def test_sampling_from_the_bruteforce_oracle_matches_the_grammar():
    """Ancestral sampling from the oracle reproduces the enumerated string distribution."""
    table = all_strings(TINY, TINY_MAX)
    gen = AD.sampling_generate_fn(
        bruteforce_logprob_model(TINY, TINY_MAX), TINY.n_t + 1, max_new_tokens=8
    )
    outs = gen([np.array([0])] * 600, np.random.default_rng(0))
    counts: dict[tuple, int] = {}
    for o in outs:
        s, ended, bad = A.split_generation(o, TINY.n_t)
        assert ended and bad < 0
        key = tuple(TINY.terminals[i - 1] for i in s)
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) <= set(table)
    for key, p in table.items():  # 4 standard errors
        assert abs(counts.get(key, 0) / 600 - p) < 4 * math.sqrt(p * (1 - p) / 600)


# ---- the whole pipeline against the exact stage -------------------------------------------------
def test_uniform_model_through_the_exact_stage_matches_the_hand_value():
    """The same hand-computed KL, with the exact rows from cfglab.exact.inside."""
    d = 1 + 3 * EPS
    kl = 0.5 * (math.log(3 * (0.5 + EPS) / d) + math.log(3 * (1 + EPS) / d))
    res = D.evaluate_distribution(COIN, AD.uniform_logprob_fn(6), [np.array([1]), np.array([2])])
    assert res.kl == pytest.approx(kl, rel=1e-12)
    assert res.seq_kl == pytest.approx((math.log(0.5) + 2 * math.log(6)) / 2, rel=1e-12)


def test_exact_rows_match_bruteforce_enumeration():
    strings = true_strings(TINY, 30, seed=11)
    oracle = AD.exact_logprob_fn(TINY)([np.concatenate([[0], s]) for s in strings])
    brute = bruteforce_logprob_model(TINY, TINY_MAX)([np.concatenate([[0], s]) for s in strings])
    for a, b in zip(oracle, brute, strict=True):
        assert np.allclose(np.exp(a), np.exp(b), atol=1e-12)


def test_oracle_model_scores_perfectly_on_cfg3b():
    """The acceptance check: the exact next-token distribution as a model has accuracy 1 at cut0
    and cut50, next-token KL 0 (to 1e-9) and sequence KL 0; its cross-entropy is the entropy."""
    from cfglab.grammar import load

    g = load("cfg3b")
    oracle = AD.exact_logprob_fn(g)
    out = R.evaluate_model(
        g,
        oracle,
        lambda temp: AD.sampling_generate_fn(
            oracle, g.n_t + 1, max_new_tokens=600, temperature=temp
        ),
        EvalConfig(n_samples=12, n_kl=24, cuts=[0, 50], seed=4, n_fixed_prompt=6),
    )
    res = out["results"]
    assert set(res) == {"accuracy", "distribution", "loss_floor", "diversity"}  # no corrupt: no
    for acc in res["accuracy"]:
        assert acc["accuracy"] == 1.0 and acc["n"] == 12, acc
        assert acc["ci_low"] < 1.0 == acc["ci_high"]
    dist = res["distribution"]
    assert abs(dist["kl"]) < 1e-9 and max(map(abs, dist["kl_per_string"])) < 1e-9
    assert abs(dist["seq_kl"]) < 1e-9
    assert dist["cross_entropy"] == pytest.approx(dist["entropy_rate"], abs=1e-9)
    assert 0.3 < dist["entropy_rate_rb"] < 0.55  # SPEC.md: cfg3b's true entropy is 0.423
    div = res["diversity"]
    assert div["generations"]["distinct"] == 12 and div["share_in_language"] == 1.0
    assert abs(div["reverse_kl"]) < 1e-9  # the oracle's Q is P
    assert div["fixed_prompt"]["n"] == 6
    sub = div["subtree"]
    assert sub["n_generated"] == sub["n_true"] == 12 and len(sub["per_level"]) == len(g.levels)
    assert sub["per_level"][0] == {"level": 0, "generated": 12, "true": 12}  # root: whole strings


def test_training_strings_read_back_from_a_saved_dataset(tmp_path):
    from cfglab.data.saved import write_dataset

    d = write_dataset(TINY, tmp_path / "ds", n=50, seed=4)
    seen = DS.read_training_strings(d)
    # independently: split the packed stream BOS x EOS BOS x EOS ... by hand
    tokens = np.load(d / "tokens.npy").astype(np.int64).tolist()
    eos, by_hand, cur = TINY.n_t + 1, set(), None
    for t in tokens:
        if t == 0:
            cur = []
        elif t == eos:
            by_hand.add(tuple(cur))
        else:
            cur.append(t)
    assert {tuple(np.frombuffer(k, dtype=np.int64)) for k in seen} == by_hand
    language = {tuple(ids(TINY, list(x))) for x in all_strings(TINY, TINY_MAX)}
    assert by_hand <= language and len(by_hand) >= 5
    inside_training = [np.array(x) for x in sorted(by_hand)]
    out = V.diversity([*inside_training, np.array([3, 3, 3])], training=seen)
    assert out["seen_in_training"] == pytest.approx(len(by_hand) / (len(by_hand) + 1))
    with pytest.raises(E.CfglabError, match="not a saved dataset"):
        DS.read_training_strings(tmp_path)


def test_subtree_diversity_counts_yields_by_hand():
    """'a b' parses as S(A(a) B(b)); 'c a b' as S(B(c A(a b))): S, A and B each derive two
    distinct strings; a non-sentence is skipped."""
    gen = [
        ids(TINY, ["a", "b"]),
        ids(TINY, ["c", "a", "b"]),
        ids(TINY, ["a", "b"]),
        ids(TINY, ["b", "b"]),
    ]
    out = V.subtree_diversity(TINY, gen, [ids(TINY, ["b"])])
    assert out["n_generated"] == 3 and out["n_true"] == 1
    rows = {r["nt"]: (r["generated"], r["true"]) for r in out["per_nt"]}
    assert rows == {"S": (2, 1), "A": (2, 0), "B": (2, 1)}
    assert out["per_level"] == []  # TINY is not layered


def test_sequence_log_probs_at_a_temperature_by_hand():
    """Uniform over 4 symbols is unchanged by any temperature; a two-valued row is not:
    p = (0.8, 0.2) at T = 2 becomes (sqrt .8, sqrt .2) / (sqrt .8 + sqrt .2)."""
    assert AD.sequence_log_probs(AD.uniform_logprob_fn(4), [np.array([1, 2])], 3, temperature=0.5)[
        0
    ] == pytest.approx(3 * math.log(0.25))

    def model(batch):
        return [np.log(np.tile([0.8, 0.2], (len(s), 1))) for s in batch]

    q = math.sqrt(0.8) / (math.sqrt(0.8) + math.sqrt(0.2))
    got = AD.sequence_log_probs(model, [np.array([0, 0])], 1, temperature=2.0)[0]
    assert got == pytest.approx(2 * math.log(q) + math.log(1 - q))


def _leaky(grammar: Grammar, leak: float):
    """The exact next-token distribution mixed with a uniform one over EOS and the terminals:
    mass outside the language, and another distribution within it."""
    exact = AD.exact_logprob_fn(grammar)
    t = grammar.n_t

    def model(batch):
        out = []
        for lq in exact(batch):
            p = np.nan_to_num(np.exp(lq))  # a prefix outside the language: no exact row
            uniform = np.zeros_like(p)
            uniform[:, 1 : t + 2] = 1 / (t + 1)
            viable = p.sum(axis=1, keepdims=True) > 0.5
            q = np.where(viable, (1 - leak) * p + leak * uniform, uniform)
            with np.errstate(divide="ignore"):
                out.append(np.log(q))
        return out

    return model


def test_reverse_kl_is_the_kl_of_the_model_given_the_language():
    """Monte Carlo against the exact value: KL(Q_L || P) per token by enumerating TINY's
    language, for a model that leaks mass outside the language; the old estimator (no
    conditioning) is negative here, the new one is the KL within a few standard errors."""
    model = _leaky(TINY, 0.3)
    table = all_strings(TINY, TINY_MAX)
    q = {}
    for names in table:
        x = ids(TINY, list(names))
        rows = model([np.concatenate([[0], x])])[0]
        q[names] = math.exp(sum(rows[k, v] for k, v in enumerate([*x, TINY.n_t + 1])))
    q_lang = sum(q.values())
    exact = sum(q[s] / q_lang * (math.log(q[s] / q_lang) - math.log(p)) for s, p in table.items())
    exact /= sum(q[s] / q_lang * (len(s) + 1) for s in table)
    assert exact > 0.01
    gen = AD.sampling_generate_fn(model, TINY.n_t + 1, max_new_tokens=12)
    outs = gen([np.array([0])] * 4000, np.random.default_rng(5))
    strings = [A.split_generation(o, TINY.n_t)[0] for o in outs]
    ended = [A.split_generation(o, TINY.n_t)[1] for o in outs]
    ok = [s for s, e in zip(strings, ended, strict=True) if e]
    lq = AD.sequence_log_probs(model, ok, TINY.n_t + 1, 64)
    lp = np.array([table.get(tuple(TINY.terminals[i - 1] for i in s), 0.0) for s in ok])
    with np.errstate(divide="ignore"):
        out = V.diversity(ok, model_logq=lq, true_logp=np.log(lp), n_generated=len(outs))
    assert out["share_in_language"] == pytest.approx(q_lang, abs=0.03)
    assert abs(out["reverse_kl"] - exact) < 4 * out["reverse_kl_stderr"]
    keep = lp > 0
    tokens = np.array([len(s) + 1 for s in ok])[keep]
    unconditioned = (lq[keep] - np.log(lp[keep])).sum() / tokens.sum()
    assert unconditioned < 0 < out["reverse_kl"]  # the old formula was not a KL


def test_reverse_kl_of_the_exact_model_is_zero():
    oracle = AD.exact_logprob_fn(TINY)
    gen = AD.sampling_generate_fn(oracle, TINY.n_t + 1, max_new_tokens=12)
    outs = gen([np.array([0])] * 300, np.random.default_rng(1))
    strings = [A.split_generation(o, TINY.n_t)[0] for o in outs]
    lq = AD.sequence_log_probs(oracle, strings, TINY.n_t + 1, 64)
    table = all_strings(TINY, TINY_MAX)
    lp = np.log([table[tuple(TINY.terminals[i - 1] for i in s)] for s in strings])
    out = V.diversity(strings, model_logq=lq, true_logp=lp)
    assert out["share_in_language"] == 1.0 and abs(out["reverse_kl"]) < 1e-9


def test_every_summary_row_metric_is_defined():
    """The protocol: each metric a family's rows carry has its definition (the report prints
    them, and an experiment's claims name them)."""
    from cfglab.evaluate.families import FAMILIES

    oracle = AD.exact_logprob_fn(TINY)
    out = R.evaluate_model(
        TINY,
        oracle,
        lambda temp: AD.sampling_generate_fn(oracle, TINY.n_t + 1, max_new_tokens=8),
        EvalConfig(
            n_samples=8,
            n_kl=6,
            cuts=[0, 1],
            corrupt=[0.3],
            seed=2,
            n_fixed_prompt=4,
            compositions=["A -> 'a' under S -> A B"],  # the composition family measures too
        ),
        training=set(),  # memorisation measures against these when there is no run
    )
    # every family measured (metadata and in_context need a model trained for them: their own
    # tests check that their rows are their definitions, with planted models)
    assert set(out["results"]) == set(FAMILIES) - {"metadata", "in_context"}
    for row in out["rows"]:
        assert row["metric"] in FAMILIES[row["family"]].DEFINITIONS, row
