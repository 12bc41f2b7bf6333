"""Claims about a metric's own value against a fixed number: `above:` / `below:` (no torch).

    claims:
      - {metric: icl_gap_drop, above: 0}              # every grid point: its seeds' values > 0
      - {metric: icl_ngram_margin, k: 8, above: 0}    # qualifiers pick the row, as in any claim

A paired claim (cfglab.report.paired) compares two grid values; some questions are about one
run's own rows instead, e.g. "the loss of the k-th string of a window falls with k", which a
family reports as a within-run difference (cfglab.evaluate.in_context's icl_gap_drop: the gap
at k = 1 minus the gap at k = K, paired per window). A threshold claim judges such a metric
against the number it names, per grid point, across the seeds: d_s = value_s - threshold
(threshold - value_s for `below:`), so positive supports the claim, and the verdict is the same
fixed rule as a paired claim's on the 95% t-interval of the mean of d_s (holds, contradicted,
not shown; not shown with fewer than 2 seeds). Each seed's value is one number: the interval is
across seeds, so it includes the training's variance, not only the test data's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from cfglab.errors import ConfigError

THRESHOLD_KEYS = ("above", "below")


def is_threshold(claim: dict) -> bool:
    """Whether a claim judges a metric against a number (above: / below:)."""
    return any(k in claim for k in THRESHOLD_KEYS)


def check_threshold(path: Path, where: str, claim: dict) -> None:
    """ConfigError unless the claim names exactly one of above/below, as a finite number, and
    no grid values to compare (better, than, order)."""
    named = [k for k in THRESHOLD_KEYS if k in claim]
    if len(named) != 1:
        raise ConfigError(f"{path}: {where}: give above or below, not both")
    value = claim[named[0]]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{path}: {where}: {named[0]}: give a number, e.g. {named[0]}: 0")
    if any(k in claim for k in ("better", "than", "order", "higher")):
        raise ConfigError(
            f"{path}: {where}: a claim with {named[0]} judges one metric against a number; "
            "better/than/order/higher compare grid values: give one kind"
        )


def threshold_text(claim: dict, skip: set[str]) -> str:
    """E.g. 'icl_gap_drop above 0 (k=8)'."""
    side = "above" if "above" in claim else "below"
    quals = " ".join(f"{k}={v}" for k, v in claim.items() if k not in skip and k != side)
    return f"{claim['metric']} {side} {claim[side]:g}" + (f" ({quals})" if quals else "")


def threshold_verdicts(
    values: dict, axes: list[str], claim: dict, skip: set[str], summarize, verdict
) -> list[dict]:
    """verdicts.csv's rows of one threshold claim: per grid point and matching row, the mean
    of the seeds' signed distances to the threshold, its interval, p-value and verdict.
    `values`: (experiment, grid point, seed) -> {row key: value} (paired._values); `skip`: the
    claim's keys that are not qualifiers; `summarize`, `verdict`: paired's, so the rule is one."""
    side = "above" if "above" in claim else "below"
    sign = 1.0 if side == "above" else -1.0
    quals = {k: v for k, v in claim.items() if k not in skip and k not in THRESHOLD_KEYS}
    groups: dict[tuple, list[float]] = defaultdict(list)
    for (exp, point, _seed), metrics in values.items():
        for key, v in metrics.items():
            k: dict[str, Any] = dict(key)
            if k.get("metric") != claim["metric"] or k.get("step") is not None:
                continue
            if claim.get("stage") not in (None, k.get("stage")):
                continue
            if any(k.get(q) != val for q, val in quals.items()):
                continue
            if "weights" not in quals and k.get("weights", "trained") != "trained":
                continue  # about the trained model unless the claim names the twin
            groups[(exp, point, key)].append(sign * (v - claim[side]))
    text = threshold_text(claim, skip)
    if not groups:
        note = "no runs with this metric"
        return [{"claim": text, "metric": claim["metric"], "n_pairs": 0, "verdict": "not shown",
                 "note": note}]  # fmt: skip
    out = []
    for (exp, point, key), diffs in groups.items():
        row = {"claim": text, "experiment": exp, **dict(zip(axes, point, strict=True))}
        row.update(dict(key))
        row.update(summarize(diffs))
        row["verdict"] = verdict(row["ci_low"], row["ci_high"])
        out.append(row)
    return out
