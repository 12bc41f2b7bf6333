"""The shipped experiments (configs/experiments/): each expands and its first run starts; the
committed results (results/<experiment>/results.csv, or results/<experiment>.csv for the designs
not yet redone) are what `cfglab compare` writes for their runs;
and one run, rerun with its seed, gives its committed numbers (`pytest -m experiment`, minutes).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from cfglab.experiment.estimate import plan_lines
from cfglab.experiment.grid import load_experiment
from cfglab.report.compare import FIXED, QUALIFIERS, VALUES

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
PAPER = ["positions", "encoder", "noise", "implicit", "dynamics"]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_each_experiment_expands_and_its_first_run_starts(path, tmp_path):
    from cfglab.stages import run_stages

    exp = load_experiment(path)
    lines = plan_lines(exp, exp.runs, estimate=False)
    assert f"experiment {exp.name}: {len(exp.runs)} runs" in lines[0]
    if path.stem in PAPER:
        assert len({r.seed for r in exp.runs}) >= 3  # every paper experiment has >= 3 seeds
    first = exp.runs[0].config
    # Two windows per step: the paper-scale run's 96 x 512-token batch needs > 20 GB on a CPU,
    # and a GPU-sized model (a preset) starts as a two-layer one of its shape's kind (a step of
    # GPT-2 small takes ~10 s here).
    model = first.model
    if model.preset:
        model = dataclasses.replace(model, preset=None, n_layer=2, n_head=2, n_embd=64)
    cfg = dataclasses.replace(
        first,
        model=model,
        out_dir=str(tmp_path),
        stages=["train"],
        train=dataclasses.replace(
            first.train,
            max_steps=3,
            batch_size=2,
            grad_accum=1,
            keep_steps=[],
            log_every=1,
            eval_every=0,
            tensorboard=False,
        ),
    )
    run_stages(cfg, tmp_path / "first", progress=False)
    assert [line for line in (tmp_path / "first" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", PAPER)
def test_committed_results_are_compare_output_for_every_run_and_seed(name):
    # results/<name>/ (what compare writes: results.csv, summary.csv, paired.csv, verdicts.csv)
    # for a redesigned experiment, results/<name>.csv for one not yet redone
    folder = ROOT / "results" / name
    path = folder / "results.csv" if folder.is_dir() else ROOT / "results" / f"{name}.csv"
    assert path.is_file(), f"{path}: run `cfglab sweep configs/experiments/{name}.yaml`"
    if folder.is_dir():
        assert not (ROOT / "results" / f"{name}.csv").exists()  # the old design's, replaced
        for other in ("summary.csv", "paired.csv", "verdicts.csv"):
            assert (folder / other).is_file(), f"{folder / other}: commit compare's whole output"
    exp = load_experiment(ROOT / "configs" / "experiments" / f"{name}.yaml")
    with open(path) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames
    # "label" (the probes of grammars that are not layered) and "state" (every run was current
    # when compare wrote them) came after these files were written
    if folder.is_dir():  # today's compare: its qualifiers, then any a family adds, then values
        head = [*FIXED[:2], *exp.axes, *FIXED[2:], *QUALIFIERS]
        assert columns[: len(head)] == head and columns[-len(VALUES) :] == VALUES
    else:
        usual = [q for q in QUALIFIERS if q != "label"]
        fixed = [f for f in FIXED if f != "state"]
        assert columns == [*fixed[:2], *exp.axes, *fixed[2:], *usual, *VALUES]
    assert {r["run"] for r in rows} == {r.dir.name for r in exp.runs}
    for run in exp.runs:
        mine = [r for r in rows if r["run"] == run.dir.name]
        assert {r["seed"] for r in mine} == {str(run.seed)}
        for axis, value in run.point.items():
            if value is None:  # a null grid value is an empty cell
                want = {""}
            elif isinstance(value, (dict, list)):
                want = {json.dumps(value)}
            else:
                want = {str(value)}
            assert {r[axis] for r in mine} == want
        assert {r["stage"] for r in mine} >= {"train"}
    for r in rows:
        if r["metric"] in ("accuracy", "robust_clean", "probe_accuracy"):
            assert 0.0 <= float(r["value"]) <= 1.0


@pytest.mark.experiment
def test_one_run_rerun_reproduces_its_committed_numbers(tmp_path):
    """The cheapest run of the noise experiment (clean, seed 0), rerun from scratch."""
    from cfglab.report.compare import RunEntry, run_rows
    from cfglab.stages import run_stages

    exp = load_experiment(
        ROOT / "configs" / "experiments" / "noise.yaml", only=["data.noise.fraction=0.0", "seed=0"]
    )
    spec = exp.runs[0]
    cfg = dataclasses.replace(spec.config, out_dir=str(tmp_path))
    run_stages(cfg, tmp_path / spec.dir.name, progress=False)
    fresh = run_rows(RunEntry(tmp_path / spec.dir.name, exp.name, spec.point, spec.seed))
    with open(ROOT / "results" / "noise.csv") as f:
        committed = [r for r in csv.DictReader(f) if r["run"] == spec.dir.name]
    assert len(fresh) == len(committed)
    for got, want in zip(fresh, committed, strict=True):
        assert got["metric"] == want["metric"]
        assert float(got["value"]) == pytest.approx(float(want["value"]), rel=1e-9, abs=1e-12)
