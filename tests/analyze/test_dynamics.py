"""Training dynamics: kept checkpoints, the dynamics stage against the eval and probe stages at
the final checkpoint, the emergence table on planted curves, and the report's figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cfglab import cli
from cfglab.analyze.dynamics import (
    accuracy_step_interval,
    emergence,
    emergence_table,
    probe_step_interval,
)
from cfglab.analyze.probe import per_string_counts
from cfglab.config import kept_steps, load_config
from cfglab.errors import ConfigError
from cfglab.evaluate.distribution import kl_by_level, row_levels
from cfglab.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]


def test_kept_steps():
    assert kept_steps("log:8", 3000) == [1, 3, 10, 31, 97, 305, 956, 3000]
    assert kept_steps("log:1", 50) == [50] and kept_steps([9, 3, 9], 10) == [3, 9]
    steps = kept_steps("log:20", 10)  # more than there are steps: each at most once
    assert steps == sorted(set(steps)) and steps[-1] == 10 and len(steps) <= 10
    for bad in ("lin:5", "log:x", "log:0"):
        with pytest.raises(ConfigError, match="train.keep_steps"):
            load_config(None, [f"train.keep_steps={bad}"])
    with pytest.raises(ConfigError, match=r"steps must be in 1..train.max_steps"):
        load_config(None, ["train.max_steps=10", "train.keep_steps=[5, 11]"])


def test_emergence_on_planted_curves():
    steps = [1, 10, 100, 1000]
    e = emergence(steps, [0.5, 0.55, 0.8, 0.9], baseline=0.5)  # halfway = 0.7
    assert e["step"] == 100 and e["bracket"] == [10, 100] and e["halfway"] == pytest.approx(0.7)
    assert emergence(steps, [0.9, 0.9, 0.9, 0.95], 0.5)["bracket"] == [None, 1]
    assert emergence(steps, [0.5, 0.45, 0.4, 0.4], 0.5)["step"] is None  # never rises


def test_per_string_counts_by_hand():
    # two probes over three strings of 2, 3 and 1 tokens; the second probe scored at 3 tokens
    labels = np.array([[0, 1, 1, 0, 2, 1], [1, 1, 0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 0, 2, 0], [1, 0, 0, 1, 1, 1]])
    where = np.array([[1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 1]], dtype=bool)
    out = per_string_counts(pred, labels, np.array([0, 2, 5, 6]), where)
    assert out["correct"].tolist() == [[1, 3, 0], [0, 1, 1]]
    assert out["tokens"].tolist() == [[2, 3, 1], [1, 1, 1]]


def _planted_strings(rng, p_by_step: list[float], n_strings: int, tokens: int = 20):
    """correct (K, S) per kept step: each string's tokens right with the step's probability."""
    correct = np.stack([rng.binomial(tokens, p, size=n_strings) for p in p_by_step])
    return correct.astype(float), np.full(n_strings, float(tokens))


def test_probe_step_interval_collapses_with_many_strings_and_widens_near_the_threshold():
    rng = np.random.default_rng(0)
    steps = [1, 10, 100, 1000]
    twin = np.full(4000, 20.0 * 0.4)  # the twin reads 40% of every string
    # clear crossing: halfway 0.65, the curve jumps from 0.45 to 0.85 at step 100
    correct, tokens = _planted_strings(rng, [0.42, 0.45, 0.85, 0.9], 4000)
    assert probe_step_interval(steps, correct, tokens, twin, rng, n_boot=200) == [100, 100]
    # borderline: step 10 sits at the halfway mark; 30 strings cannot tell 10 from 100
    correct, tokens = _planted_strings(rng, [0.42, 0.65, 0.7, 0.9], 30)
    lo, hi = probe_step_interval(steps, correct, tokens, twin[:30], rng, n_boot=400)
    assert lo == 10 and hi == 100
    # no rise above the twin in most resamples: "never" is the upper end
    correct, tokens = _planted_strings(rng, [0.4, 0.4, 0.4, 0.41], 30)
    assert probe_step_interval(steps, correct, tokens, twin[:30], rng, n_boot=400)[1] is None


def test_probe_step_interval_covers_the_population_step():
    """Monte Carlo: strings whose own accuracy varies (string effects, so tokens are not
    independent); the step at which the population curve crosses halfway is inside the 95%
    interval in at least 85% of 100 replications."""
    rng = np.random.default_rng(1)
    steps = [1, 3, 10, 30, 100]
    means = np.array([0.40, 0.50, 0.62, 0.70, 0.80])  # halfway 0.60 from the twin's 0.40
    truth = steps[int(np.argmax(means >= 0.6))]
    hits = 0
    for _ in range(100):
        ability = rng.normal(0.0, 0.08, size=40)  # per-string offsets
        probs = np.clip(means[:, None] + ability[None, :], 0, 1)
        correct = rng.binomial(10, probs).astype(float)
        tokens = np.full(40, 10.0)
        twin = rng.binomial(10, np.clip(0.4 + ability, 0, 1)).astype(float)
        lo, hi = probe_step_interval(steps, correct, tokens, twin, rng, n_boot=300)
        hits += lo <= truth <= (hi if hi is not None else steps[-1] + 1)
    assert hits >= 85


def test_accuracy_step_interval():
    rng = np.random.default_rng(2)
    steps = [1, 10, 100]
    assert accuracy_step_interval(steps, [0.0, 0.1, 0.9], [10**6] * 3, rng) == [100, 100]
    lo, hi = accuracy_step_interval(steps, [0.0, 0.44, 0.9], [25] * 3, rng)  # halfway 0.45
    assert (lo, hi) == (10, 100)


def test_row_levels_and_kl_by_level_by_hand():
    # tokens 0..3; level-1 subtree ends at token 3, level-2 subtrees end at tokens 1 and 3
    is_boundary = np.array([[0, 0, 0, 1], [0, 0, 0, 1], [0, 1, 0, 1]], dtype=bool)
    assert row_levels(is_boundary) == ["start", "inside", "L2", "inside", "L1"]
    kls = [np.array([1.0, 2.0, 3.0, 4.0, 5.0])]
    out = kl_by_level(kls, [row_levels(is_boundary)])
    assert out == {
        "inside": {"kl": 3.0, "n_rows": 2},
        "start": {"kl": 1.0, "n_rows": 1},
        "L1": {"kl": 5.0, "n_rows": 1},
        "L2": {"kl": 3.0, "n_rows": 1},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dyn") / "run"
    argv = [
        "run",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--no-progress",
        "--out",
        str(out),
        "--set",
        "model.preset=tiny",
        "model.block_size=48",
        "train.batch_size=8",
        "train.max_steps=40",
        "train.keep_steps=log:4",
        "train.ckpt_every=20",
        "train.keep_last=1",
        "train.log_every=10",
        "train.eval_every=20",
        "eval.n_samples=16",
        "eval.n_kl=12",
        "eval.cuts=[0, 3]",
        "eval.n_fixed_prompt=4",
        "dynamics.n_samples=16",
        "dynamics.n_kl=12",
        "probe.n_train=24",
        "probe.n_test=12",
        "probe.steps=20",
        "attention.n_strings=6",
        "stages=[train, eval, analyze, dynamics, report]",
    ]
    assert cli.main(argv) == 0
    return out


def test_kept_checkpoints_survive_pruning(run):
    steps = [s for s, _ in ckpt.list_checkpoints(run)]
    assert kept_steps("log:4", 40) == [1, 3, 12, 40]
    assert steps == [1, 3, 12, 40]  # step 20 (regular, keep_last 1) pruned at step 40


def _at(rows: list[dict], step: int | None, **where) -> list[dict]:
    return [
        r for r in rows if r.get("step") == step and all(r.get(k) == v for k, v in where.items())
    ]


def test_the_final_checkpoint_equals_the_eval_and_analyze_stages(run):
    """The same code at the last checkpoint: every dynamics row there equals the eval and
    analyze stages' row of the same metric and qualifiers (sizes and seeds are the same)."""
    body = json.loads((run / "analyze" / "dynamics.json").read_text())
    rows = body["rows"]
    assert body["steps"] == [1, 3, 12, 40] and {r.get("step") for r in rows} >= {1, 3, 12, 40}
    eval_rows = json.loads((run / "eval" / "summary.json").read_text())["rows"]
    acc = _at(rows, 40, metric="accuracy")
    assert len(acc) == 1 and acc[0]["n"] == 16
    cut0 = next(r for r in eval_rows if r["metric"] == "accuracy" and r["cut"] == 0)
    assert acc[0]["value"] == cut0["value"] and acc[0]["ci_low"] == cut0["ci_low"]
    for metric in ("kl", "kl_by_level", "seq_kl", "cross_entropy"):
        mine = {r.get("level"): r["value"] for r in _at(rows, 40, metric=metric)}
        theirs = {r.get("level"): r["value"] for r in eval_rows if r["metric"] == metric}
        assert mine and mine == pytest.approx(theirs, rel=1e-12), metric
    dist = json.loads((run / "eval" / "distribution.json").read_text())["distribution"]
    by_level = _at(rows, 40, metric="kl_by_level")
    assert sum(r["n"] for r in by_level) == dist["n_rows"]  # every row in exactly one group
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    (val,) = _at(rows, 40, metric="val_loss")
    assert val["value"] == pytest.approx(metrics[-1]["val_loss"], rel=1e-5)
    probe_rows = json.loads((run / "analyze" / "probe.json").read_text())["rows"]
    last = max(r["layer"] for r in probe_rows if r["metric"] == "probe_accuracy")
    compared = 0
    for r in probe_rows:
        if r["metric"] == "probe_accuracy" and r["window"] == "all" and r["layer"] == last:
            quals = {k: v for k, v in r.items() if k not in ("value", "n")}
            (mine,) = _at(rows, 40, **quals)  # dynamics.probe_layers: last (the default)
            assert mine["value"] == pytest.approx(r["value"], abs=1e-12)
            compared += 1
    assert compared == 2 * 2 * 2  # (ancestor, boundary) x 2 levels x (trained, twin)
    assert not _at(rows, 40, metric="probe_accuracy", layer=0)  # only the last layer
    # the random-init twin is measured once: the same numbers at every step
    twin = [
        r["value"] for r in rows if r.get("weights") == "random_init" and r.get("layer") == last
    ]
    assert len(twin) % 4 == 0 and twin[: len(twin) // 4] * 4 == twin
    what = [row["what"] for row in body["emergence"]]
    assert "probe ancestor L1" in what and what[-1] == "generation accuracy cut0"
    steps = [r for r in rows if r["metric"] == "emergence_step"]
    assert len(steps) == len(body["emergence"])  # the emergence table as rows, too


def test_emergence_table_from_rows_by_hand():
    """Planted curves: level 2 gets halfway at step 10, level 1 at step 100, accuracy at 1000;
    the twin's accuracy is each probe's baseline."""
    rows = []
    curves = {2: [0.5, 0.8, 0.9, 0.9], 1: [0.4, 0.45, 0.7, 0.8]}
    for level, values in curves.items():
        for step, v in zip([1, 10, 100, 1000], values, strict=True):
            for layer in (0, 1):
                base = {"metric": "probe_accuracy", "target": "ancestor", "window": "all"}
                rows.append(
                    {
                        **base,
                        "level": level,
                        "layer": layer,
                        "weights": "trained",
                        "value": v if layer == 1 else 0.0,
                        "step": step,
                    }
                )
                rows.append(
                    {
                        **base,
                        "level": level,
                        "layer": layer,
                        "weights": "random_init",
                        "value": 0.4,
                        "step": step,
                    }
                )
    for step, v in zip([1, 10, 100, 1000], [0.0, 0.1, 0.2, 0.9], strict=True):
        rows.append({"metric": "accuracy", "cut": 0, "temperature": 1.0, "value": v, "step": step})
    table = {e["what"]: e for e in emergence_table(rows)}
    assert table["probe ancestor L2"]["step"] == 10  # halfway 0.65, from the twin's 0.4
    assert table["probe ancestor L1"]["step"] == 100 and table["probe ancestor L1"]["bracket"] == [
        10,
        100,
    ]
    assert table["generation accuracy cut0"]["step"] == 1000  # halfway 0.45 from the first 0.0
    assert (
        table["probe ancestor L1"]["ties"] == [] and table["probe ancestor L1"]["interval"] is None
    )
    # a boundary probe at level 1 crossing at step 100 too: reported as a tie, both ways
    for step, v in zip([1, 10, 100, 1000], [0.5, 0.55, 0.9, 0.9], strict=True):
        for weights, value in (("trained", v), ("random_init", 0.5)):
            rows.append(
                {
                    "metric": "probe_accuracy",
                    "target": "boundary",
                    "window": "all",
                    "level": 1,
                    "layer": 1,
                    "weights": weights,
                    "value": value,
                    "step": step,
                }
            )
    table = {e["what"]: e for e in emergence_table(rows)}
    assert table["probe boundary L1"]["step"] == 100
    assert table["probe boundary L1"]["ties"] == ["probe ancestor L1"]
    assert table["probe ancestor L1"]["ties"] == ["probe boundary L1"]
    assert table["probe ancestor L2"]["ties"] == []


def test_the_emergence_steps_have_bootstrap_intervals(run):
    body = json.loads((run / "analyze" / "dynamics.json").read_text())
    steps = body["steps"]
    for e in body["emergence"]:
        if e["step"] is None:
            continue
        lo, hi = e["interval"]
        assert lo in steps and (hi is None or hi in steps), e["what"]
        assert lo <= e["step"] and (hi is None or e["step"] <= hi), e["what"]
    rows = [r for r in body["rows"] if r["metric"] == "emergence_step"]
    assert all("ci_low" in r for r in rows) and len(rows) == len(body["emergence"])


def test_the_dynamics_figures_draw_every_kept_step(run):
    """Every line of every dynamics figure has a point per kept step, and the probe panel a
    dashed random-init line per probe (the twin's level)."""
    body = json.loads((run / "analyze" / "dynamics.json").read_text())
    figures = {f["name"]: f for f in body["figures"]}
    assert {"dynamics_probe", "dynamics_accuracy", "dynamics_kl_level"} <= set(figures)
    for fig in figures.values():
        for panel in fig["panels"]:
            for series in panel["series"]:
                assert series["x"] == body["steps"], (fig["name"], series["label"])
    for panel in figures["dynamics_probe"]["panels"]:
        assert len(panel["hlines"]) == len(panel["series"]) == 2  # levels 1 and 2
        assert all(0 < h["y"] < 1 for h in panel["hlines"])


def test_the_report_draws_the_dynamics(run):
    md = (run / "report" / "report.md").read_text()
    assert "## Training dynamics" in md and "first step at halfway" in md
    assert "95% interval (bootstrap)" in md
    figs = {p.name for p in (run / "report" / "figures").iterdir()}
    assert {
        "dynamics_probe.png",
        "dynamics_accuracy.png",
        "dynamics_kl_level.png",
        "dynamics_heads.png",
    } <= figs


def test_a_longer_resumed_run_keeps_the_checkpoints_kept_so_far(tmp_path):
    """Resuming with a higher max_steps (--allow-changes) moves log:N to new steps; the steps
    the run kept so far stay (the dynamics stage has measured them and may again)."""
    import shutil

    out = tmp_path / "run"
    base = [
        "--no-progress",
        "--out",
        str(out),
        "--set",
        "model.preset=tiny",
        "model.block_size=32",
        "train.batch_size=4",
        "train.keep_steps=log:4",
        "train.ckpt_every=20",
        "train.keep_last=1",
        "train.log_every=10",
        "train.eval_every=20",
    ]
    config = str(ROOT / "configs" / "quickstart.yaml")
    assert cli.main(["train", config, *base, "train.max_steps=40"]) == 0
    before = [s for s, _ in ckpt.list_checkpoints(out)]
    assert before == kept_steps("log:4", 40) == [1, 3, 12, 40]
    longer = ["train", config, "--resume", "--allow-changes", *base, "train.max_steps=80"]
    assert cli.main(longer) == 0
    after = [s for s, _ in ckpt.list_checkpoints(out)]
    # the new schedule's steps past the resume point are kept as well
    assert set(after) == set(before) | {s for s in kept_steps("log:4", 80) if s > 40}
    shutil.rmtree(out)


def test_bad_inputs_to_later_stages_change_nothing(run, tmp_path, capsys):
    """A damaged analyze/dynamics.json makes `cfglab report` refuse before it redraws any
    figure; a file where a stage writes its folder is refused before the stage runs."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    figures = {p: p.read_bytes() for p in (copy / "report" / "figures").iterdir()}
    dyn = copy / "analyze" / "dynamics.json"
    body = json.loads(dyn.read_text())
    body["rows"][1] = {"value": 1.0}  # a row without its metric
    dyn.write_text(json.dumps(body))
    acc_file = copy / "eval" / "accuracy.json"  # a changed result: figures would be redrawn
    acc = json.loads(acc_file.read_text())
    for a in acc["accuracy"]:
        a["accuracy"] = 1.0 - a["accuracy"]
    acc_file.write_text(json.dumps(acc))
    assert cli.main(["report", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cfglab: error: {dyn}: not the shape cfglab writes")
    assert "re-run `cfglab dynamics" in err
    assert {p: p.read_bytes() for p in (copy / "report" / "figures").iterdir()} == figures
    shutil.rmtree(copy / "eval")
    (copy / "eval").write_text("not a folder\n")
    assert cli.main(["eval", str(copy), "--n", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cfglab: error: {copy / 'eval'} is a file where the eval stage writes a folder; "
        "move it away"
    )
