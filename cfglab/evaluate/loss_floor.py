"""The loss floor: a perfect model's training loss on packed windows (stage 6a, metric family).

What the training and validation losses tend to: the exact log-probabilities of fresh true
strings, per predicted token of the packed stream `BOS x EOS BOS ...`. Also the smallest
example of a metric family: DEFINITIONS, `measure(ctx)` and `summary_rows(result)`, plus one
line in cfglab.evaluate.families.FAMILIES.
"""

from __future__ import annotations

import math

import numpy as np

from cfglab.evaluate.context import EvalContext

DEFINITIONS: dict[str, str] = {
    "loss_floor": (
        "a perfect model's training loss on packed windows BOS x EOS BOS ...: sum of -log P(x) / "
        "sum of (n + 2) over 2,000 (N_FLOOR) fresh true strings (the n tokens, EOS and the "
        "certain BOS after it are predicted; window cuts ignored), with its delta-method standard"
        " error; what the training and validation losses tend to."
    ),
}


N_FLOOR = 2000  # true strings behind the loss floor: +-0.3% on the quickstart grammar


def packed_loss_floor(lengths: np.ndarray, log_probs: np.ndarray) -> dict:
    """DEFINITIONS['loss_floor'] from true strings' lengths n and exact log P(x): a ratio
    estimator sum(-log P) / sum(n + 2) and its delta-method standard error."""
    h = -np.asarray(log_probs, dtype=np.float64)
    d = np.asarray(lengths, dtype=np.float64) + 2
    m = len(h)
    ratio = float(h.sum() / d.sum())
    resid = h - ratio * d  # the ratio estimator's linearisation
    se = float(resid.std(ddof=1) / math.sqrt(m) / d.mean()) if m > 1 else float("nan")
    return {"value": ratio, "stderr": se, "n_strings": m}


def measure(ctx: EvalContext) -> dict:
    """packed_loss_floor of N_FLOOR fresh true strings (stream 'eval_floor')."""
    from cfglab.exact import inside

    strings = ctx.true_strings(N_FLOOR, "eval_floor")
    log_p = ctx.exact(inside.log_prob, ctx.grammar, strings)
    return packed_loss_floor(np.array([len(x) for x in strings]), log_p)


def summary_rows(result: dict) -> list[dict]:
    half = 1.96 * result["stderr"]
    return [
        {
            "metric": "loss_floor",
            "value": result["value"],
            "ci_low": result["value"] - half,
            "ci_high": result["value"] + half,
            "n": result["n_strings"],
        }
    ]
