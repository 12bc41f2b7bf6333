"""Paired statistics and claims: the sign-flip p-value by hand, the t-interval against an
independent computation, planted effects recovered (holds), absent ones not claimed (not
shown), reversed ones caught (contradicted), and missing partners listed."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from cfglab.report.paired import expand_claims, paired, sign_flip_p, verdict, verdicts


def _runs(effect: float, seeds: int = 5, noise: float = 0.02, metric: str = "accuracy"):
    """Tidy rows of a grid over model.position (rot, abs) and `seeds` seeds: rot's value is
    abs's plus `effect` plus noise, seed by seed (a seed moves both: the paired design)."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        base = 0.5 + 0.2 * rng.standard_normal()  # big seed-to-seed variation, shared
        for position, shift in (("abs", 0.0), ("rot", effect)):
            value = base + shift + noise * rng.standard_normal()
            rows.append(
                {"experiment": "e", "run": f"{position},{seed}", "model.position": position,
                 "seed": seed, "stage": "eval", "metric": metric, "cut": 0, "value": value,
                 "n": 100}
            )  # fmt: skip
    return rows


def test_sign_flip_p_by_hand():
    assert sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)  # all + or all -
    assert sign_flip_p([1.0, -1.0]) == 1.0
    # +-3 +-1 +-1 +-1: |sum| >= 4 in 4 of the 8 assignments with +3, and as many with -3
    assert sign_flip_p([3.0, -1.0, 1.0, 1.0]) == pytest.approx(8 / 16)


def test_paired_differences_and_t_interval():
    rows = _runs(0.1)
    (row,) = paired(rows, ["model.position"], {"model.position": "abs"})[0]
    diffs = []
    for seed in range(5):
        get = {r["model.position"]: r["value"] for r in rows if r["seed"] == seed}
        diffs.append(get["rot"] - get["abs"])
    half = 2.776 * statistics.stdev(diffs) / math.sqrt(5)  # t(0.975, df=4)
    assert row["value"] == "rot" and row["reference"] == "abs" and row["n_pairs"] == 5
    assert row["mean_diff"] == pytest.approx(statistics.fmean(diffs))
    assert row["ci_low"] == pytest.approx(row["mean_diff"] - half)
    assert row["p_value"] == pytest.approx(2 / 32)  # every seed agrees
    # the marginal intervals overlap (seed variation 0.2), the paired one excludes 0
    assert row["ci_low"] > 0


@pytest.mark.parametrize(
    "effect, metric, want",
    [
        (0.1, "accuracy", "holds"),
        (0.0, "accuracy", "not shown"),
        (-0.1, "accuracy", "contradicted"),
        (-0.1, "kl", "holds"),  # lower is better for a KL
    ],
)
def test_claims_get_the_fixed_rule_s_verdict(effect, metric, want):
    rows = _runs(effect, metric=metric)
    claim = {"better": {"model.position": "rot"}, "than": {"model.position": "abs"}}
    (row,) = verdicts(rows, ["model.position"], [{**claim, "metric": metric, "cut": 0}])
    assert row["verdict"] == want
    assert row["claim"] == f"model.position=rot better than model.position=abs on {metric} (cut=0)"


def test_order_claims_and_unpaired_runs():
    claims = expand_claims([{"order": {"model.position": ["rel", "rot", "abs"]}, "metric": "kl"}])
    assert [(c["better"], c["than"]) for c in claims] == [
        ({"model.position": "rel"}, {"model.position": "rot"}),
        ({"model.position": "rot"}, {"model.position": "abs"}),
    ]
    rows = [r for r in _runs(0.1) if not (r["model.position"] == "abs" and r["seed"] == 4)]
    out, unpaired = paired(rows, ["model.position"], {"model.position": "abs"})
    assert out[0]["n_pairs"] == 4
    assert unpaired == [
        {"experiment": "e", "axis": "model.position", "value": "rot", "point": ("rot",),
         "seed": 4, "reason": "no run at model.position=abs"}
    ]  # fmt: skip
    assert verdict(None, None) == "not shown"


def _emergence_rows(steps_by_level: dict[int, list[int]], weights: str = "trained") -> list[dict]:
    """The dynamics stage's emergence rows of one arm over seeds: level -> step per seed."""
    return [
        {"experiment": "e", "run": f"rot,{seed}", "model.position": "rot", "seed": seed,
         "stage": "dynamics", "metric": "emergence_step", "target": "ancestor", "level": level,
         "weights": weights, "value": step, "n": 0}
        for level, steps in steps_by_level.items()
        for seed, step in enumerate(steps)
    ]  # fmt: skip


@pytest.mark.parametrize(
    "deep, want",
    [
        ([300, 600, 900], "holds"),  # level 3 first in every seed, by 900-1500 steps
        ([2700, 3000, 3000], "contradicted"),  # level 3 last
        ([1800, 2400, 2400], "not shown"),  # a tie in two seeds
    ],
)
def test_a_claim_may_compare_two_rows_of_each_run_by_a_qualifier(deep, want):
    rows = _emergence_rows({1: [1800, 2100, 2400], 3: deep})
    rows += _emergence_rows({1: [10, 10, 10], 3: [9000, 9000, 9000]}, weights="random_init")
    claim = {"better": {"level": 3}, "than": {"level": 1}, "metric": "emergence_step",
             "target": "ancestor"}  # fmt: skip
    (row,) = verdicts(rows, ["model.position"], [claim])
    diffs = [b - a for a, b in zip(deep, [1800, 2100, 2400], strict=True)]  # earlier is better
    assert row["verdict"] == want and row["n_pairs"] == 3
    assert row["mean_diff"] == pytest.approx(statistics.fmean(diffs))
    assert row["model.position"] == "rot" and "level" not in row  # the compared qualifier
    # an order over a qualifier expands to its pairwise claims, each judged the same way
    rows += _emergence_rows({2: [1500, 1500, 1500]})
    order = {"order": {"level": [3, 2, 1]}, "metric": "emergence_step", "target": "ancestor"}
    got = [r["claim"] for r in verdicts(rows, ["model.position"], [order])]
    assert got == [
        "level=3 better than level=2 on emergence_step (target=ancestor)",
        "level=2 better than level=1 on emergence_step (target=ancestor)",
    ]
