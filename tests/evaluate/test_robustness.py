"""Corrupted-prompt scores against generators whose answers are known, and NLTK's parser."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cfglab.data.sampler import sample
from cfglab.evaluate.robustness import corrupted_prompt_accuracy
from cfglab.grammar import load
from tests.oracles import nltk_accepts, nltk_grammar

ROOT = Path(__file__).resolve().parents[2]
G = load(ROOT / "configs" / "grammars" / "quickstart.cfg")  # strings of 8-18 tokens
CUT = 5
EOS = G.n_t + 1


def strings(n: int = 60) -> list[np.ndarray]:
    return [s for s in sample(G, n, seed=3, labels=False).strings() if len(s) > CUT]


def test_a_generator_that_restores_the_clean_string_scores_one():
    xs = strings()
    rest = {}  # the clean continuation, looked up by the (corrupted) prompt's position in xs

    def generate(prompts, rng):
        out = []
        for p in prompts:
            i = len(rest)
            rest[i] = p
            out.append(np.concatenate([p, xs[i][CUT:], [EOS]]))
        return out

    res = corrupted_prompt_accuracy(
        G, generate, xs, np.random.default_rng(0), cut=CUT, gamma=0.3, seed=1, batch_size=1000
    )
    assert res["clean"]["accuracy"] == 1.0 and res["no_new_errors"]["accuracy"] == 1.0
    assert res["mean_tokens_changed"] > 0.5  # the prompts really were corrupted
    assert res["clean"]["n"] == len(xs)


def test_a_garbage_generator_is_scored_like_nltk_says():
    xs = strings()
    tail = np.array([2, 2, 2, 2])

    def generate(prompts, rng):
        return [np.concatenate([p, tail, [EOS]]) for p in prompts]

    res = corrupted_prompt_accuracy(
        G, generate, xs, np.random.default_rng(0), cut=CUT, gamma=0.15, seed=2
    )
    cfg = nltk_grammar(G)
    expected = np.mean(
        [
            nltk_accepts(cfg, [G.terminals[t - 1] for t in np.concatenate([x[:CUT], tail])])
            for x in xs
        ]
    )
    assert res["clean"]["accuracy"] == expected
    assert res["clean"]["ci_low"] <= expected <= res["clean"]["ci_high"]


def test_no_corruption_keeps_prompts_viable():
    xs = strings(20)
    res = corrupted_prompt_accuracy(
        G,
        lambda ps, rng: [np.concatenate([p, [EOS]]) for p in ps],
        xs,
        np.random.default_rng(0),
        cut=CUT,
        gamma=0.0,
    )
    assert res["mean_tokens_changed"] == 0 and res["prompt_still_viable"] == 1.0
    # an immediate EOS after a 5-token prefix: correct exactly when that prefix is a sentence
    cfg = nltk_grammar(G)
    expected = np.mean([nltk_accepts(cfg, [G.terminals[t - 1] for t in x[:CUT]]) for x in xs])
    assert res["clean"]["accuracy"] == expected == res["no_new_errors"]["accuracy"]


def test_completions_with_special_tokens_or_no_eos_are_wrong():
    xs = strings(20)
    mask = G.n_t + 2

    def generate(prompts, rng):  # alternately: a special token, no EOS, the true rest
        return [
            np.concatenate([p, [mask, EOS]])
            if i % 3 == 0
            else p
            if i % 3 == 1
            else np.concatenate([p, xs[i][CUT:], [EOS]])
            for i, p in enumerate(prompts)
        ]

    res = corrupted_prompt_accuracy(
        G, generate, xs, np.random.default_rng(0), cut=CUT, gamma=0.0, batch_size=1000
    )
    assert res["clean"]["n_correct"] == len(range(2, len(xs), 3))
