"""Exact membership, probabilities and next-token distributions of every built-in language
against brute force: every string over the alphabet up to a length bound, judged by the
oracles' regexes, with prefix masses summed over the enumerated sentences."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from cfglab.errors import VocabError
from cfglab.languages import LANGUAGES, load_language
from tests.languages.oracles import ORACLES, Oracle, all_strings, pmf, prefix_masses

# (spec, enumeration bound for every string): the supports are small enough to enumerate whole
CASES = [
    ("anbncn n_max=3 ratio=0.5", 9),
    ("anbncn n_min=2 n_max=3 ratio=2", 8),
    ("copy m_max=4 alphabet=2 ratio=0.7", 8),
    ("copy m_min=2 m_max=3 alphabet=3 ratio=1.5", 6),
    ("cross_serial n_max=2 m_max=2 ratio=0.6", 7),
    ("cross_serial n_min=2 n_max=3 m_max=1", 7),
]


def oracle_of(spec: str) -> Oracle:
    lang = load_language(spec)
    params = {f.name: getattr(lang, f.name) for f in dataclasses.fields(lang)}
    return ORACLES[lang.name](**params)


def ids(lang, s: str) -> np.ndarray:
    return np.array([lang.terminals.index(c) + 1 for c in s], dtype=np.int64)


def members(oracle: Oracle, max_len: int) -> list[str]:
    """Every sentence of positive probability: all strings up to the support's longest length,
    kept where the oracle gives them mass."""
    if len(oracle.alphabet) ** oracle.max_len > 2_000_000:
        raise AssertionError("support too large to enumerate in a test")
    return [s for s in all_strings(oracle.alphabet, oracle.max_len) if oracle.prob(s) > 0]


def test_every_language_has_an_oracle_and_cases():
    assert set(ORACLES) == set(LANGUAGES)
    assert {load_language(spec).name for spec, _ in CASES} == set(LANGUAGES)


@pytest.mark.parametrize("spec,bound", CASES)
def test_membership_and_first_error_equal_brute_force(spec, bound):
    lang, oracle = load_language(spec), oracle_of(spec)
    strings = all_strings(oracle.alphabet, bound)
    ok, err = lang.judge([ids(lang, s) for s in strings])
    want_ok = [oracle.member(s) for s in strings]
    assert ok.tolist() == want_ok
    assert sum(want_ok) >= 2  # the bound reaches some sentences
    short = [i for i, s in enumerate(strings) if len(s) <= 6]
    assert [int(err[i]) for i in short] == [oracle.first_error(strings[i]) for i in short]
    assert (lang.recognize([ids(lang, s) for s in strings]) == ok).all()


@pytest.mark.parametrize("spec,bound", CASES)
def test_probabilities_sum_to_the_length_distributions_mass(spec, bound):
    lang, oracle = load_language(spec), oracle_of(spec)
    strings = all_strings(oracle.alphabet, bound)
    lp = lang.log_prob([ids(lang, s) for s in strings])
    want = np.array([oracle.prob(s) for s in strings])
    assert np.allclose(np.exp(lp), want, rtol=1e-10, atol=0)
    assert (np.isneginf(lp) == (want == 0)).all()
    # the mass of lengths <= bound, from the count distribution alone
    if lang.name == "anbncn":
        mass = sum(pmf(n, lang.n_min, lang.n_max, lang.ratio) for n in range(bound // 3 + 1))
    elif lang.name == "copy":
        mass = sum(pmf(m, lang.m_min, lang.m_max, lang.ratio) for m in range(bound // 2 + 1))
    else:
        mass = sum(
            pmf(n, lang.n_min, lang.n_max, lang.ratio) * pmf(m, lang.m_min, lang.m_max, lang.ratio)
            for n in range(bound + 1)
            for m in range(bound + 1)
            if 2 * (n + m) <= bound
        )
    assert math.isclose(float(np.exp(lp).sum()), mass, rel_tol=1e-10)
    assert 0 < mass  # a bound that holds sentences


@pytest.mark.parametrize("spec,bound", CASES)
def test_prefix_masses_and_next_token_rows_equal_enumerated_ratios(spec, bound):
    lang, oracle = load_language(spec), oracle_of(spec)
    sentences = members(oracle, bound)
    mass = prefix_masses(oracle, sentences)
    assert math.isclose(mass[""], 1.0, rel_tol=1e-12)  # the whole support was enumerated
    # every prefix of every sentence, its one-letter extensions, and every short string
    checked = set(all_strings(oracle.alphabet, 4)) | set(sentences)
    checked |= {s + c for s in sentences for c in oracle.alphabet}
    checked = sorted(checked)
    lpps = lang.log_prefix_prob([ids(lang, s) for s in checked])
    rows = lang.next_token_dist([ids(lang, s) for s in checked])
    n_rows = 0
    for s, lpp, row in zip(checked, lpps, rows, strict=True):
        assert lpp.shape == (len(s) + 1,) and row.shape == (len(s) + 1, lang.n_t + 1)
        for k in range(len(s) + 1):
            p = s[:k]
            m = mass.get(p, 0.0)
            if m == 0:
                assert lpp[k] == -np.inf and np.isnan(row[k]).all(), (s, k)
                continue
            assert math.isclose(lpp[k], math.log(m), rel_tol=1e-10, abs_tol=1e-12), (s, k)
            want = [oracle.prob(p) / m] + [mass.get(p + c, 0.0) / m for c in oracle.alphabet]
            assert np.allclose(row[k], want, rtol=1e-9, atol=1e-12), (s, k, row[k], want)
            n_rows += 1
    assert n_rows > 10


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_long_sentences_are_members_of_zero_probability(name):
    """Membership is the formal language: a sentence longer than any sampled one is accepted,
    with log P = -inf and NaN rows once its prefix mass is zero."""
    lang = load_language(f"{name}")
    oracle = ORACLES[name]()
    s = {"anbncn": "a" * 30 + "b" * 30 + "c" * 30, "copy": "ab" * 15 + "ab" * 15}.get(
        name, "a" * 12 + "b" * 11 + "c" * 12 + "d" * 11
    )
    assert oracle.member(s) and oracle.prob(s) == 0
    x = ids(lang, s)
    assert lang.recognize([x]).tolist() == [True]
    assert lang.log_prob([x]).tolist() == [-np.inf]
    lpp, rows = lang.log_prefix_prob([x])[0], lang.next_token_dist([x])[0]
    dead = np.isneginf(lpp)
    assert dead[-1] and not dead[0]
    assert np.isnan(rows[dead]).all() and np.allclose(rows[~dead].sum(axis=1), 1.0)


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_rows_sum_to_one_and_log_prob_agrees_with_the_rows(name):
    lang = LANGUAGES[name]()
    strings = lang.sample(40, 3).strings()
    for (lp, rows), lpp, x in zip(
        lang.log_prob_and_next(strings), lang.log_prefix_prob(strings), strings, strict=True
    ):
        assert np.allclose(rows.sum(axis=1), 1.0)
        chain = np.log(rows[np.arange(len(x) + 1), np.append(x, 0)]).sum()  # chain rule
        assert math.isclose(lp, chain, rel_tol=1e-9)
        assert math.isclose(lpp[-1] + math.log(rows[-1, 0]), lp, rel_tol=1e-9)


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_bad_token_ids_are_refused_with_the_range(name):
    lang = LANGUAGES[name]()
    for bad in (0, lang.n_t + 1):
        with pytest.raises(VocabError, match=rf"ids 1\.\.{lang.n_t}"):
            lang.judge([np.array([1, bad])])
        with pytest.raises(VocabError, match="not a terminal"):
            lang.next_token_dist([np.array([bad])])
    with pytest.raises(VocabError, match="1-D array"):
        lang.log_prob([np.ones((2, 2), dtype=np.int64)])


def test_copy_rows_of_long_strings_do_not_depend_on_the_block_size(monkeypatch):
    """Long strings are weighed in blocks of prefixes (bounded memory): tiny blocks give the
    same rows, which obey the chain rule against the closed-form log P."""
    import cfglab.languages.copy as copy_module

    lang = load_language("copy m_max=300 ratio=0.99 alphabet=3")
    w = np.random.default_rng(0).integers(1, 4, size=260)
    near = np.concatenate([w, w[:200], [w[200] % 3 + 1], w[201:]])  # one letter off
    strings = [np.concatenate([w, w]), near, w[:7]]
    whole = lang.next_token_dist(strings)
    monkeypatch.setattr(copy_module, "CHUNK_CELLS", 50)
    blocks = lang.next_token_dist(strings)
    for a, b in zip(whole, blocks, strict=True):
        assert np.array_equal(np.isnan(a), np.isnan(b)) and np.allclose(a, b, equal_nan=True)
    x, rows = strings[0], blocks[0]
    chain = np.log(rows[np.arange(len(x) + 1), np.append(x, 0)]).sum()
    assert math.isclose(chain, lang.log_prob([x])[0], rel_tol=1e-9)
    assert lang.log_prob([near])[0] == -np.inf and not lang.recognize([near])[0]


def test_the_z_function_equals_the_longest_common_prefixes():
    from cfglab.languages.copy import _periods

    rng = np.random.default_rng(1)
    for n in [0, 1, 2, 5, 30]:
        for _ in range(20):
            x = rng.integers(1, 3, size=n)
            lcp = [next((j for j in range(n - m) if x[m + j] != x[j]), n - m) for m in range(n + 1)]
            assert _periods(x).tolist() == lcp  # (m = 0: n; m = n: 0)
