"""compare's aggregation over seeds: intervals against an independent t computation, kept
inside a metric's possible range, and a report table that never shows one temperature's
number under another's column."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from cfglab.report.compare import aggregate
from cfglab.report.plots_compare import compare_markdown


def _rows(metric: str, values: list[float], **qualifiers) -> list[dict]:
    return [
        {"experiment": "e", "x": 1, "stage": "eval", "metric": metric, "value": v, **qualifiers}
        for v in values
    ]


def test_the_seed_interval_is_the_student_t_interval():
    values = [0.2, 0.5, 0.35, 0.41]
    (a,) = aggregate(_rows("kl", values), ["x"])
    half = 3.182 * statistics.stdev(values) / math.sqrt(4)  # t(0.975, df=3)
    assert a["mean"] == pytest.approx(statistics.fmean(values))
    assert a["seed_ci_low"] == pytest.approx(a["mean"] - half)
    assert a["seed_ci_high"] == pytest.approx(a["mean"] + half)


@pytest.mark.parametrize(
    ("metric", "values", "low", "high"),
    [
        ("kl", [0.0, 0.0001, 0.0085], 0.0, None),  # a KL is never negative
        ("final_val_loss", [0.01, 0.0, 0.3], 0.0, None),
        ("accuracy", [1.0, 0.95, 0.6], None, 1.0),  # a share stays in [0, 1]
        ("probe_accuracy", [0.0, 0.02, 0.4], 0.0, None),
    ],
)
def test_intervals_stay_inside_the_metrics_range(metric, values, low, high):
    (a,) = aggregate(_rows(metric, values, n=100), ["x"])
    if low is not None:
        assert a["seed_ci_low"] == low
    if high is not None:
        assert a["seed_ci_high"] == high
    assert a["seed_ci_low"] <= a["mean"] <= a["seed_ci_high"]


def test_accuracy_at_several_temperatures_gets_one_column_each(tmp_path):
    rows = []
    for temperature, value in [(0.1, 1.0), (1.0, 0.75)]:
        rows += _rows("accuracy", [value] * 3, cut=0, temperature=temperature, n=100)
    text = compare_markdown([], ["x"], aggregate(rows, ["x"]), {}, Path(tmp_path))
    header, _, body = text.splitlines()[-3:]
    assert "accuracy cut0 T=0.1" in header and "accuracy cut0 T=1" in header
    cells = [c.strip() for c in body.strip("|").split("|")]
    names = [c.strip() for c in header.strip("|").split("|")]
    # every seed identical: no zero-width t-interval, the pooled Wilson interval, said so
    assert cells[names.index("accuracy cut0 T=0.1")].startswith("1.00 (pooled [0.")
    assert cells[names.index("accuracy cut0 T=0.1")].endswith(", seeds identical)")
    assert cells[names.index("accuracy cut0 T=1")].startswith("0.750 (pooled [")


def test_dynamics_rows_aggregate_per_step_and_stay_out_of_the_final_columns(tmp_path):
    """A dynamics row (one per kept checkpoint) is its own group per step; the final model's
    accuracy column shows only the eval stage's number; the emergence step is the dynamics
    stage's view, a table of its own."""
    from cfglab.analyze.dynamics import COMPARE
    from cfglab.report.views import view_table

    rows = _rows("accuracy", [0.9] * 3, cut=0, temperature=1.0, n=100)
    for step, value in [(10, 0.0), (100, 0.5), (1000, 0.9)]:
        rows += [
            {**r, "stage": "dynamics", "step": step, "value": value}
            for r in _rows("accuracy", [value] * 3, cut=0, temperature=1.0, n=50)
        ]
    rows += [
        {**r, "stage": "dynamics"}
        for r in _rows("emergence_step", [100, 100, 1000], target="accuracy", cut=0)
    ]
    agg = aggregate(rows, ["x"])
    per_step = {a["step"]: a["mean"] for a in agg if a.get("step") is not None}
    assert per_step == {10: 0.0, 100: 0.5, 1000: 0.9}
    text = compare_markdown([], ["x"], agg, {}, Path(tmp_path))
    header, _, body = text.splitlines()[-3:]
    names = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in body.strip("|").split("|")]
    assert cells[names.index("accuracy cut0")].startswith("0.900 ")
    emergence = next(v for v in COMPARE if v["name"] == "emergence")
    table = view_table(emergence, agg, ["x"])
    assert table["header"] == ["x", "value"] and table["rows"][0][1].startswith("400 [")
    by_step = next(v for v in COMPARE if v["name"] == "dynamics_accuracy")
    table = view_table(by_step, agg, ["x"])
    assert table["header"] == ["x", "temperature", "step=10", "step=100", "step=1000"]
    assert [c.split()[0] for c in table["rows"][0][2:]] == ["0.000", "0.500", "0.900"]


def _fake_run(folder: Path, loss: float, seed: int = 0) -> Path:
    """A run folder as compare reads it: config.json and a metrics.jsonl ending at `loss`."""
    import json

    from cfglab import rundir
    from cfglab.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "quickstart.yaml", [f"train.seed={seed}"])
    folder.mkdir(parents=True)
    rundir.write_config(folder, cfg)
    record = {"step": 10, "loss": loss, "val_loss": loss}
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return folder


def _final_losses(out: Path) -> list[dict]:
    import csv

    with open(out / "summary.csv") as f:
        return [r for r in csv.DictReader(f) if r["metric"] == "final_loss"]


def test_runs_are_counted_once_and_never_pooled_by_a_shared_name(tmp_path):
    """The same folder given twice is one run; two runs that share a folder name (plain runs,
    or experiments of one name in two folders) stay two groups, never one mean over 'seeds'."""
    import json

    from cfglab.report.compare import compare

    a = _fake_run(tmp_path / "a" / "run1", 1.0)
    b = _fake_run(tmp_path / "b" / "run1", 3.0)
    summary = _final_losses(compare([a, b, a], tmp_path / "c1"))
    assert sorted((float(r["mean"]), r["n_seeds"]) for r in summary) == [(1.0, "1"), (3.0, "1")]
    for exp, loss in [(tmp_path / "e1", 1.0), (tmp_path / "e2", 3.0)]:
        _fake_run(exp / "x=1,seed=0", loss)
        runs = [{"dir": "x=1,seed=0", "point": {"x": 1}, "seed": 0}]
        plan = {"name": "same", "axes": ["x"], "runs": runs}
        (exp / "experiment.json").write_text(json.dumps(plan))
    out = compare([tmp_path / "e1", tmp_path / "e2"], tmp_path / "c2")
    summary = _final_losses(out)
    assert sorted((float(r["mean"]), r["n_seeds"]) for r in summary) == [(1.0, "1"), (3.0, "1")]
    table = [ln for ln in (out / "report.md").read_text().splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| experiment | x |") and len(table) == 3  # header + 2 rows


def test_each_grid_point_shows_its_own_last_layer(tmp_path):
    """A grid over model.n_layer: the probe view of every point reads its own deepest layer."""
    from cfglab.analyze.probe_tree import COMPARE
    from cfglab.report.views import view_table

    rows = []
    for x, n_layer in [(1, 2), (2, 4)]:
        for layer in range(n_layer + 1):
            rows += [
                {
                    "experiment": "e",
                    "x": x,
                    "stage": "probe",
                    "metric": "probe_accuracy",
                    "target": "ancestor",
                    "window": "all",
                    "level": 1,
                    "layer": layer,
                    "weights": "trained",
                    "value": 0.5 + 0.1 * layer,
                }
            ]
    table = view_table(COMPARE[0], aggregate(rows, ["x"]), ["x"])
    cells = {row[0]: row[-1] for row in table["rows"]}
    assert cells["1"].startswith("0.7") and cells["2"].startswith("0.9")


def test_compare_survives_nan_and_refuses_misshapen_results_before_writing(tmp_path, capsys):
    """A NaN proportion (a metric with no defined value) is left out of the intervals; a result
    file of another shape, or a folder where results.csv goes, is one error line, exit 2, and
    the last good report stays as it was."""
    from cfglab import cli, rundir

    good = _fake_run(tmp_path / "good", 1.0)
    nan = _fake_run(tmp_path / "nan", 2.0, seed=1)
    for run, value in [(good, 0.5), (nan, float("nan"))]:
        row = {"family": "accuracy", "metric": "accuracy", "cut": 0, "temperature": 1.0}
        row.update(value=value, n=10)
        rundir.write_result(run, "eval/summary", {"rows": [row]})
    out = tmp_path / "report"
    assert cli.main(["compare", str(good), str(nan), "--out", str(out)]) == 0
    before = (out / "results.csv").read_text()
    bad = _fake_run(tmp_path / "bad", 3.0, seed=2)
    rundir.write_result(bad, "analyze/probe", {"tables": [{"target": "ancestor"}]})
    for args, needle in [
        ([str(good), str(bad), "--out", str(out)], f"{bad}/analyze/probe.json: not the shape"),
        ([str(good), str(bad), "--out", str(tmp_path / "new")], "not the shape"),
        ([str(good), "--out", str(tmp_path / "odd")], "is a folder where the report writes"),
    ]:
        (tmp_path / "odd" / "results.csv").mkdir(parents=True, exist_ok=True)
        capsys.readouterr()
        assert cli.main(["compare", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("cfglab: error: ") and needle in err and "\n" not in err
    assert (out / "results.csv").read_text() == before
    assert not (tmp_path / "new").exists()
    capsys.readouterr()
    assert cli.main(["report", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cfglab: error: {bad}") and "\n" not in err
