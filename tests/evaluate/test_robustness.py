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
        G,
        generate,
        xs,
        np.random.default_rng(0),
        cut=CUT,
        gamma=0.3,
        corrupt_seed=1,
        batch_size=1000,
    )
    assert res["clean"]["accuracy"] == 1.0 and res["no_new_errors"]["accuracy"] == 1.0
    assert res["mean_tokens_changed"] > 0.5  # the prompts really were corrupted
    assert res["clean"]["n"] == len(xs)


def test_a_half_right_generator_is_scored_like_nltk_says():
    """Every other completion is the string's true rest, the others a fixed tail: the clean
    score (A) is NLTK's verdict on clean prompt + completion, strictly between 0 and 1, so a
    scorer that always says "wrong" (or "right") fails."""
    xs = strings()
    tail = np.array([2, 2, 2, 2])
    seen: list[int] = []

    def completion(i: int) -> np.ndarray:
        return xs[i][CUT:] if i % 2 else tail

    def generate(prompts, rng):
        out = []
        for p in prompts:
            i = len(seen)
            seen.append(i)
            out.append(np.concatenate([p, completion(i), [EOS]]))
        return out

    res = corrupted_prompt_accuracy(
        G, generate, xs, np.random.default_rng(0), cut=CUT, gamma=0.15, corrupt_seed=2
    )
    cfg = nltk_grammar(G)
    verdicts = [
        nltk_accepts(cfg, [G.terminals[t - 1] for t in np.concatenate([x[:CUT], completion(i)])])
        for i, x in enumerate(xs)
    ]
    expected = np.mean(verdicts)
    assert 0.3 < expected < 0.7, expected  # the case discriminates
    assert res["clean"]["accuracy"] == expected
    assert res["clean"]["n_correct"] == sum(verdicts)
    assert res["clean"]["ci_low"] <= expected <= res["clean"]["ci_high"]


def test_no_corruption_keeps_prompts_viable():
    """gamma = 0: every prompt stays viable; a completion that is the true rest is right, an
    immediate EOS is right exactly when the 5-token prefix is itself a sentence (NLTK), and the
    two scores (A) and (B) agree on every string."""
    xs = strings(40)

    def generate(ps, rng):
        return [np.concatenate([p, xs[i][CUT:] if i % 2 else [], [EOS]]) for i, p in enumerate(ps)]

    res = corrupted_prompt_accuracy(
        G, generate, xs, np.random.default_rng(0), cut=CUT, gamma=0.0, batch_size=1000
    )
    assert res["mean_tokens_changed"] == 0 and res["prompt_still_viable"] == 1.0
    cfg = nltk_grammar(G)
    verdicts = [
        True if i % 2 else nltk_accepts(cfg, [G.terminals[t - 1] for t in x[:CUT]])
        for i, x in enumerate(xs)
    ]
    expected = np.mean(verdicts)
    assert 0 < expected < 1, expected  # right and wrong completions both occur
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
