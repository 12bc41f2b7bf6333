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
    assert cells[names.index("accuracy cut0 T=0.1")].startswith("1 ")
    assert cells[names.index("accuracy cut0 T=1")].startswith("0.75 ")


def test_dynamics_rows_aggregate_per_step_and_stay_out_of_the_final_columns(tmp_path):
    """A dynamics row (one per kept checkpoint) is its own group per step; the final model's
    accuracy column shows only the eval stage's number, the emergence step its own column."""
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
    assert cells[names.index("accuracy cut0")].startswith("0.9 ")
    assert cells[names.index("accuracy emerges (step)")].startswith("400 ")
