"""One function per report figure (no torch): each takes plain data and a path, writes a PNG
(through cfglab.rundir: `save_figure`).

matplotlib runs with the Agg backend (no display needed); figures are closed after saving so a
report over many runs does not accumulate memory.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from cfglab import rundir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def save_figure(fig, path: Path) -> Path:
    """Render the figure as PNG bytes in memory and write them through the run's (or the
    comparison's) file owner, atomically; the figure is closed."""
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return rundir.write_bytes_atomic(path, png.getvalue())


def plot_loss(
    steps: Sequence[int],
    loss: Sequence[float],
    path: Path,
    *,
    val: tuple[Sequence[int], Sequence[float]] | None = None,
    floor: float | None = None,
) -> Path:
    """Training loss (and validation loss) per step; `floor`: a perfect model's loss."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, loss, label="train loss", lw=1.2)
    if val and val[0]:
        ax.plot(val[0], val[1], "o-", label="validation loss", ms=3)
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", lw=1, label=f"perfect model {floor:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.set_title("training loss")
    ax.legend()
    return save_figure(fig, path)


def plot_accuracy(rows: Sequence[dict], path: Path) -> Path:
    """Generation accuracy per (cut, temperature) with its 95% Wilson interval."""
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(rows) + 1.5), 3.6))
    labels = [f"cut{r['cut']}\nT={r['temperature']:g}" for r in rows]
    acc = [r["accuracy"] for r in rows]
    # clipped at 0: the Wilson bound of 0 correct comes out as ~3e-17 > 0 in floating point
    err = [
        [max(0.0, a - r["ci_low"]) for a, r in zip(acc, rows, strict=True)],
        [max(0.0, r["ci_high"] - a) for a, r in zip(acc, rows, strict=True)],
    ]
    ax.bar(range(len(rows)), acc, yerr=err, capsize=5, color="tab:blue", alpha=0.8)
    for i, r in enumerate(rows):
        ax.text(
            i,
            min(r["ci_high"] + 0.02, 1.02),
            f"{r['accuracy']:.3f}\nn={r['n']}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title("generation accuracy")
    return save_figure(fig, path)


def plot_kl_by_position(buckets: Sequence[dict], path: Path) -> Path:
    """Mean next-token KL per prefix-length bucket (log scale when all values are positive)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = [
        f"{b['lo']}-{b['hi'] - 1}"
        if b["hi"] is not None and b["hi"] - b["lo"] > 1
        else (f"{b['lo']}" if b["hi"] is not None else f"{b['lo']}+")
        for b in buckets
    ]
    vals = [b["kl"] for b in buckets]
    ax.bar(range(len(vals)), vals, color="tab:orange")
    ax.set_xticks(range(len(vals)), labels, rotation=30)
    if vals and min(vals) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("prefix length k (tokens already seen)")
    ax.set_ylabel("KL(true || model), nats")
    ax.set_title("next-token KL by position")
    return save_figure(fig, path)


def plot_first_errors(positions: Sequence[int], path: Path, *, title: str) -> Path:
    """Histogram of where wrong generations first go wrong (token index in the string)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(positions, bins=min(40, max(5, len(set(positions)))), color="tab:red", alpha=0.8)
    ax.set_xlabel("index of the first wrong token")
    ax.set_ylabel("generations")
    ax.set_title(title)
    return save_figure(fig, path)


def _interval_line(ax, xs, rows, label: str, key: str | None = None) -> None:
    """One curve of proportions with their 95% intervals as a band."""
    pick = (lambda r: r[key]) if key else (lambda r: r)
    mid = [pick(r)["accuracy"] for r in rows]
    ax.plot(xs, mid, marker="o", label=label)
    ax.fill_between(
        xs, [pick(r)["ci_low"] for r in rows], [pick(r)["ci_high"] for r in rows], alpha=0.2
    )


def plot_robustness_by_temperature(rows: Sequence[dict], path: Path) -> Path | None:
    """Corrupted-prompt accuracy (clean-prompt score A, solid; no-new-errors score B, dashed)
    against the sampling temperature, one curve per (gamma, cut): the mode switch (Result 13)."""
    curves: dict[tuple, list[dict]] = {}
    for r in rows:
        curves.setdefault((r["gamma"], r["cut"]), []).append(r)
    if not any(len(c) > 1 for c in curves.values()):
        return None  # one temperature: the report's table says it all
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (gamma, cut), curve in sorted(curves.items()):
        curve = sorted(curve, key=lambda r: r["temperature"])
        xs = [r["temperature"] for r in curve]
        _interval_line(ax, xs, curve, f"gamma={gamma:g}, cut{cut} (A)", key="clean")
        ax.plot(xs, [r["no_new_errors"]["accuracy"] for r in curve], "--", color="grey")
    ax.plot([], [], "--", color="grey", label="no new errors (B)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("temperature")
    ax.set_ylabel("accuracy on corrupted prompts (95% CI)")
    ax.set_title("robustness against temperature")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_unprompted_errors(rows: Sequence[dict], path: Path) -> Path | None:
    """Share of cut0 (unprompted) generations outside the language against the temperature."""
    cut0 = sorted((r for r in rows if r["cut"] == 0), key=lambda r: r["temperature"])
    if len(cut0) < 2:
        return None
    errors = [
        {"accuracy": 1 - r["accuracy"], "ci_low": 1 - r["ci_high"], "ci_high": 1 - r["ci_low"]}
        for r in cut0
    ]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    _interval_line(ax, [r["temperature"] for r in cut0], errors, "cut0 error rate")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("temperature")
    ax.set_ylabel("unprompted error rate (95% CI)")
    ax.set_title("unprompted generations outside the language")
    return save_figure(fig, path)
