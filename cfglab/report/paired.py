"""Paired comparisons and claims over an experiment's runs (no torch): what `cfglab compare`
writes to paired.csv and verdicts.csv.

The design is paired: every seed gives every grid point the same training stream and the same
test data, so a grid value is compared with a reference value *seed by seed*. For an axis `a`,
a value `v` and the reference `r` (the experiment file's `reference:` for that axis, else its
first value), every run at (a = v, the other axes o, seed s) is paired with the run at
(a = r, o, s), and for every metric row both runs have (same stage, metric and qualifiers) the
difference d_s = value(v) - value(r) is taken. Over the seeds:

    mean_diff   mean of d_s
    ci          95% Student t-interval of the mean (n - 1 degrees of freedom)
    p_value     exact two-sided sign-flip permutation p-value: the share of the 2^n sign
                assignments of the d_s whose |mean| is at least the observed |mean| (with 3
                seeds it is never below 0.25: the test is honest about 3 seeds)

Runs without a partner (a seed or grid point missing, a metric one of them lacks) are listed,
never silently dropped.

A claim (the experiment file's `claims:`) says that one grid value is better than another on a
metric, e.g. {better: {model.position: rot}, than: {model.position: abs}, metric: accuracy,
cut: 0}, or orders several values ({order: {model.position: [rel, rot, abs]}, metric: kl}).
better/than may also name a qualifier instead of a grid axis, comparing two rows of each run:
{better: {level: 3}, than: {level: 1}, metric: emergence_step, target: ancestor} pairs, seed by
seed, the step at which the level-3 probe emerges with the level-1 one's.
"Better" is higher, or lower for metrics where lower is better (LOWER_IS_BETTER; `higher:`
overrides). Its verdict is one word from a fixed rule on the paired difference (better minus
worse, signed so that positive supports the claim): **holds** if the 95% interval excludes 0 on
the claim's side, **contradicted** if it excludes 0 on the other side, **not shown** otherwise
(also with fewer than 2 pairs).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from cfglab.report.thresholds import is_threshold, threshold_verdicts

# metrics where a smaller value is better (a claim "better" means lower for them)
LOWER_IS_BETTER = {
    "kl",
    "kl_by_level",
    "seq_kl",
    "cross_entropy",
    "reverse_kl",
    "final_loss",
    "final_val_loss",
    "val_loss",
    "loss_above_floor",
    "emergence_step",
    "icl_loss",
    "icl_loss_oracle",
    "icl_loss_ngram",
    "icl_gap",
    "kl_given_metadata",
    "kl_without_metadata",
}
NOT_KEYS = {"experiment", "run", "seed", "value", "ci_low", "ci_high", "n"}
VERDICTS = ("holds", "contradicted", "not shown")


# two-sided 95% Student t quantiles by degrees of freedom (1..30); the normal's 1.96 beyond
T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t_quantile(df: int) -> float:
    """Two-sided 95% Student t quantile (df >= 1)."""
    return T95[df - 1] if df <= len(T95) else 1.96


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided sign-flip permutation p-value of the mean of paired differences."""
    n = len(diffs)
    if n == 0:
        return float("nan")
    observed = abs(sum(diffs)) - 1e-12 * (1 + abs(sum(diffs)))  # ties count as extreme
    hits = sum(
        abs(sum(s * d for s, d in zip(signs, diffs, strict=True))) >= observed
        for signs in itertools.product((1, -1), repeat=n)
    )
    return hits / 2**n


def summarize(diffs: Sequence[float]) -> dict:
    """n_pairs, mean_diff, the 95% t-interval (None for one pair) and the sign-flip p."""
    n = len(diffs)
    mean = statistics.fmean(diffs) if n else float("nan")
    low = high = None
    if n > 1:
        half = t_quantile(n - 1) * statistics.stdev(diffs) / math.sqrt(n)
        low, high = mean - half, mean + half
    return {
        "n_pairs": n,
        "mean_diff": mean,
        "ci_low": low,
        "ci_high": high,
        "p_value": sign_flip_p(diffs),
    }


def grid_cell(value):
    """A grid value as a table cell: lists and mappings (e.g. eval.cuts, a whole `model`
    section) as their JSON text."""
    return value if isinstance(value, (str, int, float, bool, type(None))) else json.dumps(value)


def same_value(cell, value) -> bool:
    """Whether a row's grid cell is the value an experiment file names (a claim's or a
    reference's, as written in YAML): mappings compare by content, not by key order."""
    if cell == grid_cell(value):
        return True
    if isinstance(value, (dict, list)) and isinstance(cell, str):
        try:
            return json.loads(cell) == value
        except ValueError:
            return False
    return False


def _values(rows: list[dict], axes: list[str]) -> dict[tuple, dict[tuple, float]]:
    """(experiment, grid point, seed) -> {(stage, metric, qualifiers): value}: the finite values
    about each run's final model."""
    out: dict[tuple, dict[tuple, float]] = defaultdict(dict)
    for r in rows:
        v = r.get("value")
        if v is None or r.get("step") is not None or not math.isfinite(float(v)):
            continue  # (the dynamics stage's per-checkpoint rows are not paired here)
        point = tuple(r.get(a) for a in axes)
        key = tuple(sorted((k, r[k]) for k in r if k not in NOT_KEYS and k not in axes))
        out[(r.get("experiment"), point, r.get("seed"))][key] = float(v)
    return out


def paired(
    rows: list[dict], axes: list[str], reference: dict[str, object] | None = None
) -> tuple[list[dict], list[dict]]:
    """paired.csv's rows (module docstring) and the runs without a partner."""
    values = _values(rows, axes)
    out, unpaired = [], []
    for i, axis in enumerate(axes):
        levels = list(dict.fromkeys(p[i] for (_, p, _) in values))
        ref = levels[0] if levels else None
        if reference and axis in reference:
            named = reference[axis]
            ref = next((lev for lev in levels if same_value(lev, named)), grid_cell(named))
        groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
        for (exp, point, seed), metrics in values.items():
            if point[i] == ref:
                continue
            partner = values.get((exp, (*point[:i], ref, *point[i + 1 :]), seed))
            if partner is None:
                unpaired.append(
                    {
                        "experiment": exp,
                        "axis": axis,
                        "value": point[i],
                        "point": point,
                        "seed": seed,
                        "reason": f"no run at {axis}={ref}",
                    }
                )
                continue
            for key, v in metrics.items():
                if key in partner:
                    groups[(exp, point, key)].append((v, partner[key]))
        for (exp, point, key), pairs in groups.items():
            diffs = [a - b for a, b in pairs]
            row = {"experiment": exp, "axis": axis, "value": point[i], "reference": ref}
            row.update({a: p for j, (a, p) in enumerate(zip(axes, point, strict=True)) if j != i})
            row.update(dict(key))
            row.update(summarize(diffs))
            row["mean_value"] = statistics.fmean(a for a, _ in pairs)
            row["mean_reference"] = statistics.fmean(b for _, b in pairs)
            out.append(row)
    return out, unpaired


def expand_claims(claims: list[dict]) -> list[dict]:
    """`order:` claims as the pairwise claims they make (each value better than the next)."""
    out = []
    for claim in claims:
        if "order" in claim:
            ((axis, values),) = claim["order"].items()
            rest = {k: v for k, v in claim.items() if k != "order"}
            for a, b in itertools.pairwise(values):
                out.append({**rest, "better": {axis: a}, "than": {axis: b}, "from_order": True})
        else:
            out.append(claim)
    return out


CLAIM_KEYS = {"better", "than", "order", "metric", "stage", "higher", "from_order"}


def claim_text(claim: dict) -> str:
    better = ", ".join(f"{k}={v}" for k, v in claim["better"].items())
    than = ", ".join(f"{k}={v}" for k, v in claim["than"].items())
    quals = " ".join(f"{k}={v}" for k, v in claim.items() if k not in CLAIM_KEYS)
    return f"{better} better than {than} on {claim['metric']}" + (f" ({quals})" if quals else "")


def verdict(low: float | None, high: float | None) -> str:
    """The fixed rule: the 95% interval of the signed paired difference against 0."""
    if low is None or high is None:
        return "not shown"
    if low > 0:
        return "holds"
    if high < 0:
        return "contradicted"
    return "not shown"


def _partner(values: dict, exp, seed, where: dict, axes: list[str], than: dict) -> dict | None:
    """The metrics of the run at `where` with the axes of `than` set to its values."""
    for (e, point, s), metrics in values.items():
        if e != exp or s != seed:
            continue
        if all(
            same_value(p, than[a]) if a in than else p == where.get(a)
            for a, p in zip(axes, point, strict=True)
        ):
            return metrics
    return None


def _split_sides(claim: dict, axes: list[str]) -> tuple[dict, dict, dict, dict]:
    """better and than as (grid part, qualifier part) each: a claim may compare grid values
    (other runs), qualifier values of one run's rows (e.g. {level: 3} than {level: 1}), or both."""
    parts = []
    for side in ("better", "than"):
        parts.append({k: v for k, v in claim[side].items() if k in axes})
        parts.append({k: v for k, v in claim[side].items() if k not in axes})
    return parts[0], parts[1], parts[2], parts[3]


def verdicts(rows: list[dict], axes: list[str], claims: list[dict]) -> list[dict]:
    """verdicts.csv's rows: per claim and per combination of the grid axes the claim leaves
    free, the signed paired difference (positive supports the claim), its interval, p-value
    and verdict. A claim naming qualifiers in better/than (not grid axes) pairs two rows of the
    same run, seed by seed. A claim is about the trained models: the random-init twins' rows are
    judged only when the claim names them (`weights: random_init`)."""
    values = _values(rows, axes)
    out = []
    for claim in expand_claims(claims):
        if is_threshold(claim):  # {metric: m, above: 0}: cfglab.report.thresholds
            out += threshold_verdicts(values, axes, claim, CLAIM_KEYS, summarize, verdict)
            continue
        quals = {k: v for k, v in claim.items() if k not in CLAIM_KEYS}
        higher = claim.get("higher", claim["metric"] not in LOWER_IS_BETTER)
        sign = 1.0 if higher else -1.0
        better_grid, better_q, than_grid, than_q = _split_sides(claim, axes)
        per_rest: dict[tuple, list[float]] = defaultdict(list)
        for (exp, point, seed), metrics in values.items():
            where = dict(zip(axes, point, strict=True))
            if not all(same_value(where.get(k), v) for k, v in better_grid.items()):
                continue
            partner = _partner(values, exp, seed, where, axes, than_grid)
            if partner is None:
                continue
            for key, v in metrics.items():
                k = dict(key)
                if k.get("metric") != claim["metric"] or k.get("step") is not None:
                    continue
                if claim.get("stage") not in (None, k.get("stage")):
                    continue
                if any(k.get(q) != val for q, val in {**quals, **better_q}.items()):
                    continue
                if "weights" not in quals and k.get("weights", "trained") != "trained":
                    continue  # a claim is about the trained model unless it names the twin
                partner_key = tuple(sorted({**k, **than_q}.items()))
                if partner_key not in partner:
                    continue
                rest = tuple((a, where[a]) for a in axes if a not in better_grid)
                shown = tuple((q, val) for q, val in key if q not in better_q)
                per_rest[(exp, rest, shown)].append(sign * (v - partner[partner_key]))
        if not per_rest:
            out.append(
                {
                    "claim": claim_text(claim),
                    "metric": claim["metric"],
                    "n_pairs": 0,
                    "verdict": "not shown",
                    "note": "no paired runs with this metric",
                }
            )
        for (exp, rest, key), diffs in per_rest.items():
            row = {"claim": claim_text(claim), "experiment": exp, **dict(rest), **dict(key)}
            row.update(summarize(diffs))
            row["verdict"] = verdict(row["ci_low"], row["ci_high"])
            out.append(row)
    return out


PAIRED, VERDICTS = "paired.csv", "verdicts.csv"
PAIRED_VALUES = [
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "mean_value",
    "mean_reference",
]
HEADLINE = ("accuracy", "kl", "loss_above_floor")  # the paired differences the report shows


def experiment_claims(paths: list[str | Path]) -> tuple[list[dict], dict]:
    """The claims and paired references of the experiment folders compared (their plans)."""
    claims, reference = [], {}
    from cfglab import expdir

    for p in map(Path, paths):
        plan = expdir.read_plan(p) or {}
        claims += plan.get("claims") or []
        reference.update(plan.get("reference") or {})
    return claims, reference


def paired_markdown(verdict_rows: list[dict], paired_rows: list[dict], unpaired: list) -> list:
    """The report's sections of verdicts (one row per claim: its paired difference, interval,
    p-value and the rule's word) and of the headline metrics' paired differences."""
    from cfglab.report.tables import fmt_interval

    out = []
    if verdict_rows:
        out += [
            "## Verdicts",
            "",
            "Each claim of the experiment file, by a fixed rule on the "
            "paired difference across seeds (positive supports the claim): holds if its 95% "
            "interval excludes 0 on the claim's side, contradicted on the other side, not "
            "shown otherwise. All: verdicts.csv.",
            "",
            "| claim | where | paired difference [95% CI] | p (sign flip) | pairs | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for v in verdict_rows:
            where = ", ".join(
                f"{k}={val}"
                for k, val in v.items()
                if k not in ("claim", "verdict", "note", "experiment", "stage", "metric")
                and k not in PAIRED_VALUES
                and val is not None
            )
            diff = fmt_interval(v.get("mean_diff"), v.get("ci_low"), v.get("ci_high"))
            p = f"{v['p_value']:.3g}" if v.get("p_value") is not None else "-"
            out.append(
                f"| {v['claim']} | {where or '-'} | {diff} | {p} | {v['n_pairs']} | "
                f"**{v['verdict']}** |"
            )
        out.append("")
    shown = [r for r in paired_rows if r["metric"] in HEADLINE]
    if shown:
        out += [
            "## Paired differences",
            "",
            "Each grid value against its axis's reference, "
            "seed by seed (every seed trains both on the same data): mean difference [95% "
            "t-interval] and the exact sign-flip p-value. Every metric: paired.csv.",
            "",
            "| axis | value - reference | metric | qualifiers | difference [95% CI] | p | pairs |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in shown:
            quals = ", ".join(
                f"{k}={v}"
                for k, v in r.items()
                if k in ("cut", "temperature", "gamma") and v is not None
            )
            diff = fmt_interval(r["mean_diff"], r["ci_low"], r["ci_high"])
            out.append(
                f"| {r['axis']} | {r['value']} - {r['reference']} | {r['metric']} | "
                f"{quals or '-'} | {diff} | {r['p_value']:.3g} | {r['n_pairs']} |"
            )
        out.append("")
    if unpaired:
        out += [
            "Runs without a partner (left out of the pairs): "
            + "; ".join(
                f"{u['axis']}={u['value']} seed {u['seed']} ({u['reason']})" for u in unpaired
            ),
            "",
        ]
    return out
