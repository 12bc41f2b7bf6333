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


def test_eval_writes_the_references_beside_every_robustness_row(tmp_path, capsys):
    """The acceptance command `cfglab eval RUN --corrupt 0.15 --cut 10` on a (tiny, untrained)
    quickstart-grammar run: map repair and ceiling (exact: the language is enumerable) per
    (gamma, cut), the clean control per temperature, the share of prompts still viable."""
    import json

    from cfglab import cli, rundir
    from cfglab.config import load_config
    from cfglab.data.vocab import Vocab
    from cfglab.model import build_model, gpt_config
    from cfglab.train.checkpoint import save_checkpoint

    run = tmp_path / "run"
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml",
        ["model.block_size=48", "model.n_layer=1", "train.threads=1"],
    )
    rundir.write_run_record(run, cfg, cfg.grammar.load())
    save_checkpoint(
        run, 1, build_model(gpt_config(cfg.model, Vocab.from_grammar(G).size)), None, {}
    )
    argv = ["eval", str(run), "--corrupt", "0.15", "--cut", "10", "--n", "40", "--n-kl", "4"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "robust_ceiling cut=10 gamma=0.15 method=exact" in out
    rows = json.loads((run / "eval" / "summary.json").read_text())["rows"]
    by = {r["metric"]: r for r in rows if r["family"] == "robustness"}
    assert set(by) == {
        "robust_clean",
        "robust_no_new_errors",
        "robust_clean_control",
        "prompt_still_viable",
        "robust_map_repair",
        "robust_ceiling",
    }
    for name in ("robust_map_repair", "robust_ceiling"):
        r = by[name]
        assert r["method"] == "exact" and r["n"] == 40 and (r["cut"], r["gamma"]) == (10, 0.15)
        assert 0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1
    # repairing then completing is one completion per prompt: never above the best one
    assert 0.3 < by["robust_map_repair"]["value"] <= by["robust_ceiling"]["value"] < 1
    assert by["robust_clean_control"]["n"] == 40 and by["robust_clean_control"]["temperature"] == 1
    body = json.loads((run / "eval" / "robustness.json").read_text())
    refs = body["robustness"][0]["references"]
    assert refs["n_sentences"] == 247_347 and refs["reason"] is None
    assert set(body["definitions"]) >= set(by)


def test_absent_references_are_rows_without_a_value():
    from cfglab.evaluate.robustness import summary_rows

    rate = {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10}
    refs = {"map_repair": None, "ceiling": None, "reason": "too many prompts", "seconds": 0.0}
    result = [
        {"cut": 50, "gamma": 0.15, "temperature": t, "clean": rate, "no_new_errors": rate,
         "clean_control": rate, "still_viable": rate, "references": refs}
        for t in (0.5, 1.0)
    ]  # fmt: skip
    rows = summary_rows(result)
    absent = [r for r in rows if r["metric"] in ("robust_map_repair", "robust_ceiling")]
    assert len(absent) == 2 and all(r["value"] is None and r["method"] == "absent" for r in absent)
    assert sum(r["metric"] == "robust_clean_control" for r in rows) == 2  # per temperature
    assert sum(r["metric"] == "prompt_still_viable" for r in rows) == 1  # per (gamma, cut)


def test_the_clean_control_completes_the_same_prompts_uncorrupted():
    """A generator that continues a prompt correctly only when it is one of the pool's clean
    prompts: the control (the same prompts uncorrupted) is 1, the corrupted score far lower,
    and both are scored on the same n prompts."""
    from cfglab.config import EvalConfig
    from cfglab.evaluate.adapters import uniform_logprob_fn
    from cfglab.evaluate.context import EvalContext
    from cfglab.evaluate.run import evaluate

    pool = strings(200)
    rest = {tuple(x[:CUT].tolist()): x[CUT:] for x in pool}

    def planted(temperature):
        def generate(prompts, rng):
            tails = [rest.get(tuple(p[1:].tolist()), np.array([2, 2, 2, 2])) for p in prompts]
            return [np.concatenate([p, t, [EOS]]) for p, t in zip(prompts, tails, strict=True)]

        return generate

    settings = EvalConfig(n_samples=60, n_kl=4, cuts=[0, CUT], corrupt=[0.3], n_fixed_prompt=0)
    ctx = EvalContext(G, uniform_logprob_fn(G.n_t + 4), planted, settings, max_len=60)
    ctx.strings_longer_than = lambda n, cut, purpose: [x for x in pool if len(x) > cut][:n]
    (r,) = evaluate(ctx, ["robustness"])["results"]["robustness"]
    assert r["clean_control"]["accuracy"] == 1.0 and r["clean_control"]["n"] == 60
    assert r["clean"]["accuracy"] < 0.5 and r["clean"]["n"] == 60
