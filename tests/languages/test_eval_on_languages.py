"""The evaluation and training-data code runs on a language as on a grammar, given the two
dispatches the languages' design note proposes (cfglab/languages/__init__.py): cfglab.exact's
functions and the sampler hand a Language to its same-named method. The fixture below plants
exactly those dispatches (the modules themselves are not changed here); the accuracy family,
the KL, the model adapters and the training windows then run unchanged, on the oracle and on
a tiny untrained GPT."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cfglab.config import EvalConfig, ModelConfig  # noqa: E402
from cfglab.data import dataset, sampler  # noqa: E402
from cfglab.data.vocab import BOS, Vocab  # noqa: E402
from cfglab.evaluate import accuracy, distribution  # noqa: E402
from cfglab.evaluate import context as eval_context  # noqa: E402
from cfglab.evaluate.adapters import (  # noqa: E402
    sampling_generate_fn,
    torch_generate_fn,
    torch_logprob_fn,
)
from cfglab.exact import cyk, inside  # noqa: E402
from cfglab.languages import LANGUAGES, Language  # noqa: E402
from cfglab.languages.adapters import exact_logprob_fn  # noqa: E402
from cfglab.model import build_model, gpt_config  # noqa: E402
from tests.languages.oracles import ORACLES  # noqa: E402

EXACT = {cyk: ("judge", "recognize", "first_error"), inside: ("log_prob", "next_token_dist")}
SMALL = {  # short strings: the oracle's generator re-reads the whole prefix at every token
    "anbncn": "anbncn n_max=6 ratio=0.8",
    "copy": "copy m_max=5",
    "cross_serial": "cross_serial n_max=3 m_max=3",
}


@pytest.fixture
def dispatch(monkeypatch):
    """The proposed change: each exact function, and the sampler as the eval context calls it,
    hands a language to its method of the same name."""
    for module, names in EXACT.items():
        for name in names:
            original = getattr(module, name)

            def exact(grammar, strings, _original=original, _name=name):
                if isinstance(grammar, Language):
                    return getattr(grammar, _name)(strings)
                return _original(grammar, strings)

            monkeypatch.setattr(module, name, exact)
    original_sample = sampler.sample  # what both modules imported by name

    def sample(grammar, n, seed, *, max_len=None, labels=True, **rest):
        if isinstance(grammar, Language):  # max_tries means nothing; tree filters are CFG only
            assert not rest.get("exclude") and not rest.get("require")
            return grammar.sample(n, seed, max_len=max_len, labels=labels)
        return original_sample(grammar, n, seed, max_len=max_len, labels=labels, **rest)

    monkeypatch.setattr(eval_context, "sample", sample)
    monkeypatch.setattr(dataset, "sample", sample)


def lang_of(name: str) -> Language:
    from cfglab.languages import load_language

    return load_language(SMALL[name])


def letters(lang: Language, x: np.ndarray) -> str:
    return "".join(lang.terminals[i - 1] for i in x)


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_accuracy_family_scores_the_oracle_one(dispatch, name):
    """accuracy.measure on an EvalContext of the language, the oracle as the model: every
    generation (cut0 and cut3 prompts) is a sentence."""
    lang = lang_of(name)
    oracle = exact_logprob_fn(lang)
    ctx = eval_context.EvalContext(
        grammar=lang,
        logprob=oracle,
        make_generate=lambda t: sampling_generate_fn(
            oracle, lang.eos, max_new_tokens=40, temperature=t
        ),
        settings=EvalConfig(n_samples=24, cuts=[0, 3], temperatures=[1.0], seed=5),
    )
    rows = accuracy.measure(ctx)
    assert [(r["cut"], r["n"], r["accuracy"]) for r in rows] == [(0, 24, 1.0), (3, 24, 1.0)]
    lengths = {x for r in rows for x in r["lengths"]}
    assert len(lengths) > 2  # the oracle's generations are not all one string


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_kl_of_the_oracle_is_zero_and_of_a_tiny_gpt_positive(dispatch, name):
    lang = lang_of(name)
    strings = lang.sample(16, 4).strings()
    exact = distribution.evaluate_distribution(lang, exact_logprob_fn(lang), strings)
    assert abs(exact.kl) < 1e-12 and abs(exact.seq_kl) < 1e-12  # exp(log p) rounds
    assert np.isclose(exact.cross_entropy, exact.entropy_rate)
    assert np.isclose(exact.entropy_rate, -lang.log_prob(strings).sum() / exact.n_rows)

    vocab = Vocab.from_grammar(lang)
    shape = ModelConfig(block_size=48, n_layer=1, n_head=2, n_embd=16)
    model = build_model(gpt_config(shape, vocab.size), seed=0).eval()
    gpt = torch_logprob_fn(model, pad_id=vocab.pad)
    res = distribution.evaluate_distribution(lang, gpt, strings)
    assert 0 < res.kl < np.inf and res.n_strings == 16
    # the same number from the rows by hand: the language's rows against the GPT's
    rows = [gpt([np.concatenate([[BOS], x])])[0] for x in strings]
    by_hand = [
        distribution.row_kl(p, distribution.model_symbol_probs(q, lang.n_t)).mean()
        for p, q in zip(lang.next_token_dist(strings), rows, strict=True)
    ]
    assert np.isclose(res.kl, np.mean(by_hand))


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_tiny_gpt_generations_are_judged_as_the_regex_oracle_judges_them(dispatch, name):
    lang = lang_of(name)
    oracle = ORACLES[name]()
    vocab = Vocab.from_grammar(lang)
    shape = ModelConfig(block_size=48, n_layer=1, n_head=2, n_embd=16)
    model = build_model(gpt_config(shape, vocab.size), seed=1).eval()
    generate = torch_generate_fn(model, eos_id=vocab.eos, max_new_tokens=12)
    prompts = [np.array([BOS], dtype=np.int64)] * 12
    prompts += [np.concatenate([[BOS], x[:2]]) for x in lang.sample(12, 0).strings()]
    seqs = generate(prompts, np.random.default_rng(0))
    res, (correct, first_error, strings, ended, bad) = accuracy.judge_accuracy(lang, seqs)
    assert res.n == 24 and res.n_correct == int(correct.sum())
    if name != "copy":  # (every string is a prefix of some ww: copy has no first errors)
        assert (first_error >= 0).any()  # the untrained model does go wrong: both branches run
    for ok, err, s, e, b in zip(correct, first_error, strings, ended, bad, strict=True):
        clean = s if not b else s[: np.flatnonzero((s < 1) | (s > lang.n_t))[0]]
        text = letters(lang, clean)
        assert ok == (e and not b and oracle.member(text))
        if not ok and err >= 0 and err < len(clean):
            assert not oracle.viable(text[: err + 1]) and oracle.viable(text[:err])


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_training_windows_pack_sentences_of_the_language(dispatch, name):
    """data.dataset's BOS-aligned windows (the training stream) from a language: each window
    starts at a BOS, and every string in it that ends before the window does is a sentence."""
    lang = lang_of(name)
    oracle = ORACLES[name]()
    windows = dataset.bos_aligned_windows(lang, 6, 65, (0, 0, 3), lang.eos)
    assert windows.shape == (6, 65) and (windows[:, 0] == BOS).all()
    again = dataset.bos_aligned_windows(lang, 6, 65, (0, 0, 3), lang.eos)
    assert np.array_equal(windows, again)
    n_whole = 0
    for w in windows:
        text = " ".join(map(str, w.tolist()))
        for chunk in text.split(str(BOS))[1:]:
            ids = [int(t) for t in chunk.split()]
            if lang.eos in ids:  # a whole string: BOS x EOS
                x = np.array(ids[: ids.index(lang.eos)])
                assert oracle.member(letters(lang, x))
                n_whole += 1
    assert n_whole > 6
