"""The in-context family (cfglab.evaluate.in_context): the oracle's loss is each window's exact
log-probability (brute-force enumeration of a tiny family's strings), the n-gram baseline is a
hand computation, a window-exact model has no gap and a uniform one log V, generations are
judged by their own window's grammar; and `cfglab run` trains and evaluates such a run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cfglab.config import EvalConfig
from cfglab.data.in_context import InContextSpec
from cfglab.data.vocab import BOS
from cfglab.evaluate import in_context as F
from cfglab.evaluate.adapters import exact_logprob_fn, uniform_logprob_fn
from cfglab.evaluate.context import EvalContext
from cfglab.grammar import load
from tests.oracles import all_strings

BASE = load("cfg3b")
# a tiny family: root -> 1-2 symbols of 2, each -> 1-2 terminals: strings of 1..4 tokens
TINY = InContextSpec("random", (1, 2, 3), (1, 2), (1, 2), 4, 4)
SPEC = InContextSpec("random", (1, 3, 3, 3), (2, 3), (2, 3), 4, 26)


def _silent(temperature: float):
    return lambda prompts, rng: list(prompts)  # generates nothing: never a sentence


def _context(model, make_generate=_silent, n: int = 6) -> EvalContext:
    settings = EvalConfig(n_samples=n, n_kl=n, cuts=[0], seed=5)
    return EvalContext(BASE, model, make_generate, settings)


def test_the_oracle_loss_is_the_exact_log_probability_of_each_window() -> None:
    ctx = _context(uniform_logprob_fn(BASE.n_t + 4))
    windows = F._windows(ctx, TINY, 6)
    oracle = F._exact_side(ctx, TINY, windows)["oracle"]  # (N, K)
    assert len({g.to_text().split("\n", 1)[1] for g, _ in windows}) > 1
    for (g, strings), row in zip(windows, oracle, strict=True):
        truth = all_strings(g, 4)  # every sentence with its summed derivation probability
        assert math.isclose(sum(truth.values()), 1.0, rel_tol=1e-9)
        for x, loss in zip(strings, row, strict=False):
            p = truth[tuple(g.terminals[t - 1] for t in x)]
            assert loss == pytest.approx(-math.log(p) / (len(x) + 1), rel=1e-9)


def test_the_ngram_baseline_by_hand() -> None:
    strings = [np.array([1, 2]), np.array([1, 1])]
    got = F.ngram_losses(strings, n_t=2, order=2, alpha=1.0)
    # k = 1: no counts, uniform over '1' '2' EOS; k = 2: bigrams of s1 (BOS 1, 1 2, 2 EOS), add 1
    # P(1 | BOS) = 2/4, P(1 | 1) = 1/4, P(EOS | 1) = 1/4
    assert got[0] == pytest.approx(math.log(3))
    assert got[1] == pytest.approx(-(math.log(2 / 4) + math.log(1 / 4) + math.log(1 / 4)) / 3)
    unigram = F.ngram_losses(strings, n_t=2, order=1, alpha=0.5)
    # k = 2: unigram counts of s1: '1' 1, '2' 1, EOS 1; P = 1.5 / 4.5 for each outcome
    assert unigram[1] == pytest.approx(-math.log(1.5 / 4.5))


def _window_exact_model(windows):
    """A LogProbFn that knows each window's grammar (found by the window's first string) and
    predicts every string of the packed sequence exactly, and BOS after each EOS."""
    by_first = {tuple(s[0]): g for g, s in windows}

    def model(batch):
        out = []
        for seq in batch:
            first_end = int(np.flatnonzero(seq == BOS)[1]) - 1 if (seq == BOS).sum() > 1 else None
            g = by_first[tuple(seq[1:first_end])]
            eos = g.n_t + 1
            rows = np.full((len(seq), g.n_t + 4), -np.inf)
            starts = list(np.flatnonzero(seq == BOS)) + [len(seq)]
            for a, b in zip(starts[:-1], starts[1:], strict=True):
                x = seq[a + 1 : b - 1] if seq[b - 1] == eos else seq[a + 1 : b]
                exact = exact_logprob_fn(g)([np.concatenate([[BOS], x])])[0]  # (n+1, V)
                rows[a : a + len(x) + 1] = exact
                if a + len(x) + 1 < len(seq):  # after EOS comes BOS, certainly
                    rows[a + len(x) + 1] = np.where(np.arange(g.n_t + 4) == BOS, 0.0, -np.inf)
            out.append(rows)
        return out

    return model


def test_a_model_that_knows_each_window_has_no_gap_and_uniform_has_log_v() -> None:
    ctx = _context(uniform_logprob_fn(BASE.n_t + 4))
    windows = F._windows(ctx, SPEC, 6)
    exact = _context(_window_exact_model(windows))
    got = F.measure_windows(exact, SPEC)
    assert [r["k"] for r in got["per_k"]] == [1, 2, 3, 4]
    for r in got["per_k"]:
        assert abs(r["icl_gap"]["value"]) < 1e-9 and r["icl_gap"]["n"] == 6
        assert r["icl_ngram_margin"]["value"] > 0  # the grammar beats any n-gram
    uniform = F.measure_windows(ctx, SPEC)
    for r in uniform["per_k"]:
        assert r["icl_loss"]["value"] == pytest.approx(math.log(BASE.n_t + 4))
        assert r["icl_loss_oracle"]["value"] == pytest.approx(
            got["per_k"][r["k"] - 1]["icl_loss_oracle"]["value"]
        )
    assert uniform["icl_gap_drop"]["value"] == pytest.approx(
        uniform["per_k"][0]["icl_gap"]["value"] - uniform["per_k"][-1]["icl_gap"]["value"]
    )
    rows = F.summary_rows(got)
    assert {r["metric"] for r in rows} == set(F.DEFINITIONS)


def test_generations_are_judged_by_their_own_window_and_another() -> None:
    probe = _context(uniform_logprob_fn(BASE.n_t + 4), n=8)
    windows = F._windows(probe, SPEC, 8)
    k = SPEC.strings_per_window
    truth = {tuple(F.packed(s[:k], BASE.n_t + 1)): s[k] for _, s in windows}

    def make_generate(temperature):  # completes each prompt with the window's true s_{K+1}
        def generate(prompts, rng):
            return [np.concatenate([p, truth[tuple(p[:-1])], [BASE.n_t + 1]]) for p in prompts]

        return generate

    got = F.measure_windows(_context(uniform_logprob_fn(BASE.n_t + 4), make_generate, 8), SPEC)
    (gen,) = got["generations"]
    assert gen["icl_gen_own"]["value"] == 1.0
    assert gen["icl_gen_other"]["value"] == got["icl_gen_base_rate"]["value"]
    assert gen["icl_gen_margin"]["value"] == pytest.approx(1.0 - gen["icl_gen_other"]["value"])


def test_cfglab_run_trains_and_evaluates_an_in_context_run(tmp_path) -> None:
    pytest.importorskip("torch")
    from cfglab.cli import main

    sets = [
        "grammar.name=cfg3b",
        "data.max_len=26",
        "data.in_context={family: random, strings_per_window: 8}",
        "model.block_size=256",
        "model.n_layer=1",
        "model.n_embd=16",
        "model.n_head=2",
        "train.max_steps=3",
        "train.batch_size=2",
        "train.threads=1",
        "train.eval_batches=1",
        "train.keep_steps=[]",
        "eval.n_samples=4",
        "eval.n_kl=4",
        "eval.cuts=[0]",
        "stages=[train, eval, report]",
        f"out_dir={tmp_path}",
        "name=icl",
    ]
    args = ["run", "configs/quickstart.yaml"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    run = tmp_path / "icl"
    assert sorted(p.stem for p in (run / "eval").glob("*.json")) == ["in_context", "summary"]
    body = json.loads((run / "eval" / "in_context.json").read_text())["in_context"]
    assert len(body["per_k"]) == 8 and body["per_k"][0]["icl_loss"]["n"] == 4
    assert "icl_gap" in (run / "report" / "report.md").read_text()
    refused = ["run", "configs/quickstart.yaml", *args[2:], "--set", "stages=[train, analyze]"]
    assert main(refused) == 2  # the analyze stage needs one fixed grammar
