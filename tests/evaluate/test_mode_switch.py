"""Robustness per (gamma, temperature) and the unprompted error rate per temperature: planted
generators whose error rates are known by construction are recovered within the intervals,
through the eval families and through `cfglab eval` on a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cfglab.config import EvalConfig
from cfglab.data.sampler import sample
from cfglab.evaluate.adapters import exact_logprob_fn
from cfglab.evaluate.context import EvalContext
from cfglab.evaluate.run import evaluate
from cfglab.grammar import load

ROOT = Path(__file__).resolve().parents[2]
G = load(ROOT / "configs" / "grammars" / "quickstart.cfg")
EOS = G.n_t + 1
CUT = 5
# planted error rates: at temperature T a completion is wrong with probability ERR[T]
ERR = {0.1: 0.05, 0.5: 0.3, 1.0: 0.6}
BAD_TAIL = np.array([2, 2, 2, 2, 2, 2])  # never completes a sentence (checked below)


def planted(temperature: float):
    """A generator that knows the truth: cut0 prompts get a fresh true string, cutC prompts
    (corrupted or not) the clean prompt's true rest; then, with probability ERR[temperature],
    a tail that leaves the language instead."""
    pool = {tuple(x[:CUT].tolist()): x for x in sample(G, 4000, seed=11, labels=False).strings()}

    def generate(prompts, rng):
        out = []
        for p in prompts:
            body = p[1:]
            if len(body) == 0:
                x = sample(G, 1, seed=int(rng.integers(1 << 30)), labels=False).strings()[0]
            else:
                x = pool.get(tuple(body.tolist()))
                x = body if x is None else np.concatenate([body, x[CUT:]])
            if rng.random() < ERR[temperature]:
                x = np.concatenate([x[: max(len(body), 1)], BAD_TAIL])
            out.append(np.concatenate([[0], x, [EOS]]))
        return out

    return generate


def test_planted_error_rates_are_recovered_per_temperature():
    from cfglab.exact import cyk

    assert not cyk.recognize(
        G,
        [
            np.concatenate([x[:CUT], BAD_TAIL])
            for x in sample(G, 50, seed=1, labels=False).strings()
        ],
    ).any()
    settings = EvalConfig(
        n_samples=300,
        n_kl=5,
        cuts=[0, CUT],
        temperatures=sorted(ERR),
        corrupt=[0.0],
        n_fixed_prompt=0,
        seed=3,
    )
    ctx = EvalContext(G, exact_logprob_fn(G), planted, settings, max_len=60)
    ctx.strings_longer_than = _from_pool(ctx)  # prompts whose true rest the generator knows
    out = evaluate(ctx)
    acc = {(a["cut"], a["temperature"]): a for a in out["results"]["accuracy"]}
    for t, err in ERR.items():
        a = acc[(0, t)]
        assert a["ci_low"] <= 1 - err <= a["ci_high"], (t, a["accuracy"])
    rob = out["results"]["robustness"]
    assert [(r["gamma"], r["temperature"], r["cut"]) for r in rob] == [
        (0.0, t, CUT) for t in sorted(ERR)
    ]
    for r in rob:  # gamma 0: the corrupted prompt is the clean one
        err = ERR[r["temperature"]]
        for score in ("clean", "no_new_errors"):
            s = r[score]
            assert s["n"] == 300 and s["ci_low"] <= 1 - err <= s["ci_high"], (r["temperature"], s)
    # the rows every report and `cfglab compare` read
    rows = [x for x in out["rows"] if x["metric"] == "robust_clean"]
    assert sorted(x["temperature"] for x in rows) == sorted(ERR)


def _from_pool(ctx):
    pool = sample(G, 4000, seed=11, labels=False).strings()

    def strings_longer_than(n, cut, purpose):
        return [x for x in pool if len(x) > cut][:n]

    return strings_longer_than


def test_eval_command_writes_robustness_per_gamma_and_temperature(tmp_path, capsys):
    """`cfglab eval RUN --set eval.corrupt=[0.15] eval.temperatures=[0.1,0.2,1.0]` on a run:
    robustness per (gamma, temperature) with intervals, and the two figures in its report."""
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
    model = build_model(gpt_config(cfg.model, Vocab.from_grammar(G).size))
    save_checkpoint(run, 1, model, None, {})
    argv = [
        "eval",
        str(run),
        "--set",
        "eval.corrupt=[0.15]",
        "eval.temperatures=[0.1,0.2,1.0]",
        "eval.n_samples=12",
        "eval.n_kl=4",
        "eval.cuts=[0, 5]",
    ]
    assert cli.main(argv) == 0
    body = json.loads((run / "eval" / "robustness.json").read_text())["robustness"]
    assert [(r["gamma"], r["temperature"]) for r in body] == [(0.15, 0.1), (0.15, 0.2), (0.15, 1.0)]
    for r in body:
        for score in ("clean", "no_new_errors"):
            s = r[score]
            assert s["n"] == 12 and 0 <= s["ci_low"] <= s["accuracy"] <= s["ci_high"] <= 1
    assert cli.main(["report", str(run)]) == 0
    figs = {p.name for p in (run / "report" / "figures").iterdir()}
    assert {"robustness.png", "unprompted_errors.png"} <= figs
    md = (run / "report" / "report.md").read_text()
    assert "robustness.png" in md and "unprompted_errors.png" in md
