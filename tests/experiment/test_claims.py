"""An experiment file's claims and reference: read into the plan, and every mistake one clear
error at load, before any run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfglab.errors import ConfigError
from cfglab.experiment.grid import load_experiment

ROOT = Path(__file__).resolve().parents[2]
HEAD = f"""name: claims
base: {ROOT / "configs" / "quickstart.yaml"}
grid:
  model.position: [rot, abs, nope]
seeds: [0, 1]
stages: [train, eval]
"""


def _claim(better: str, than: str, metric: str) -> str:
    b, t = (f"{{model.position: {v}}}" for v in (better, than))
    return f"claims:\n  - {{better: {b}, than: {t}, metric: {metric}}}\n"


def _load(tmp_path, tail: str):
    path = tmp_path / "exp.yaml"
    path.write_text(HEAD + tail)
    return load_experiment(path)


def test_claims_and_reference_reach_the_plan(tmp_path):
    exp = _load(
        tmp_path,
        "reference: {model.position: abs}\n"
        "claims:\n"
        "  - {better: {model.position: rot}, than: {model.position: abs}, metric: accuracy,"
        " cut: 0}\n"
        "  - {order: {model.position: [rot, abs, nope]}, metric: kl}\n",
    )
    plan = exp.plan()
    assert plan["reference"] == {"model.position": "abs"}
    assert plan["claims"][0] == {
        "better": {"model.position": "rot"},
        "than": {"model.position": "abs"},
        "metric": "accuracy",
        "cut": 0,
    }
    assert plan["claims"][1]["order"] == {"model.position": ["rot", "abs", "nope"]}


@pytest.mark.parametrize(
    "tail, message",
    [
        ("claims: {metric: kl}\n", "claims: give a list"),
        ("claims: [5]\n", "claims[0]: give a mapping"),
        ("claims:\n  - {metric: kl}\n", "give either better + than, or order"),
        (
            _claim("rot", "abs", "kl")
            .replace("positon", "position")
            .replace("{model.position: rot}", "{model.positon: rot}"),
            "'model.positon' is not a grid axis (did you mean 'model.position'?)",
        ),
        (
            _claim("rel", "abs", "kl"),
            "model.position='rel' is not one of the grid's values",
        ),
        (
            _claim("rot", "abs", "acc"),
            "unknown metric 'acc' (did you mean 'accuracy'?)",
        ),
        (
            "claims:\n  - {order: {model.position: [rot]}, metric: kl}\n",
            "order: give at least two values",
        ),
        (
            _claim("rot", "rot", "kl"),
            "better and than must name the same axes with other values",
        ),
        ("reference: {model.position: alibi}\n", "reference: model.position='alibi' is not one"),
        (
            "claims:\n  - {better: {level: [3]}, than: {level: 1}, metric: emergence_step}\n",
            "better: level: a qualifier is one value",
        ),
    ],
)
def test_bad_claims_are_one_clear_error_at_load(tmp_path, tail, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, tail)
    assert message in str(err.value) and str(err.value).startswith(str(tmp_path / "exp.yaml"))
