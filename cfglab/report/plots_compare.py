"""The cross-run figures and Markdown of `cfglab compare` (no torch).

A *grid point* is one combination of the experiment's axis values (seeds pooled); figures put
grid points side by side the way the paper's Figure 4 does: one group of bars per value of the
first axis (e.g. the position variant), one bar per value of the other axes (e.g. the grammar),
with the 95% interval across seeds as error bars and each seed as a dot. Every figure is drawn
only when the runs have the results it needs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from cfglab.report.plots import plt, save_figure  # plots.py chooses the Agg backend first
from cfglab.report.tables import fmt_interval


def _label(point: tuple, axes: list[str]) -> str:
    return ", ".join(f"{a.split('.')[-1]}={v}" for a, v in zip(axes, point, strict=True))


def _points(rows: list[dict], axes: list[str]) -> list[tuple]:
    seen: dict[tuple, None] = {}
    for r in rows:
        seen.setdefault(tuple(r.get(a) for a in axes), None)
    return list(seen)


def _select(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _bars(ax, agg: list[dict], rows: list[dict], axes: list[str], title: str, ylabel: str):
    """Grouped bars of agg's means per grid point: groups = first axis, bars = the others."""
    points = _points(agg, axes)
    groups = list(dict.fromkeys(p[0] for p in points))
    inner = list(dict.fromkeys(p[1:] for p in points))
    width = 0.8 / max(1, len(inner))
    colors = plt.get_cmap("tab10")
    for j, rest in enumerate(inner):
        xs, means, lo, hi = [], [], [], []
        for i, g in enumerate(groups):
            match = [a for a in agg if tuple(a.get(x) for x in axes) == (g, *rest)]
            if not match or match[0]["mean"] is None:
                continue
            a = match[0]
            x = i + (j - (len(inner) - 1) / 2) * width
            xs.append(x)
            means.append(a["mean"])
            low = a["seed_ci_low"] if a["seed_ci_low"] is not None else a["pooled_ci_low"]
            high = a["seed_ci_high"] if a["seed_ci_high"] is not None else a["pooled_ci_high"]
            lo.append(max(0.0, a["mean"] - low) if low is not None else 0.0)
            hi.append(max(0.0, high - a["mean"]) if high is not None else 0.0)
            seeds = [r["value"] for r in rows if tuple(r.get(x) for x in axes) == (g, *rest)]
            ax.scatter([x] * len(seeds), seeds, s=9, color="k", zorder=3)
        label = _label(rest, axes[1:]) if axes[1:] else None
        ax.bar(
            xs,
            means,
            width=width * 0.95,
            yerr=[lo, hi],
            capsize=3,
            color=colors(j % 10),
            alpha=0.8,
            label=label,
        )
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])
    ax.set_xlabel(axes[0].split(".")[-1])
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)
    if len(inner) > 1:
        ax.legend(fontsize=7)


def plot_accuracy(agg, rows, axes, path: Path) -> Path | None:
    acc = [a for a in agg if a["metric"] == "accuracy"]
    if not acc:
        return None
    panels = sorted({(a["cut"], a["temperature"]) for a in acc})
    fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (cut, temp) in zip(axs[0], panels, strict=True):
        _bars(
            ax,
            _select(acc, cut=cut, temperature=temp),
            _select(rows, metric="accuracy", cut=cut, temperature=temp),
            axes,
            f"generation accuracy, cut{cut}, T={temp:g}",
            "accuracy (95% CI)",
        )
        # near the ceiling, zoom in: a 96% vs 99% difference must show, not sit under the top
        lows = [a["seed_ci_low"] or a["pooled_ci_low"] or a["mean"] for a in acc if a["mean"]]
        lows += [r["value"] for r in rows if r["metric"] == "accuracy"]
        ax.set_ylim(max(0.0, min(lows, default=0.0) - 0.05), 1.02)
    return save_figure(fig, path)


def plot_metric(agg, rows, axes, metric: str, title: str, path: Path, log: bool = False):
    sel = _select(agg, metric=metric)
    if not sel:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    _bars(ax, sel, _select(rows, metric=metric), axes, title, metric)
    if log and any(a["mean"] and a["mean"] > 0 for a in sel):  # all zero: a linear axis
        ax.set_yscale("log")
    return save_figure(fig, path)


def plot_loss_vs_floor(agg, rows, axes, path: Path) -> Path | None:
    """The validation loss above the perfect model's (per run, then over seeds), log scale:
    the differences between grid points, not the floor they share."""
    above = _select(agg, metric="loss_above_floor")
    if not above:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    title = "validation loss above the loss floor (a perfect model: 0)"
    _bars(ax, above, _select(rows, metric="loss_above_floor"), axes, title, "nats / token")
    if all(a["mean"] and a["mean"] > 0 for a in above):
        ax.set_yscale("log")
    return save_figure(fig, path)


def plot_loss_curves(runs, curves: dict, axes: list[str], path: Path) -> Path | None:
    """Mean training loss per grid point against step (seeds averaged where steps align)."""
    by_point: dict[tuple, list[list[dict]]] = defaultdict(list)
    for run in runs:
        rows = [r for r in curves.get(run.dir, []) if isinstance(r.get("loss"), (int, float))]
        if rows:
            point = {**run.point, "experiment": run.experiment}
            by_point[tuple(point.get(a, run.dir.name) for a in axes)].append(rows)
    if not by_point:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for i, (point, seeds) in enumerate(by_point.items()):
        color = plt.get_cmap("tab10")(i % 10)
        for key, style in (("loss", "-"), ("val_loss", "--")):
            curves = [
                {r["step"]: r[key] for r in s if isinstance(r.get(key), (int, float))}
                for s in seeds
            ]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            if not steps:
                continue
            values = np.array([[c[t] for t in steps] for c in curves])  # (seeds, steps)
            label = _label(point, axes) if key == "loss" else None
            ax.plot(steps, values.mean(0), style, color=color, label=label, lw=1.2)
            if len(seeds) > 1:  # the band: the lowest and highest seed at each step
                ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over seeds; band: min-max)")
    ax.set_title("training loss (solid) and validation loss (dashed)", fontsize=9)
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _errorbar(ax, xs: list, sel: list[dict], flip: bool = False, **style) -> None:
    """Means with their 95% across-seed intervals as error bars (1 - x for flip)."""
    mean = [1 - a["mean"] if flip else a["mean"] for a in sel]
    low = [a["seed_ci_low"] if a["seed_ci_low"] is not None else a["mean"] for a in sel]
    high = [a["seed_ci_high"] if a["seed_ci_high"] is not None else a["mean"] for a in sel]
    if flip:
        low, high = [1 - h for h in high], [1 - lo for lo in low]
    err = [
        [m - lo for m, lo in zip(mean, low, strict=True)],
        [h - m for m, h in zip(mean, high, strict=True)],
    ]
    ax.errorbar(xs, mean, yerr=err, marker="o", capsize=3, **style)


def plot_robustness(agg, axes, path: Path) -> Path | None:
    """Corrupted-prompt accuracy against temperature per gamma and, where accuracy was
    measured at several temperatures, the unprompted error rate (1 - cut0 accuracy) beside it:
    the paper's mode switch. Error bars: 95% across seeds."""
    rob = [a for a in agg if a["metric"] == "robust_clean"]
    if not rob:
        return None
    gammas = sorted({a["gamma"] for a in rob})
    unprompted = [
        a for a in agg if a["metric"] == "accuracy" and a["cut"] == 0 and a["temperature"]
    ]
    if len({a["temperature"] for a in unprompted}) < 2:
        unprompted = []
    panels = len(gammas) + bool(unprompted)
    fig, axs = plt.subplots(1, panels, figsize=(4.4 * panels, 3.4), squeeze=False)
    for ax, gamma in zip(axs[0], gammas, strict=False):
        for point in _points(rob, axes):
            sel = sorted(
                (a for a in rob if a["gamma"] == gamma and tuple(a.get(x) for x in axes) == point),
                key=lambda a: a["temperature"],
            )
            _errorbar(ax, [a["temperature"] for a in sel], sel, label=_label(point, axes))
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("corrupted-prompt accuracy (clean)")
        ax.set_title(f"robustness, gamma={gamma:g}", fontsize=9)
    if unprompted:
        ax = axs[0][-1]
        for point in _points(unprompted, axes):
            sel = sorted(
                (a for a in unprompted if tuple(a.get(x) for x in axes) == point),
                key=lambda a: a["temperature"],
            )
            _errorbar(
                ax, [a["temperature"] for a in sel], sel, flip=True, label=_label(point, axes)
            )
        ax.set_ylim(bottom=0)
        ax.set_ylabel("unprompted error rate (1 - cut0 accuracy)")
        ax.set_title("generation without a prompt", fontsize=9)
    for ax in axs[0]:
        ax.set_xscale("log")
        ax.set_xlabel("temperature")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def _final(rows: list[dict]) -> list[dict]:
    """The rows about a run's final model: not the dynamics stage's per-checkpoint rows."""
    return [r for r in rows if r.get("step") is None]


def write_figures(rows, agg, axes, runs, curves, fig_dir: Path) -> dict[str, Path]:
    """The evaluation figures (the analysis families' are views: cfglab.report.views)."""
    rows, agg = _final(rows), _final(agg)
    figs = {
        "accuracy": plot_accuracy(agg, rows, axes, fig_dir / "accuracy.png"),
        "kl": plot_metric(
            agg,
            rows,
            axes,
            "kl",
            "next-token KL to the true distribution",
            fig_dir / "kl.png",
            log=True,
        ),
        "loss": plot_loss_vs_floor(agg, rows, axes, fig_dir / "loss.png"),
        "loss_curves": plot_loss_curves(runs, curves, axes, fig_dir / "loss_curves.png"),
        "robustness": plot_robustness(agg, axes, fig_dir / "robustness.png"),
    }
    return {k: v for k, v in figs.items() if v is not None}


def _fmt(a: dict) -> str:
    if a["mean"] is None:
        return "-"
    text = fmt_interval(a["mean"], a["seed_ci_low"], a["seed_ci_high"])
    if a["pooled_ci_low"] is not None:
        pooled = fmt_interval(a["mean"], a["pooled_ci_low"], a["pooled_ci_high"])
        same = ", seeds identical" if a.get("interval") == "pooled (seeds identical)" else ""
        text += " (pooled " + pooled[pooled.index("[") :] + same + ")"
    return text


def compare_markdown(runs, axes, agg, figs: dict[str, Path], out: Path) -> str:
    """The comparison report: what was compared, a table of the headline metrics per grid point
    (mean over seeds [95% t-interval across seeds] (pooled within-run interval)), figures."""
    headline = [
        ("accuracy", "accuracy cut{cut}"),
        ("kl", "KL"),
        ("final_val_loss", "val loss"),
        ("loss_above_floor", "above floor"),
        ("robust_clean", "robust g={gamma:g} T={temperature:g}"),
    ]
    agg = _final(agg)
    columns: dict[str, dict] = {}
    for metric, fmt in headline:
        rows = [a for a in agg if a["metric"] == metric]
        # a qualifier the label does not name, but which varies (accuracy at several
        # temperatures), is appended: one column per value, never one value over another
        extra = [
            q
            for q in ("cut", "temperature", "gamma")
            if "{" + q not in fmt and len({a.get(q) for a in rows}) > 1
        ]
        for a in rows:
            name = fmt.format(**{k: a.get(k) for k in ("cut", "gamma", "temperature")})
            name += "".join(f" {'T' if q == 'temperature' else q}={a.get(q):g}" for q in extra)
            columns.setdefault(name, {})[tuple(a.get(x) for x in axes)] = a
    n_seeds = sorted({r.seed for r in runs})
    lines = [
        "# cfglab compare",
        "",
        f"{len(runs)} runs; axes: {', '.join(axes) or '-'}; seeds {n_seeds}. Cells: mean over "
        "seeds [95% t-interval across seeds] (pooled within-run Wilson interval, for "
        "proportions). Every number: results.csv (per run) and summary.csv (per grid point).",
        "",
    ]
    points = _points(agg, axes)
    if columns:
        lines += [
            "| " + " | ".join([*(a.split(".")[-1] for a in axes), *columns]) + " |",
            "|" + "---|" * (len(axes) + len(columns)),
        ]
        for p in points:
            cells = [str(v) for v in p] + [
                _fmt(col[p]) if p in col else "-" for col in columns.values()
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    captions = {
        "accuracy": "generation accuracy per grid point (95% CI across seeds; dots: seeds)",
        "kl": "next-token KL to the exact distribution",
        "loss": "validation loss above the loss floor",
        "loss_curves": "training loss curves (mean over seeds)",
        "robustness": "corrupted-prompt accuracy (and unprompted error) against temperature",
    }
    for name, path in figs.items():
        lines += [f"![{captions[name]}]({path.relative_to(out).as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"
