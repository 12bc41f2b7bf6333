"""Training dynamics: what the measurements of kept checkpoints say about the path (stage 6b).

The dynamics stage (cfglab.stages.dynamics) measures every kept checkpoint (train.keep_steps)
with the eval and probe stages' own code; this module holds what is specific to looking at the
path: which level's structure each next-token KL row tests, and when each level emerges.

- `row_levels`: the KL rows of a true string grouped by the level of the NT that ends just
  before them. Row k is the next-token distribution after tokens x_1..x_k; if token x_k ends a
  level-l subtree (l the shallowest such level, b# of SPEC.md), row k tests whether the model
  knows where the level-l structure can go next. Row 0 (after BOS alone) is "start"; rows after
  a token that ends no subtree above the terminals are "inside".
- `emergence`: for a curve over steps, the first kept step at which it reaches halfway from its
  baseline (the random-init twin's value for probes; the first checkpoint's for generation
  accuracy) to its final value, with the two checkpoints that bracket that crossing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cfglab.analyze.attention import shallowest_end


def row_levels(is_boundary: np.ndarray) -> list[str]:
    """(L, n) boundaries of one string -> the n + 1 KL rows' groups ("start", "inside", "L1"..)."""
    sharp = shallowest_end(is_boundary)  # (n,) the shallowest level >= 1 ending at each token
    return ["start"] + [f"L{lev}" if lev > 0 else "inside" for lev in sharp.tolist()]


def kl_by_level(row_kls: Sequence[np.ndarray], groups: Sequence[list[str]]) -> dict[str, dict]:
    """Mean row KL per group, pooled over strings: {group: {"kl", "n_rows"}}."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for kls, labels in zip(row_kls, groups, strict=True):
        for value, group in zip(kls.tolist(), labels, strict=True):
            sums[group] = sums.get(group, 0.0) + value
            counts[group] = counts.get(group, 0) + 1
    order = sorted(sums, key=lambda g: (g not in ("start", "inside"), g))
    return {g: {"kl": sums[g] / counts[g], "n_rows": counts[g]} for g in order}


def emergence(steps: Sequence[int], values: Sequence[float], baseline: float) -> dict:
    """The first step whose value reaches baseline + (final - baseline) / 2; its bracket is the
    kept step before it (None at the first). No crossing (final <= baseline): step None."""
    final = values[-1]
    half = baseline + (final - baseline) / 2
    out = {"baseline": baseline, "final": final, "halfway": half, "step": None, "bracket": None}
    if not final > baseline:
        return out
    for i, (step, value) in enumerate(zip(steps, values, strict=True)):
        if value >= half:
            out["step"] = step
            out["bracket"] = [steps[i - 1] if i else None, step]
            break
    return out
