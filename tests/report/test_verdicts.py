"""`cfglab compare` on an experiment with claims writes paired.csv and verdicts.csv: a planted
effect (the grammar's exact distribution against a uniform model) holds, no effect (the exact
model against itself, on other test strings) is not shown, and a reversed claim is
contradicted; the verdicts are in the report."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

import cfglab.evaluate.adapters as AD
import cfglab.evaluate.run as R
from cfglab import cli, rundir
from cfglab.config import EvalConfig, load_config
from cfglab.grammar.cfg import Grammar

TINY = Grammar.from_text("""
S -> A B [0.6] | B [0.4]
A -> 'a' [0.5] | 'a' 'b' [0.5]
B -> 'b' [0.3] | 'c' A [0.7]
""")
SEEDS = (0, 1, 2, 3)
EMPTY_VIEWS = {"tables": [], "figures": [], "compare": []}


def _model(kind: str):
    if kind == "uniform":
        return AD.uniform_logprob_fn(TINY.n_t + 4)
    return AD.exact_logprob_fn(TINY)


def _experiment(tmp_path: Path, kinds: dict[str, str], claims: list[dict]) -> Path:
    """An experiment folder as a sweep leaves it: the plan and, per grid value and seed, a run
    with config.json and the eval stage's files (the model given by `kinds`)."""
    out = tmp_path / "exp"
    runs = []
    for value, kind in kinds.items():
        for seed in SEEDS:
            name = f"m={value},seed={seed}"
            run = out / name
            run.mkdir(parents=True)
            rundir.write_config(run, load_config(None, [f"train.seed={seed}"]))
            model = _model(kind)
            settings = EvalConfig(n_samples=40, n_kl=10, cuts=[0], seed=seed, n_fixed_prompt=0)
            gen = lambda t, m=model: AD.sampling_generate_fn(m, TINY.n_t + 1, max_new_tokens=8)  # noqa: E731
            R.write_eval(run, R.evaluate_model(TINY, model, gen, settings))
            runs.append({"dir": name, "point": {"m": value}, "seed": seed})
    plan = {
        "name": "exp",
        "axes": ["m"],
        "runs": runs,
        "claims": claims,
        "reference": {"m": list(kinds)[-1]},
    }
    (out / "experiment.json").write_text(json.dumps(plan))
    return out


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "kinds, claim, want",
    [
        ({"exact": "exact", "uniform": "uniform"}, ("exact", "uniform", "accuracy"), "holds"),
        ({"exact": "exact", "uniform": "uniform"}, ("exact", "uniform", "kl"), "holds"),
        (
            {"exact": "exact", "uniform": "uniform"},
            ("uniform", "exact", "accuracy"),
            "contradicted",
        ),
        ({"one": "exact", "two": "exact"}, ("one", "two", "kl"), "not shown"),
    ],
)
def test_planted_effects_get_their_verdicts(tmp_path, kinds, claim, want):
    better, than, metric = claim
    claims = [{"better": {"m": better}, "than": {"m": than}, "metric": metric}]
    exp = _experiment(tmp_path, kinds, claims)
    assert cli.main(["compare", str(exp)]) == 0
    (verdict,) = [v for v in _csv(exp / "compare" / "verdicts.csv") if v["metric"] == metric]
    assert verdict["verdict"] == want and verdict["n_pairs"] == str(len(SEEDS))
    paired = _csv(exp / "compare" / "paired.csv")
    reference = list(kinds)[-1]
    rows = [r for r in paired if r["metric"] == metric and r["axis"] == "m"]
    assert rows and all(r["reference"] == reference for r in rows)
    md = (exp / "compare" / "report.md").read_text()
    assert "## Verdicts" in md and f"**{want}**" in md


def test_claims_on_a_mapping_axis_named_like_a_row_qualifier(tmp_path):
    """A grid axis whose values are whole config sections (the architectures experiment's
    `model`) is paired and judged: claims and references name the mapping in any key order,
    and no row qualifier overwrites the axis (the trained-or-twin qualifier is `weights`)."""
    exact = {"family": "transformer", "position": "rot"}
    uniform = {"family": "transformer", "position": "abs"}
    out = tmp_path / "exp"
    runs = []
    for i, (value, kind) in enumerate(((exact, "exact"), (uniform, "uniform"))):
        for seed in SEEDS:
            name = f"model={i},seed={seed}"
            rundir.write_config(out / name, load_config(None, [f"train.seed={seed}"]))
            model = _model(kind)
            settings = EvalConfig(n_samples=40, n_kl=10, cuts=[0], seed=seed, n_fixed_prompt=0)
            gen = lambda t, m=model: AD.sampling_generate_fn(m, TINY.n_t + 1, max_new_tokens=8)  # noqa: E731
            R.write_eval(out / name, R.evaluate_model(TINY, model, gen, settings))
            # an analysis row qualified by the weights it measured
            rows = [
                {"metric": "probe_accuracy", "weights": "trained", "value": 0.9 - 0.3 * i},
                {"metric": "probe_accuracy", "weights": "random_init", "value": 0.5 + 0.01 * seed},
            ]
            rundir.write_result(
                out / name, f"{rundir.ANALYZE}/probe", {"rows": rows, **EMPTY_VIEWS}
            )
            runs.append({"dir": name, "point": {"model": value}, "seed": seed})
    reordered = [dict(reversed(list(d.items()))) for d in (exact, uniform)]
    claims = [
        {"better": {"model": reordered[0]}, "than": {"model": reordered[1]}, "metric": m}
        for m in ("accuracy", "probe_accuracy")
    ]
    twin_claim = {**claims[1], "weights": "random_init"}  # named: the twins are judged too
    claims.append(twin_claim)
    plan = {"name": "exp", "axes": ["model"], "runs": runs, "claims": claims}
    plan["reference"] = {"model": reordered[1]}
    (out / "experiment.json").write_text(json.dumps(plan))
    assert cli.main(["compare", str(out)]) == 0
    rows = _csv(out / "compare" / "verdicts.csv")
    twins = [v for v in rows if v["weights"] == "random_init"]
    assert len(twins) == 1 and twins[0]["verdict"] == "not shown"  # only where the claim asks
    assert twins[0]["claim"].endswith("weights=random_init)")
    verdicts = {v["metric"]: v for v in rows if v["weights"] != "random_init"}
    assert len(rows) == 3  # a claim that does not name the weights judges the trained models
    assert verdicts["accuracy"]["verdict"] == "holds"
    assert verdicts["probe_accuracy"]["verdict"] == "holds"
    assert verdicts["probe_accuracy"]["n_pairs"] == str(len(SEEDS))
    assert verdicts["probe_accuracy"]["weights"] == "trained"
    results = _csv(out / "compare" / "results.csv")
    assert {r["model"] for r in results} == {json.dumps(exact), json.dumps(uniform)}
    paired = [r for r in _csv(out / "compare" / "paired.csv") if r["metric"] == "accuracy"]
    assert paired and {r["reference"] for r in paired} == {json.dumps(uniform)}


def test_no_row_qualifier_is_named_like_a_config_section():
    """Grid axes are config keys; a qualifier named like a top-level one would overwrite it."""
    from cfglab.report.compare import FIXED, QUALIFIERS

    sections = set(dataclasses.asdict(load_config(None, [])))
    assert {"model", "train", "probe"} <= sections
    assert not sections & set(QUALIFIERS + FIXED)
