"""Many runs side by side: tidy results.csv, seed aggregates and the paper's cross-run figures.

`cfglab compare DIR ... [--out DIR]` (also the end of `cfglab sweep`): DIR is an experiment
folder (its experiment.json names the runs and their grid points) or a run folder. Every run's
results become tidy rows, one per run x metric:

    experiment, run, <one column per grid axis>, seed, state, stage, metric,
    <qualifiers: step, cut, temperature, gamma, target, window, level, label, layer, model,
     pattern, and any other a family's rows carry>,
    value, ci_low, ci_high, n

(results.csv, loadable with pandas.read_csv; `run` is the run's folder, `state` is
report.results.run_state's: current, unfinished or stale). The rows are read the same way
from every result file (the eval summary, each analysis family's analyze/<name>.json, the
dynamics stage's rows with their step), so a new family's rows need no code here. summary.csv
aggregates over seeds: the mean, the 95% t-interval across seeds, and for proportions the
pooled within-run interval (Wilson on the seeds' pooled counts). report.md / report.html show
the evaluation figures of cfglab.report.plots_compare and the families' cross-run views
(cfglab.report.views).

Only current runs are aggregated, drawn and paired: an unfinished or stale run (or one not
started, after `sweep --only`) keeps its rows in results.csv, marked, and is listed with its
reason in the report, never pooled with the others as if it were a seed. Everything is read
through cfglab.rundir; nothing here imports torch.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cfglab import expdir, rundir
from cfglab.errors import CfglabError
from cfglab.report.paired import (
    PAIRED,
    PAIRED_VALUES,
    VERDICTS,
    experiment_claims,
    grid_cell,
    paired,
    paired_markdown,
    t_quantile,
    verdicts,
)
from cfglab.report.results import read_checked, run_state

FIXED = ["experiment", "run", "seed", "state", "stage", "metric"]
REPORT_FILES = [
    "results.csv",
    "summary.csv",
    "paired.csv",
    "verdicts.csv",
    "report.md",
    "report.html",
]
# the usual qualifiers, in this column order; a family may add others (they follow, sorted)
QUALIFIERS = [
    "step",  # the checkpoint of a dynamics row (other rows: the run's final model)
    "cut",
    "temperature",
    "gamma",
    "target",
    "window",
    "level",
    "label",
    "layer",
    "weights",  # trained, or the random-init twin (not "model": a grid axis may be named so)
    "pattern",
]
VALUES = ["value", "ci_low", "ci_high", "n"]
# pooled Wilson intervals
PROPORTIONS = {
    "accuracy",
    "robust_clean",
    "robust_no_new_errors",
    "robust_clean_control",
    "prompt_still_viable",
    "seen_test",  # memorisation: shares of strings
    "seen_generated",
    "novelty",
}
BOUNDED = PROPORTIONS | {  # within [0, 1]
    "probe_accuracy",
    "probe_majority",
    "probe_ceiling",
    "distinct_share",
    "robust_map_repair",
    "robust_ceiling",
    "share_in_language",
}
# never negative: an interval's lower end stops at 0 (a KL of -0.002 is not a possible value)
NONNEGATIVE = {
    "kl",
    "kl_by_level",
    "reverse_kl",
    "seq_kl",
    "cross_entropy",
    "final_loss",
    "final_val_loss",
    "loss_floor",
    "entropy_rate",
    "entropy_rate_rb",
    "model_entropy_per_token",
    "emergence_step",
}


@dataclass
class RunEntry:
    dir: Path
    experiment: str
    point: dict = field(default_factory=dict)  # grid axis -> value
    seed: int | None = None
    state: str = "current"  # report.results.run_state: current, unfinished, stale, not started
    why: str = ""  # its reason, for the report


def find_runs(paths: list[str | Path]) -> tuple[list[RunEntry], list[str]]:
    """The runs named by experiment folders and run folders, and the grid axes (in order)."""
    runs, axes = [], []
    for p in map(Path, paths):
        plan = expdir.read_plan(p)  # None: not an experiment folder
        if plan is not None:
            try:
                entries = [(r["dir"], r["point"], r["seed"]) for r in plan["runs"]]
            except (KeyError, TypeError):
                raise CfglabError(
                    f"{p / expdir.PLAN} is corrupt; run `cfglab sweep` again"
                ) from None
            axes += [a for a in plan.get("axes", []) if a not in axes]
            for name, point, seed in entries:
                point = {k: grid_cell(v) for k, v in point.items()}
                runs.append(RunEntry(p / name, plan.get("name", p.name), point, seed))
        elif (p / rundir.CONFIG).is_file():  # a plain run: its own grid point, named "run"
            cfg = rundir.read_run_config(p)
            runs.append(RunEntry(p, "", {"run": p.name}, cfg.train.seed))
            if "run" not in axes:
                axes.append("run")
        else:
            raise CfglabError(
                f"{p} is neither an experiment folder (experiment.json) nor a run folder "
                "(config.json); give what `cfglab sweep` or `cfglab train` wrote"
            )
    if not runs:
        raise CfglabError("no runs to compare; give experiment or run folders")
    return _distinct(runs, axes), axes


def _distinct(runs: list[RunEntry], axes: list[str]) -> list[RunEntry]:
    """Each run once (a folder given twice, or an experiment and one of its runs, would count
    its seed twice), and distinct labels: two experiment folders of one name, or two plain runs
    of one folder name, are told apart by their paths rather than pooled as seeds."""
    unique: dict[Path, RunEntry] = {}
    for r in runs:
        unique.setdefault(r.dir.resolve(), r)
    runs = list(unique.values())
    folders: dict[str, set[Path]] = defaultdict(set)
    for r in runs:
        if r.experiment:
            folders[r.experiment].add(r.dir.parent.resolve())
    for r in runs:
        if len(folders.get(r.experiment, ())) > 1:
            r.experiment = str(r.dir.parent)
    if "run" in axes:
        names: dict[str, int] = defaultdict(int)
        for r in runs:
            if not r.experiment:
                names[r.point["run"]] += 1
        for r in runs:
            if not r.experiment and names[r.point["run"]] > 1:
                r.point["run"] = str(r.dir)
    return runs


def group_axes(runs: list[RunEntry], axes: list[str]) -> list[str]:
    """The columns that tell grid points apart: the grid axes, after the experiment when the
    runs come from several (their runs may share grid points and names)."""
    several = len({r.experiment for r in runs}) > 1
    return ["experiment", *axes] if several else axes


def run_rows(run: RunEntry) -> list[dict]:
    """One run's tidy rows (without the experiment/axis columns); CfglabError naming the run
    when a result file parses but is not in the shape this cfglab writes."""
    with rundir.result_shape(run.dir):
        return _run_rows(run)


def _run_rows(run: RunEntry) -> list[dict]:
    """The training record's final losses, the eval summary rows, and every analysis result
    file's rows (stage = the file's name; the dynamics stage's rows carry their step): read
    the same way whatever family wrote them."""
    rows: list[dict] = []
    metrics = rundir.read_metrics(run.dir)
    for key, metric in (("loss", "final_loss"), ("val_loss", "final_val_loss")):
        last = [r for r in metrics if isinstance(r.get(key), (int, float))]
        if last:
            rows.append(
                {"stage": "train", "metric": metric, "value": last[-1][key], "n": last[-1]["step"]}
            )
    summary = rundir.read_result(run.dir, f"{rundir.EVAL}/summary")
    summary_path = rundir.result_path(run.dir, f"{rundir.EVAL}/summary")
    for r in _check_values((summary or {}).get("rows", []), summary_path):
        rows.append({"stage": "eval", **{k: v for k, v in r.items() if k != "family"}})
    floor = [r["value"] for r in rows if r["metric"] == "loss_floor"]
    val = [r for r in rows if r["metric"] == "final_val_loss"]
    if floor and val and floor[0] is not None:  # the distance the seeds share a floor for
        excess = val[0]["value"] - floor[0]
        rows.append({"stage": "eval", "metric": "loss_above_floor", "value": excess, "n": 1})
    for name, body in read_checked(run.dir, rundir.ANALYZE).items():
        path = rundir.result_path(run.dir, f"{rundir.ANALYZE}/{name}")
        rows += [{"stage": name, **r} for r in _check_values(body["rows"], path)]
    return rows


def run_views(runs: list[RunEntry]) -> list[dict]:
    """The cross-run views (cfglab.report.views) the runs' analysis files carry, each once, in
    the families' order."""
    views: dict[str, tuple] = {}
    for run in runs:
        for name, body in rundir.read_results(run.dir, rundir.ANALYZE).items():
            for i, view in enumerate(body.get("compare", [])):
                views.setdefault(view["name"], (body.get("order", 50), name, i, view))
    return [v for *_, v in sorted(views.values(), key=lambda t: t[:3])]


def qualifier_columns(rows: list[dict], axes: list[str]) -> list[str]:
    """The qualifier columns of these tidy rows: the usual ones (always, so that results.csv
    keeps its columns), then any other a family used (a new family's needs no change here)."""
    seen = dict.fromkeys(k for r in rows for k in r)
    known = set(FIXED) | set(VALUES) | set(axes)
    return [*QUALIFIERS, *sorted(k for k in seen if k not in known and k not in QUALIFIERS)]


def tidy_rows(runs: list[RunEntry], axes: list[str]) -> list[dict]:
    """results.csv's rows: `run` names the run (a plain run by its label, the grid point it
    is alone at; an experiment's run by its folder)."""
    out = []
    for run in runs:
        label = run.point.get("run") if not run.experiment else run.dir.name
        base = {"experiment": run.experiment, "run": label, "seed": run.seed, "state": run.state}
        base.update({a: run.point.get(a) for a in axes if a != "run"})
        out += [{**base, **row} for row in run_rows(run)]
    return out


def point_rows(rows: list[dict], axes: list[str]) -> list[dict]:
    """The rows keyed by grid point, for the aggregates and figures: with plain runs compared
    (the `run` axis), an experiment's runs have no `run` value (its seeds pool), a plain run
    keeps its label (its own point)."""
    if "run" not in axes:
        return rows
    return [r if not r["experiment"] else {**r, "run": ""} for r in rows]


def _check_values(rows: list[dict], path: Path) -> list[dict]:
    """Result rows whose numbers are numbers (or empty): CfglabError naming the file otherwise
    (a hand-edited value would stop the aggregates with a traceback)."""
    for row in rows:
        for key in ("value", "ci_low", "ci_high", "n"):
            v = row.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise CfglabError(
                    f"{path}: {key} {v!r} of metric {row.get('metric')!r} is not a number; "
                    "rerun the stage that wrote the file"
                )
    return rows


def aggregate(rows: list[dict], axes: list[str], qualifiers: list[str] | None = None) -> list[dict]:
    """Mean over seeds per (grid point, stage, metric, qualifiers), with the across-seed 95%
    t-interval (clipped to [0, 1] for shares) and, for proportions, the pooled within-run
    Wilson interval. An interval never collapses to a point: when every seed gives the same
    value, the t-interval is left out (its width 0 is no evidence of precision), and
    `interval` says which one a reader should use: "seeds", "pooled (seeds identical)",
    "pooled", or "none"."""
    from cfglab.evaluate.stats import wilson_interval  # torch-free

    key_cols = ["experiment", *(a for a in axes if a != "experiment"), "stage", "metric"]
    key_cols += qualifier_columns(rows, axes) if qualifiers is None else qualifiers
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(c) for c in key_cols)].append(r)
    out = []
    for key, members in groups.items():
        values = [float(m["value"]) for m in members if m.get("value") is not None]
        values = [v for v in values if math.isfinite(v)]
        row = dict(zip(key_cols, key, strict=True))
        row.update(n_seeds=len(values), mean=statistics.fmean(values) if values else None)
        half = None
        identical = len(values) > 1 and len(set(values)) == 1
        if len(values) > 1 and not identical:
            half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        low = row["mean"] - half if half is not None else None
        high = row["mean"] + half if half is not None else None
        if half is not None and row["metric"] in BOUNDED:  # a share's interval stays in [0, 1]
            low, high = max(0.0, low), min(1.0, high)
        elif half is not None and row["metric"] in NONNEGATIVE:
            low = max(0.0, low)
        row.update(
            seed_ci_low=low,
            seed_ci_high=high,
            pooled_ci_low=None,
            pooled_ci_high=None,
        )
        counted = [m for m in members if m.get("n") and _finite(m.get("value"))]
        if row["metric"] in PROPORTIONS and counted and len(counted) == len(members):
            n = sum(int(m["n"]) for m in counted)
            k = sum(round(float(m["value"]) * int(m["n"])) for m in counted)
            row["pooled_ci_low"], row["pooled_ci_high"] = wilson_interval(k, n)
        pooled = row["pooled_ci_low"] is not None
        row["interval"] = (
            "seeds"
            if half is not None
            else "pooled (seeds identical)"
            if pooled and identical
            else "pooled"
            if pooled
            else "none"
        )
        out.append(row)
    return out


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def compare(paths: list[str | Path], out: str | Path | None = None) -> Path:
    """results.csv, summary.csv, paired.csv, verdicts.csv, report.md, report.html and figures/
    in `out` (default: the one experiment folder given, else ./compare); returns `out`. Only
    current runs are pooled (see the module docstring)."""
    runs, axes = find_runs(paths)
    if out is None:
        out = Path(paths[0]) / "compare" if len(paths) == 1 else Path("compare")
    out = Path(out)
    _check_out(out)  # before reading anything: the folder can take the report
    for run in runs:
        run.state, run.why = run_state(run.dir)
    # every run read and aggregated before anything is written: a bad result file leaves the
    # last good report in place
    rows = tidy_rows([r for r in runs if r.state != "not started"], axes)
    quals = qualifier_columns(rows, axes)
    pooled = point_rows([r for r in rows if r["state"] == "current"], axes)
    tables = {
        "agg": aggregate(pooled, axes, quals),
        "claims": experiment_claims(paths),
    }
    try:
        expdir.make_folder(out)
        expdir.write_csv(
            out / expdir.RESULTS,
            rows,
            [*FIXED[:2], *(a for a in axes if a != "run"), *FIXED[2:], *quals, *VALUES],
        )
        _write_report(out, runs, axes, quals, pooled, tables)
    except OSError as exc:  # a disk full or made read-only since the check
        raise CfglabError(
            f"--out {out}: cannot write the report ({exc.strerror or exc}: {exc.filename}); free "
            "disk space or give another --out"
        ) from None
    return out


def _write_report(
    out: Path, runs: list[RunEntry], axes: list[str], quals: list[str], pooled, tables
) -> None:
    """summary.csv, paired.csv, verdicts.csv, figures and report.md / report.html of the
    current runs' rows (`pooled`); the other runs are listed with their reason."""
    from cfglab.report import plots_compare
    from cfglab.report.html import md_to_html
    from cfglab.report.views import draw_views

    current = [r for r in runs if r.state == "current"]
    agg, (claims, reference) = tables["agg"], tables["claims"]
    paired_rows, unpaired = paired(pooled, axes, reference)
    verdict_rows = verdicts(pooled, axes, claims)
    curves = {r.dir: rundir.read_metrics(r.dir) for r in current}
    axes = group_axes(runs, axes)  # figures and tables: one group per experiment and point
    summary_cols = ["experiment", *(a for a in axes if a != "experiment"), "stage", "metric"]
    summary_cols += [*quals, "n_seeds", "mean", "seed_ci_low", "seed_ci_high"]
    summary_cols += ["pooled_ci_low", "pooled_ci_high", "interval"]
    expdir.write_csv(out / expdir.SUMMARY, agg, summary_cols)
    keys = [*axes, *quals]
    expdir.write_csv(
        out / PAIRED,
        paired_rows,
        ["experiment", "axis", "value", "reference", "stage", "metric", *keys, *PAIRED_VALUES],
    )
    expdir.write_csv(
        out / VERDICTS,
        verdict_rows,
        ["claim", "verdict", "experiment", "stage", "metric", *keys, *PAIRED_VALUES[:-2], "note"],
    )
    figs = plots_compare.write_figures(pooled, agg, axes, current, curves, out / "figures")
    md = plots_compare.compare_markdown(current, axes, agg, figs, out)
    head, _, rest = md.partition("\n\n")  # the title, then what was compared
    intro, _, rest = rest.partition("\n\n")
    md = "\n\n".join([head, intro, *left_out_lines(runs), rest])
    md = md.rstrip() + "\n\n" + "\n".join(paired_markdown(verdict_rows, paired_rows, unpaired))
    view_lines, view_figs = draw_views(run_views(current), agg, axes, out / "figures", out)
    md = md.rstrip() + "\n\n" + "\n".join(view_lines) if view_lines else md
    figs.update(view_figs)
    rundir.write_text_atomic(out / "report.md", md.rstrip() + "\n")
    rundir.write_text_atomic(out / "report.html", md_to_html(md, figs, out))


def left_out_lines(runs: list[RunEntry]) -> list[str]:
    """The report's account of the runs not pooled: each with its state and reason ([] when
    every run is current)."""
    out = [r for r in runs if r.state != "current"]
    if not out:
        return []
    lines = [
        f"**{len(out)} of {len(runs)} runs left out** of every table, figure and aggregate "
        "below (their rows in results.csv carry their state): an unfinished or stale run is "
        "never pooled with the others as a seed.\n"
    ]
    lines += [f"- `{r.dir.name}`: {r.state}: {r.why}" for r in out]
    return ["\n".join(lines)]


def _check_out(out: Path) -> None:
    """Before any work: the report folder can be written (nothing of the wrong kind where its
    files go, and a folder that takes files); nothing is made yet."""
    for name, folder in [(n, False) for n in REPORT_FILES] + [("figures", True)]:
        path = out / name
        if path.exists() and path.is_dir() != folder:
            raise CfglabError(
                f"--out {out}: {path} is a {'file' if folder else 'folder'} where the report "
                f"writes its {name}; move it away or give another --out"
            )
    rundir.check_writable(
        out, f"--out {out}: cannot make the report folder there; give a folder you can write"
    )
