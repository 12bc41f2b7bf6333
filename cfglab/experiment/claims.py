"""An experiment file's `claims:` and `reference:`, checked when the file loads (before any run).

    reference: {model.position: abs}          # per axis: the value every other one is paired
                                              # with in paired.csv (default: the first value)
    claims:
      - {better: {model.position: rot}, than: {model.position: abs}, metric: accuracy, cut: 0}
      - {order: {model.position: [rel, rot, abs]}, metric: kl}   # each better than the next
      - {better: {...}, than: {...}, metric: emergence_step, target: ancestor, level: 1,
         higher: false}                       # `higher` overrides the metric's direction
      - {better: {level: 3}, than: {level: 1}, metric: emergence_step, target: ancestor}
                                              # a qualifier, not an axis: two rows of each run

A claim names grid values of the experiment's own axes, a metric some family reports (its
DEFINITIONS), and optional qualifiers that pick the metric's row (cut, temperature, level,
target, ...). `cfglab compare` turns each into verdict rows (cfglab.report.paired): holds,
contradicted or not shown, by a fixed rule on the paired difference's 95% interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cfglab.errors import ConfigError, did_you_mean
from cfglab.report.thresholds import check_threshold, is_threshold

# metrics of the training record and of compare itself (the families' come from DEFINITIONS)
RECORD_METRICS = ("final_loss", "final_val_loss", "loss_above_floor", "val_loss", "emergence_step")
CLAIM_FIELDS = {"better", "than", "order", "metric", "stage", "higher", "above", "below"}


def known_metrics() -> list[str]:
    """Every metric name a run's rows can carry."""
    from cfglab.analyze.families import ANALYSES, OPT_IN_ANALYSES
    from cfglab.evaluate.families import FAMILIES

    names = list(RECORD_METRICS)
    for family in [*FAMILIES.values(), *ANALYSES.values(), *OPT_IN_ANALYSES.values()]:
        names += [m for m in family.DEFINITIONS if m not in names]
    return names


def _grid_value(path: Path, where: str, axis: Any, value: Any, grid: dict) -> None:
    if axis not in grid:
        raise ConfigError(
            f"{path}: {where}: {axis!r} is not a grid axis{did_you_mean(str(axis), grid)}; "
            f"axes: {', '.join(grid) or '(none)'}"
        )
    if value not in grid[axis]:
        raise ConfigError(
            f"{path}: {where}: {axis}={value!r} is not one of the grid's values "
            f"{grid[axis]}; name a value the experiment runs"
        )


def check_reference(path: Path, reference: Any, grid: dict) -> dict[str, Any]:
    """`reference:` as {axis: value}, every value one of its axis's grid values."""
    if reference is None:
        return {}
    if not isinstance(reference, dict):
        raise ConfigError(
            f"{path}: reference: give a mapping axis: value, e.g. {{model.position: abs}}"
        )
    for axis, value in reference.items():
        _grid_value(path, "reference", axis, value, grid)
    return dict(reference)


def _check_one(path: Path, i: int, claim: Any, grid: dict, metrics: list[str]) -> None:
    where = f"claims[{i}]"
    if not isinstance(claim, dict):
        raise ConfigError(
            f"{path}: {where}: give a mapping such as {{better: ..., than: ..., metric: ...}}"
        )
    if is_threshold(claim):  # {metric: m, above: 0}: one metric against a number
        check_threshold(path, where, claim)
    elif ("order" in claim) == ("better" in claim or "than" in claim):
        raise ConfigError(f"{path}: {where}: give either better + than, or order, or above/below")
    elif "order" in claim:
        order = claim["order"]
        if not isinstance(order, dict) or len(order) != 1:
            raise ConfigError(f"{path}: {where}: order: give one axis and its values in order")
        ((axis, values),) = order.items()
        if not isinstance(values, list) or len(values) < 2:
            raise ConfigError(f"{path}: {where}: order: give at least two values of {axis}")
        for value in values:
            if axis in grid or "." in str(axis):
                _grid_value(path, where, axis, value, grid)
    else:
        for side in ("better", "than"):
            if not isinstance(claim.get(side), dict) or not claim[side]:
                raise ConfigError(f"{path}: {where}: {side}: give a mapping axis: value")
            for axis, value in claim[side].items():
                if axis in grid or "." in str(axis):  # a config key must be a grid axis
                    _grid_value(path, f"{where}.{side}", axis, value, grid)
                elif not isinstance(value, (str, int, float)):  # a qualifier such as level
                    raise ConfigError(
                        f"{path}: {where}.{side}: {axis}: a qualifier is one value, e.g. level: 1"
                    )
        if set(claim["better"]) != set(claim["than"]) or claim["better"] == claim["than"]:
            raise ConfigError(
                f"{path}: {where}: better and than must name the same axes with other values"
            )
    metric = claim.get("metric")
    if metric not in metrics:
        raise ConfigError(
            f"{path}: {where}: metric: unknown metric {metric!r}"
            f"{did_you_mean(str(metric), metrics)}; name one a family reports"
        )
    if "higher" in claim and not isinstance(claim["higher"], bool):
        raise ConfigError(f"{path}: {where}: higher: give true or false")
    for key, value in claim.items():
        if key not in CLAIM_FIELDS and not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path}: {where}: {key}: a qualifier is one value, e.g. cut: 0")


def check_claims(path: Path, claims: Any, grid: dict) -> list[dict]:
    """`claims:` as a list of checked claims (ConfigError naming the claim otherwise)."""
    if claims is None:
        return []
    if not isinstance(claims, list):
        raise ConfigError(f"{path}: claims: give a list of claims")
    metrics = known_metrics()
    for i, claim in enumerate(claims):
        _check_one(path, i, claim, grid, metrics)
    return [dict(c) for c in claims]
