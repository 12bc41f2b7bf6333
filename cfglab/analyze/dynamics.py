"""Training dynamics: what the measurements of kept checkpoints say about the path (stage 6b).

The dynamics stage (cfglab.stages.dynamics) runs the eval and analysis families at every kept
checkpoint and tags their rows with the checkpoint's `step`; this module holds what is specific
to looking at the path, computed from those rows alone:

- `emergence`: for a curve over steps, the first kept step at which it reaches halfway from its
  baseline (the random-init twin's value for probes; the first checkpoint's for generation
  accuracy) to its final value, with the two checkpoints that bracket that crossing;
- `emergence_table` / `emergence_rows`: that step for every last-layer probe of the trained
  model and for cut0 generation accuracy, with a 95% bootstrap interval over kept steps (probes:
  the test strings resampled, the same resample at every checkpoint and for the twin, since
  they share the strings; accuracy: each checkpoint's generations resampled) and the measures
  it ties with (the same kept step: checkpoints cannot order them);
- the dynamics figures and tables, as data (cfglab.report.figures draws them), and the
  cross-run views `COMPARE` for `cfglab compare`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

NOT_QUALIFIERS = {"metric", "value", "n", "ci_low", "ci_high", "step", "family"}
N_BOOTSTRAP = 1000  # resamples for the emergence step's interval


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


def _first_halfway(curves: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """curves (B, K), baseline (B,) -> (B,) index of the first kept step at halfway from the
    baseline to the final value; K (past the end) where there is no crossing."""
    final = curves[:, -1]
    half = baseline + (final - baseline) / 2
    reached = curves >= half[:, None]
    first = np.where(reached.any(axis=1), reached.argmax(axis=1), curves.shape[1])
    return np.where(final > baseline, first, curves.shape[1])


def _step_interval(steps: Sequence[int], first: np.ndarray) -> list:
    """The central 95% of the resampled first-step indices as kept steps; None: never."""
    lo, hi = (int(q) for q in np.quantile(first, [0.025, 0.975], method="inverted_cdf"))
    return [steps[i] if i < len(steps) else None for i in (lo, hi)]


def probe_step_interval(
    steps: Sequence[int],
    correct: np.ndarray,
    tokens: np.ndarray,
    twin: np.ndarray | None,
    rng: np.random.Generator,
    n_boot: int = N_BOOTSTRAP,
) -> list:
    """A probe's emergence step, 95% bootstrap interval over its S test strings: correct (K, S)
    per kept step, tokens (S,) scored per string, twin (S,) the random-init twin's correct (the
    baseline; 0 without one). Every resample takes the same strings at every step and for the
    twin, as the measurement did."""
    n_strings = tokens.shape[0]
    weights = np.stack(
        [
            np.bincount(rng.integers(0, n_strings, n_strings), minlength=n_strings)
            for _ in range(n_boot)
        ]
    ).astype(float)  # (B, S): how often each string is drawn
    scored = np.maximum(weights @ tokens, 1.0)
    curves = (weights @ correct.T) / scored[:, None]
    baseline = weights @ twin / scored if twin is not None else np.zeros(n_boot)
    return _step_interval(steps, _first_halfway(curves, baseline))


def accuracy_step_interval(
    steps: Sequence[int],
    values: Sequence[float],
    n: Sequence[int],
    rng: np.random.Generator,
    n_boot: int = N_BOOTSTRAP,
) -> list:
    """Generation accuracy's emergence step, 95% bootstrap interval: each checkpoint's n
    generations resampled (a share of n independent generations resamples as a binomial), the
    first checkpoint's too (the baseline)."""
    n = np.asarray(n, dtype=int)
    curves = rng.binomial(n, np.asarray(values, dtype=float), size=(n_boot, len(n))) / np.maximum(
        n, 1
    )
    return _step_interval(steps, _first_halfway(curves, curves[:, 0]))


def _mark_ties(table: list[dict]) -> None:
    """Each entry's `ties`: the other measures first halfway at the same kept step."""
    for e in table:
        e["ties"] = [
            o["what"]
            for o in table
            if o is not e and e["step"] is not None and o["step"] == e["step"]
        ]


def _qualifiers(row: dict, drop: Sequence[str] = ()) -> tuple:
    return tuple(
        sorted((k, v) for k, v in row.items() if k not in NOT_QUALIFIERS and k not in drop)
    )


def _column_text(quals: dict) -> str:
    parts = [f"{quals['target']}"]
    if "level" in quals:
        parts.append(f"L{quals['level']}")
    if "label" in quals:
        parts.append(str(quals["label"]))
    if quals.get("window", "all") != "all":
        parts.append(f"({quals['window']})")
    return " ".join(parts)


def probe_key(row: dict) -> tuple:
    """What identifies one probe's curve over steps: its qualifiers less layer and weights."""
    return _qualifiers(row, drop=("layer", "weights"))


def emergence_table(rows: list[dict], per_string: dict | None = None, seed: int = 0) -> list[dict]:
    """Per last-layer probe of the trained model (target, level or label, window) and for cut0
    generation accuracy: `emergence` of its curve over the kept steps. Baselines: the twin's
    accuracy (measured once, the same at every step), the first checkpoint's accuracy.

    Each entry's `interval` is a 95% bootstrap interval of the step (None where it cannot be
    resampled: a probe without per_string counts), `ties` the measures at the same step.
    per_string: {probe_key: {"tokens": (S,), "twin": (S,) | None, "correct": {step: (S,)}}}
    (the dynamics stage collects it); seed: the resampling's."""
    rng = np.random.default_rng(seed)
    probe = [r for r in rows if r["metric"] == "probe_accuracy"]
    last = max((r["layer"] for r in probe), default=None)
    curves: dict[tuple, dict[int, float]] = defaultdict(dict)
    twins: dict[tuple, float] = {}
    for r in probe:
        if r["layer"] != last:
            continue
        key = probe_key(r)
        if r["weights"] == "trained":
            curves[key][r["step"]] = r["value"]
        else:
            twins[key] = r["value"]
    table = []
    for key, curve in curves.items():
        steps = sorted(curve)
        quals = dict(key)
        entry = emergence(steps, [curve[s] for s in steps], twins.get(key, 0.0))
        counts = (per_string or {}).get(key)
        entry["interval"] = None
        if counts is not None and all(s in counts["correct"] for s in steps):
            correct = np.array([counts["correct"][s] for s in steps], dtype=float)
            twin = None if counts["twin"] is None else np.asarray(counts["twin"], dtype=float)
            tokens = np.asarray(counts["tokens"], dtype=float)
            entry["interval"] = probe_step_interval(steps, correct, tokens, twin, rng)
        table.append({"what": f"probe {_column_text(quals)}", "qualifiers": quals, **entry})
    acc = {r["step"]: r for r in rows if r["metric"] == "accuracy" and r["cut"] == 0}
    if acc:
        steps = sorted(acc)
        values = [acc[s]["value"] for s in steps]
        entry = emergence(steps, values, values[0])
        n = [acc[s].get("n") or 0 for s in steps]
        entry["interval"] = accuracy_step_interval(steps, values, n, rng) if min(n) else None
        quals = {"target": "accuracy", "cut": 0}
        table.append({"what": "generation accuracy cut0", "qualifiers": quals, **entry})
    _mark_ties(table)
    return table


def emergence_rows(table: list[dict]) -> list[dict]:
    """The emergence table as tidy rows (metric emergence_step; value None: never halfway;
    ci_low / ci_high: the bootstrap interval's kept steps, ci_high None: never)."""
    rows = []
    for e in table:
        row = {"metric": "emergence_step", **e["qualifiers"], "value": e["step"], "n": 0}
        if e.get("interval"):
            row["ci_low"], row["ci_high"] = e["interval"]
        rows.append(row)
    return rows


def tables(table: list[dict]) -> list[dict]:
    body = []
    for e in table:
        step = "never" if e["step"] is None else str(e["step"])
        bracket = "-" if e["bracket"] is None else f"({e['bracket'][0]}, {e['bracket'][1]}]"
        interval = "-"
        if e.get("interval"):
            lo, hi = ("never" if v is None else str(v) for v in e["interval"])
            interval = f"[{lo}, {hi}]"
        ties = ", ".join(e.get("ties", [])) or "-"
        body.append(
            [
                e["what"],
                f"{e['baseline']:.3f}",
                f"{e['final']:.3f}",
                f"{e['halfway']:.3f}",
                step,
                bracket,
                interval,
                ties,
            ]
        )
    return [
        {
            "title": "Emergence: the first kept step at which a measure reaches halfway from its "
            "baseline (the random-init twin for probes, the first checkpoint for accuracy) to its "
            "final value",
            "header": [
                "measure",
                "baseline",
                "final",
                "halfway",
                "first step at halfway",
                "bracket",
                "95% interval (bootstrap)",
                "at the same kept step as",
            ],
            "rows": body,
        }
    ]


def _curve(rows: list[dict], **where) -> tuple[list, list]:
    sel = sorted(
        (r for r in rows if all(r.get(k) == v for k, v in where.items())), key=lambda r: r["step"]
    )
    return [r["step"] for r in sel], [r["value"] for r in sel]


def _probe_figure(rows: list[dict]) -> dict | None:
    probe = [r for r in rows if r["metric"] == "probe_accuracy" and r.get("window") == "all"]
    if not probe:
        return None
    last = max(r["layer"] for r in probe)
    panels = []
    for target in dict.fromkeys(r["target"] for r in probe):
        columns = dict.fromkeys(
            _qualifiers(r, drop=("layer", "weights", "target", "window"))
            for r in probe
            if r["target"] == target
        )
        series, hlines = [], []
        for i, col in enumerate(columns):
            where = {"target": target, "layer": last, **dict(col)}
            x, y = _curve(probe, weights="trained", **where)
            label = _column_text({"target": target, **dict(col)}).split(" ", 1)[-1]
            series.append({"label": label, "x": x, "y": y, "marker": "o", "color": i})
            _, twin = _curve(probe, weights="random_init", **where)
            if twin:
                hlines.append({"y": twin[-1], "style": "--", "color": i})
        panels.append(
            {
                "title": f"{target} probe (dashed: random init)",
                "xlabel": "training step",
                "ylabel": "last-layer probe accuracy",
                "xscale": "log",
                "series": series,
                "hlines": hlines,
            }
        )
    return {
        "name": "dynamics_probe",
        "kind": "lines",
        "panels": panels,
        "title": "last-layer probe accuracy per level against step",
        "caption": "last-layer probe accuracy per level against step",
    }


def _behaviour_figure(rows: list[dict]) -> dict | None:
    panels = []
    acc = [r for r in rows if r["metric"] == "accuracy" and r.get("cut") == 0]
    if acc:
        acc.sort(key=lambda r: r["step"])
        panels.append(
            {
                "title": "cut0 generation accuracy (95% CI)",
                "xlabel": "training step",
                "xscale": "log",
                "ylim": [0, 1.05],
                "series": [
                    {
                        "label": "cut0",
                        "x": [r["step"] for r in acc],
                        "y": [r["value"] for r in acc],
                        "lo": [r.get("ci_low") for r in acc],
                        "hi": [r.get("ci_high") for r in acc],
                        "marker": "o",
                    }
                ],
            }
        )
    for metric, title in (("kl", "next-token KL"), ("val_loss", "validation loss")):
        x, y = _curve(rows, metric=metric)
        if x:
            panels.append(
                {
                    "title": title,
                    "xlabel": "training step",
                    "xscale": "log",
                    "yscale": "log" if metric == "kl" else None,
                    "series": [{"label": metric, "x": x, "y": y, "marker": "s"}],
                }
            )
    if not panels:
        return None
    return {
        "name": "dynamics_accuracy",
        "kind": "lines",
        "panels": panels,
        "title": "behaviour against step",
        "caption": "cut0 generation accuracy, next-token KL and validation loss against step",
    }


def _grouped_figure(rows: list[dict], metric: str, by: str, name: str, title: str) -> dict | None:
    sel = [r for r in rows if r["metric"] == metric and r.get("weights", "trained") == "trained"]
    if not sel:
        return None
    series, hlines = [], []
    for i, group in enumerate(dict.fromkeys(r[by] for r in sel)):
        x, y = _curve(sel, **{by: group})
        series.append({"label": str(group), "x": x, "y": y, "marker": "o", "color": i})
        _, twin = _curve(rows, metric=metric, weights="random_init", **{by: group})
        if twin:
            hlines.append({"y": twin[-1], "style": "--", "color": i})
    panel = {
        "title": title,
        "xlabel": "training step",
        "xscale": "log",
        "series": series,
        "hlines": hlines,
        "yscale": "log" if metric == "kl_by_level" else None,
    }
    return {"name": name, "kind": "lines", "panels": [panel], "title": title, "caption": title}


def figures(rows: list[dict]) -> list[dict]:
    """The run report's dynamics figures, from the per-step rows."""
    out = [
        _probe_figure(rows),
        _behaviour_figure(rows),
        _grouped_figure(
            rows,
            "kl_by_level",
            "level",
            "dynamics_kl_level",
            "next-token KL by the level of the NT ending before each row",
        ),
        _grouped_figure(
            rows,
            "best_head_score",
            "pattern",
            "dynamics_heads",
            "attention head scores against step (dashed: random init)",
        ),
    ]
    return [f for f in out if f is not None]


COMPARE = [
    {
        "name": "dynamics_probe",
        "kind": "lines",
        "title": "last-layer probe of the trained model against step",
        "metric": "probe_accuracy",
        "where": {"layer": "last", "weights": "trained", "window": "all"},
        "x": ["step"],
        "panels": ["target", "level", "label"],
        "xscale": "log",
        "ylabel": "probe accuracy",
        "caption": "last-layer probe accuracy against training step (95% CI across seeds)",
    },
    {
        "name": "dynamics_accuracy",
        "kind": "lines",
        "title": "cut0 generation accuracy against step",
        "metric": "accuracy",
        "where": {"cut": 0},
        "x": ["step"],
        "panels": ["temperature"],
        "xscale": "log",
        "ylabel": "generation accuracy",
        "caption": "cut0 generation accuracy against training step (95% CI across seeds)",
    },
    {
        "name": "emergence",
        "kind": "table",
        "title": "emergence step (first kept step at halfway)",
        "metric": "emergence_step",
        "where": {},
        "x": [],
        "panels": [],
        "caption": "the first kept step at which each measure reaches halfway to its final value",
    },
]
