"""Sampling of every built-in language: Monte Carlo frequencies against the oracles' exact
probabilities (chi-square, with a check that the statistic rejects a wrong distribution),
determinism, max_len conditioning, the structure labels, parse, specs and the vocabulary."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from cfglab.data.vocab import BOS, Vocab
from cfglab.errors import CfglabError, GrammarError, SamplingError
from cfglab.languages import LANGUAGES, load_language
from cfglab.languages.base import BOS as LANGUAGE_BOS
from tests.languages.oracles import ORACLES, all_strings
from tests.languages.test_exact import oracle_of

MC = [  # (spec, a slightly different spec, strings drawn): supports of 12-30 strings
    ("anbncn n_max=12 ratio=0.8", "anbncn n_max=12 ratio=0.75", 20_000),
    ("copy m_max=4 alphabet=2 ratio=0.8", "copy m_max=4 alphabet=2 ratio=0.9", 20_000),
    ("cross_serial n_max=4 m_max=5 ratio=0.9", "cross_serial n_max=4 m_max=5 ratio=1", 20_000),
]
DEPENDS = {"anbncn": {1: 0, 2: 1}, "cross_serial": {2: 0, 3: 1}}  # block -> the block it repeats


def letters(lang, x: np.ndarray) -> str:
    return "".join(lang.terminals[i - 1] for i in x)


def chisquare_pvalue(observed, expected) -> float:
    """Pearson's chi-square test of counts against expected counts: the upper tail of the
    statistic with len - 1 degrees of freedom, by the Wilson-Hilferty normal approximation
    (scipy is not a dependency; the approximation's error is far below the 1e-3 and 1e-6 the
    tests compare with)."""
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    stat = float(((observed - expected) ** 2 / expected).sum())
    k = len(observed) - 1
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def chi_square_p(counts: Counter, probs: dict[str, float], n: int) -> float:
    """p-value of the counts against the probabilities over the support (counts outside it
    make the p-value 0)."""
    if set(counts) - set(probs):
        return 0.0
    keys = sorted(probs)
    observed = np.array([counts.get(k, 0) for k in keys], dtype=float)
    return chisquare_pvalue(observed, n * np.array([probs[k] for k in keys]))


def support(oracle, up_to: int = 60) -> dict[str, float]:
    """Every string of length <= up_to with positive probability, and its probability."""
    longest = min(oracle.max_len, up_to)
    if oracle.alphabet == "abc":  # anbncn: the sentences are few, write them out
        cands = ["a" * n + "b" * n + "c" * n for n in range(1, longest // 3 + 1)]
    elif oracle.alphabet == "abcd":
        r = range(1, longest)
        cands = ["a" * n + "b" * m + "c" * n + "d" * m for n in r for m in r]
    else:
        assert len(oracle.alphabet) ** longest < 1e6, "too many strings to enumerate"
        cands = all_strings(oracle.alphabet, longest)
    return {s: oracle.prob(s) for s in cands if len(s) <= longest and oracle.prob(s) > 0}


@pytest.mark.parametrize("spec,wrong,n", MC)
def test_sampled_frequencies_match_the_exact_probabilities(spec, wrong, n):
    lang, oracle = load_language(spec), oracle_of(spec)
    probs = support(oracle)
    assert abs(sum(probs.values()) - 1) < 1e-12
    counts = Counter(letters(lang, x) for x in lang.sample(n, 0, labels=False).strings())
    assert chi_square_p(counts, probs, n) > 1e-3
    # the test has power: the same draws against a slightly different distribution fail
    assert chi_square_p(counts, support(oracle_of(wrong)), n) < 1e-6


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_same_seed_same_strings_and_labels(name):
    lang = LANGUAGES[name]()
    a, b, c = lang.sample(300, 7), lang.sample(300, 7), lang.sample(300, 8)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.offsets, b.offsets)
    assert all(np.array_equal(a.labels[k], b.labels[k]) for k in a.labels)
    assert not np.array_equal(a.ids[: len(c.ids)], c.ids[: len(a.ids)])
    plain = lang.sample(300, 7, labels=False)
    assert plain.labels is None and np.array_equal(plain.ids, a.ids)
    assert len(lang.sample(0, 1)) == 0


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_sample_is_its_parts_joined(name, monkeypatch):
    import cfglab.languages.base as base

    lang = LANGUAGES[name]()
    monkeypatch.setattr(base, "PART_TOKENS", 200)  # ~10 strings a part
    parts = list(lang.sample_parts(95, 3))
    whole = lang.sample(95, 3)
    assert len(parts) > 5 and sum(len(p) for p in parts) == len(whole) == 95
    assert [x.tolist() for p in parts for x in p.strings()] == [x.tolist() for x in whole.strings()]
    for k in whole.labels:
        assert np.array_equal(np.concatenate([p.labels[k] for p in parts]), whole.labels[k])
    assert lang.recognize(whole.strings()).all()
    assert len({tuple(x) for x in whole.strings()}) > 10  # parts are not copies of each other
    with pytest.raises(SamplingError, match="n=-1"):
        lang.sample_parts(-1, 0)  # refused before the first draw


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_max_len_conditions_on_length(name):
    lang = LANGUAGES[name]()
    oracle = ORACLES[name]()
    batch = lang.sample(4000, 1, max_len=12)
    assert batch.lengths.max() <= 12
    assert all(oracle.member(letters(lang, x)) for x in batch.strings())
    # the lengths follow the distribution restricted to <= 12, renormalised
    lengths = Counter(batch.lengths.tolist())
    exact = Counter()
    for s, p in support(oracle, up_to=12).items():
        exact[len(s)] += p
    total = sum(exact.values())
    keys = sorted(exact)
    observed = [lengths.get(k, 0) for k in keys]
    expected = [4000 * exact[k] / total for k in keys]
    assert chisquare_pvalue(observed, expected) > 1e-3
    with pytest.raises(SamplingError, match="raise max_len"):
        lang.sample(5, 0, max_len=1)


def labels_by_hand(lang, s: str) -> dict[str, list[int]]:
    """The labels from the letters alone: blocks are runs (block languages) or halves (copy)."""
    if lang.name == "copy":
        h = len(s) // 2
        return {
            "block": [int(i >= h) for i in range(len(s))],
            "offset": [i % h for i in range(len(s))],
            "dependent": [i - h if i >= h else -1 for i in range(len(s))],
        }
    block = [lang.terminals.index(c) for c in s]
    start = {b: block.index(b) for b in set(block)}
    offset = [i - start[b] for i, b in enumerate(block)]
    depends = DEPENDS[lang.name]
    dependent = [
        start[depends[b]] + o if b in depends else -1 for b, o in zip(block, offset, strict=True)
    ]
    return {"block": block, "offset": offset, "dependent": dependent}


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_labels_are_the_structure_and_parse_gives_them_back(name):
    lang = LANGUAGES[name]()
    batch = lang.sample(200, 2)
    strings = batch.strings()
    parsed = lang.parse(strings)
    classes = lang.label_classes
    for i, x in enumerate(strings):
        a, b = batch.offsets[i], batch.offsets[i + 1]
        got = {k: v[a:b].tolist() for k, v in batch.labels.items()}
        assert got == labels_by_hand(lang, letters(lang, x))
        assert {k: v.tolist() for k, v in parsed[i].items()} == got
        dep = np.array(got["dependent"])
        has = dep >= 0
        if name == "copy":  # a copied token equals its source
            assert (x[has] == x[dep[has]]).all()
        assert max(got["block"]) < classes["block"] and max(got["offset"]) < classes["offset"]
    assert lang.parse([strings[0][:-1]]) == [None]


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_spec_round_trips_and_vocab_follows_cfglab_layout(name):
    lang = LANGUAGES[name]()
    assert load_language(lang.spec) == lang and load_language(lang.to_text()) == lang
    assert hash(load_language(lang.spec)) == hash(lang)
    vocab = Vocab.from_grammar(lang)
    assert LANGUAGE_BOS == BOS == vocab.bos and lang.eos == vocab.eos
    assert vocab.encode(list(lang.terminals)).tolist() == list(range(1, lang.n_t + 1))
    assert lang.levels is None and lang.mean_length > 0 and lang.length_sd > 0


def test_bad_specs_name_the_fix():
    with pytest.raises(GrammarError, match="did you mean 'anbncn'"):
        load_language("anbcn")
    with pytest.raises(GrammarError, match="did you mean 'n_max'"):
        load_language("anbncn nmax=3")
    with pytest.raises(GrammarError, match="not a parameter"):
        load_language("copy name=3")  # a class attribute is no parameter
    with pytest.raises(GrammarError, match="not a number"):
        load_language("copy m_max=ten")
    with pytest.raises(CfglabError, match="n_max=2 < n_min=5"):
        load_language("anbncn n_min=5 n_max=2")
    with pytest.raises(CfglabError, match="ratio"):
        load_language("cross_serial ratio=0")
    with pytest.raises(CfglabError, match="alphabet"):
        load_language("copy alphabet=27")
    with pytest.raises(CfglabError, match="whole number"):
        load_language("anbncn n_max=2.5")


def test_languages_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import cfglab.languages, cfglab.languages.adapters\n"
        "print(sorted(cfglab.languages.LANGUAGES))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "anbncn" in out.stdout
