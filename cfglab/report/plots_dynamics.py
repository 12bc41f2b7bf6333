"""Figures and tables of a run's training dynamics (analyze/dynamics.jsonl; no torch).

`write_dynamics_figures` draws, against the step (log scale): per-level probe accuracy at the
last layer (the random-init twin dashed), generation accuracy and next-token KL, KL by the level
of the NT ending before each row, and the attention head scores; `emergence_markdown` is the
emergence table; `dynamics_markdown` the report section. Across runs: plots_compare's
`plot_dynamics` (mean over seeds per grid point).
"""

from __future__ import annotations

from pathlib import Path

from cfglab.report.plots import _save, plt  # plots.py chooses the Agg backend first


def _steps(records: list[dict]) -> list[int]:
    return [r["step"] for r in records]


def plot_probe_dynamics(records: list[dict], baseline: dict, path: Path) -> Path | None:
    keys = sorted((records[-1].get("probe") or {}).keys())
    if not keys:
        return None
    targets = sorted({k.split("_L")[0] for k in keys})
    fig, axs = plt.subplots(1, len(targets), figsize=(5 * len(targets), 3.6), squeeze=False)
    colors = plt.get_cmap("viridis")
    for ax, target in zip(axs[0], targets, strict=True):
        mine = [k for k in keys if k.startswith(target)]
        for i, key in enumerate(mine):
            color = colors(i / max(1, len(mine) - 1))
            ax.plot(
                _steps(records),
                [r["probe"][key]["last"] for r in records],
                marker="o",
                color=color,
                label=key.split("_")[-1],
            )
            base = baseline.get("probe", {}).get(key, {}).get("last")
            if base is not None:
                ax.axhline(base, color=color, linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("last-layer probe accuracy")
        ax.set_title(f"{target} probe per level (dashed: random init)", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_accuracy_kl(records: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = _steps(records)
    acc = [r["accuracy"] for r in records]
    ax.plot(steps, [a["accuracy"] for a in acc], marker="o", color="tab:blue", label="cut0 acc.")
    ax.fill_between(
        steps, [a["ci_low"] for a in acc], [a["ci_high"] for a in acc], color="tab:blue", alpha=0.2
    )
    ax.set_ylim(0, 1.05)
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("generation accuracy (95% CI)", color="tab:blue")
    kl = ax.twinx()
    kl.plot(steps, [r["kl"] for r in records], marker="s", color="tab:red")
    kl.set_yscale("log")
    kl.set_ylabel("next-token KL", color="tab:red")
    ax.set_title("accuracy and KL against step", fontsize=9)
    return _save(fig, path)


def plot_kl_by_level(records: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    groups = list(records[-1]["kl_by_level"])
    for g in groups:
        ax.plot(
            _steps(records),
            [r["kl_by_level"].get(g, {}).get("kl") for r in records],
            marker="o",
            label=g,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("next-token KL")
    ax.set_title("KL by the level of the NT ending before each row", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_heads(records: list[dict], baseline: dict, path: Path) -> Path | None:
    if "heads" not in records[-1]:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in records[-1]["heads"]:
        line = ax.plot(
            _steps(records), [r["heads"][name] for r in records], marker="o", label=name
        )[0]
        base = baseline.get("heads", {}).get(name)
        if base is not None:
            ax.axhline(base, color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("best head's score")
    ax.set_title("attention head scores (dashed: random init)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_dynamics_figures(records: list[dict], summary: dict, fig_dir: Path) -> dict[str, Path]:
    if not records:
        return {}
    baseline = summary.get("baseline", {}) if summary else {}
    figs = {
        "dynamics_probe": plot_probe_dynamics(records, baseline, fig_dir / "dynamics_probe.png"),
        "dynamics_accuracy": plot_accuracy_kl(records, fig_dir / "dynamics_accuracy.png"),
        "dynamics_kl_level": plot_kl_by_level(records, fig_dir / "dynamics_kl_level.png"),
        "dynamics_heads": plot_heads(records, baseline, fig_dir / "dynamics_heads.png"),
    }
    return {k: v for k, v in figs.items() if v is not None}


def emergence_markdown(table: list[dict]) -> list[str]:
    """The emergence table: per probe level (and generation accuracy), the first kept step at
    halfway from the baseline to the final value, with the checkpoints that bracket it."""
    out = [
        "| measure | baseline | final | halfway | first step at halfway | bracket |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        step = "never" if row["step"] is None else str(row["step"])
        bracket = "-" if row["bracket"] is None else f"({row['bracket'][0]}, {row['bracket'][1]}]"
        out.append(
            f"| {row['what']} | {row['baseline']:.3f} | {row['final']:.3f} | "
            f"{row['halfway']:.3f} | {step} | {bracket} |"
        )
    return out + [""]


def dynamics_markdown(records, summary, figs: dict[str, Path], rel_to: Path) -> list[str]:
    if not records:
        return []
    out = [
        "## Training dynamics",
        "",
        f"{len(records)} kept checkpoints (steps {', '.join(str(r['step']) for r in records)}); "
        "each measured with the eval and probe stages' code. Emergence: the first kept step at "
        "which a measure reaches halfway from its baseline (the random-init twin for probes, the "
        "first checkpoint for accuracy) to its final value.",
        "",
        *emergence_markdown((summary or {}).get("emergence", [])),
    ]
    captions = {
        "dynamics_probe": "last-layer probe accuracy per level against step",
        "dynamics_accuracy": "cut0 generation accuracy and next-token KL against step",
        "dynamics_kl_level": "next-token KL by level against step",
        "dynamics_heads": "attention head scores against step",
    }
    for name, caption in captions.items():
        if name in figs:
            out += [f"![{caption}]({figs[name].relative_to(rel_to).as_posix()})", ""]
    return out
