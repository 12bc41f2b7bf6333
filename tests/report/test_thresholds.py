"""Threshold claims (`{metric: m, above: 0}`, cfglab.report.thresholds): a metric's seed values
clearly above the number hold, clearly below are contradicted, spread across it are not shown,
qualifiers pick the row; and the experiment file's check refuses malformed ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfglab.errors import ConfigError
from cfglab.experiment.claims import check_claims
from cfglab.report.paired import verdicts


def _rows(metric: str, values: list[float], **quals) -> list[dict]:
    return [
        {"experiment": "e", "seed": s, "stage": "eval", "metric": metric, "value": v, **quals}
        for s, v in enumerate(values)
    ]


def test_verdicts_by_the_interval_of_the_seed_values_against_the_number() -> None:
    rows = _rows("icl_gap_drop", [0.30, 0.35, 0.32])
    rows += _rows("icl_ngram_margin", [-0.2, -0.25, -0.22], k=8)
    rows += _rows("icl_ngram_margin", [0.5, -0.5, 0.1], k=1)
    claims = [
        {"metric": "icl_gap_drop", "above": 0},
        {"metric": "icl_gap_drop", "below": 0.1},
        {"metric": "icl_ngram_margin", "k": 8, "above": 0},
        {"metric": "icl_ngram_margin", "k": 1, "above": 0},
        {"metric": "icl_loss", "above": 0},
    ]
    got = verdicts(rows, [], claims)
    by_claim = {v["claim"]: v for v in got}
    assert by_claim["icl_gap_drop above 0"]["verdict"] == "holds"
    assert by_claim["icl_gap_drop above 0"]["mean_diff"] == pytest.approx(0.97 / 3)
    assert by_claim["icl_gap_drop below 0.1"]["verdict"] == "contradicted"
    assert by_claim["icl_gap_drop below 0.1"]["mean_diff"] == pytest.approx(0.1 - 0.97 / 3)
    assert by_claim["icl_ngram_margin above 0 (k=8)"]["verdict"] == "contradicted"
    assert by_claim["icl_ngram_margin above 0 (k=1)"]["verdict"] == "not shown"
    assert by_claim["icl_loss above 0"]["n_pairs"] == 0  # no run reports it


def test_the_experiment_check_accepts_and_refuses(tmp_path) -> None:
    path = Path(tmp_path / "e.yaml")
    ok = check_claims(path, [{"metric": "icl_gap_drop", "above": 0}], {})
    assert ok == [{"metric": "icl_gap_drop", "above": 0}]
    bad = [
        ({"metric": "icl_gap_drop", "above": 0, "below": 1}, "not both"),
        ({"metric": "icl_gap_drop", "above": "x"}, "give a number"),
        ({"metric": "icl_gap_drop", "above": 0, "higher": True}, "give one kind"),
        ({"metric": "icl_gap_dorp", "above": 0}, "unknown metric"),
    ]
    for claim, message in bad:
        with pytest.raises(ConfigError, match=message):
            check_claims(path, [claim], {})
