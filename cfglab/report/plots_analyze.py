"""Figures and Markdown tables of a run's analyze/*.json (probes, attention); no torch.

`write_analyze_figures(run_dir)` writes every figure the files allow into report/figures/ and
returns name -> path; `analyze_markdown(run_dir, figs, rel_to)` is the report section.
`plot_probe_compare` / `compare_markdown` put several runs side by side (GPT vs encoder).
matplotlib runs with the Agg backend; every figure is closed after saving.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cfglab import rundir
from cfglab.report.plots import _save, plt  # plots.py chooses the Agg backend first


def _table(probe: dict, target: str, window: str = "all") -> dict | None:
    for t in probe["tables"]:
        if t["target"] == target and t["window"] == window:
            return t
    return None


def _heat(
    ax,
    data: np.ndarray,
    xlabels,
    ylabels,
    title: str,
    vmin=0.0,
    vmax=1.0,
    fmt="{:.0f}",
    scale=100.0,
    cmap="viridis",
):
    im = ax.imshow(data, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels)
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_title(title, fontsize=9)
    for (i, j), v in np.ndenumerate(data):
        if not math.isnan(v):
            ax.text(
                j,
                i,
                fmt.format(v * scale),
                ha="center",
                va="center",
                fontsize=7,
                color="w" if v < (vmin + vmax) / 2 else "k",
            )
    return im


# ---- probes ------------------------------------------------------------------------------------
def plot_probe_heatmap(
    probe: dict, path: Path, target: str = "ancestor", window: str = "all"
) -> Path | None:
    """Probe accuracy (%) layer x level: trained model | random-init twin | majority class."""
    t = _table(probe, target, window)
    if t is None:
        return None
    panels = [("model", np.array(t["accuracy"]["model"]))]
    if "random_init" in t["accuracy"]:
        panels.append(("random init", np.array(t["accuracy"]["random_init"])))
    levels = [f"L{lev}" for lev in t["levels"]]
    layers = [str(i) for i in range(len(panels[0][1]))]
    fig, axes = plt.subplots(
        1,
        len(panels) + 1,
        figsize=(3.2 * len(panels) + 2.4, 3.2),
        gridspec_kw={"width_ratios": [3] * len(panels) + [1.2]},
    )
    for ax, (name, acc) in zip(axes, panels, strict=False):
        _heat(ax, acc, levels, layers, f"{probe.get('run', '')}: {name}")
        ax.set_xlabel("level (1 = below the root)")
        ax.set_ylabel("layer")
    _heat(axes[-1], np.array(t["majority"])[:, None], ["maj."], levels, "majority")
    fig.suptitle(
        f"{target} probe accuracy (%), window {window}, {t['where']} positions", fontsize=10
    )
    return _save(fig, path)


def plot_probe_compare(
    probes: dict[str, dict], path: Path, target: str = "ancestor", window: str = "all"
) -> Path | None:
    """Last-layer probe accuracy by level for several runs (e.g. GPT vs encoder), each with its
    random-init twin dashed and the majority rate dotted."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    drawn = False
    for i, (label, probe) in enumerate(probes.items()):
        t = _table(probe, target, window)
        if t is None:
            continue
        color = f"C{i}"
        lv = t["levels"]
        ax.plot(lv, np.array(t["accuracy"]["model"][-1]) * 100, "o-", color=color, label=label)
        if "random_init" in t["accuracy"]:
            ax.plot(
                lv,
                np.array(t["accuracy"]["random_init"][-1]) * 100,
                "s--",
                color=color,
                alpha=0.6,
                label=f"{label}: random init",
            )
        if i == 0:
            ax.plot(lv, np.array(t["majority"]) * 100, "k:", label="majority class")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xticks(
        sorted({lev for p in probes.values() for t in p["tables"] for lev in t["levels"]})
    )
    ax.set_xlabel("level (1 = below the root; deeper to the right)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{target} probe at the last layer (window {window})", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def probe_markdown(probe: dict) -> list[str]:
    """One Markdown table per probe table: rows layers, columns levels, model / random-init."""
    out = []
    for t in probe["tables"]:
        levels = t["levels"]
        out += [
            f"**{t['target']} probe** (window {t['window']}, {t['where']} positions; "
            f"accuracy %, model / random-init)",
            "",
            "| layer | " + " | ".join(f"L{lev}" for lev in levels) + " |",
            "|---|" + "---|" * len(levels),
        ]
        model = t["accuracy"]["model"]
        rand = t["accuracy"].get("random_init")
        for i, row in enumerate(model):
            cells = [
                f"{100 * v:.1f}" + (f" / {100 * rand[i][j]:.1f}" if rand else "")
                for j, v in enumerate(row)
            ]
            out.append(f"| {i} | " + " | ".join(cells) + " |")
        out += ["| majority | " + " | ".join(f"{100 * v:.1f}" for v in t["majority"]) + " |", ""]
    return out


def compare_markdown(
    probes: dict[str, dict], target: str = "ancestor", window: str = "all"
) -> list[str]:
    """Last-layer accuracy by level, one row per run (model and random-init)."""
    rows, levels, majority = [], None, None
    for label, probe in probes.items():
        t = _table(probe, target, window)
        if t is None:
            continue
        levels = t["levels"]
        if majority is None:  # the same grammar and probe data for all runs: one majority row
            majority = "| majority class | " + " | ".join(f"{100 * v:.1f}" for v in t["majority"])
        rows.append(
            f"| {label} | "
            + " | ".join(f"{100 * v:.1f}" for v in t["accuracy"]["model"][-1])
            + " |"
        )
        if "random_init" in t["accuracy"]:
            rows.append(
                f"| {label} random-init | "
                + " | ".join(f"{100 * v:.1f}" for v in t["accuracy"]["random_init"][-1])
                + " |"
            )
    if levels is None:
        return []
    return [
        f"**{target} probe, last layer** (window {window}; accuracy %)",
        "",
        "| run | " + " | ".join(f"L{lev}" for lev in levels) + " |",
        "|---|" + "---|" * len(levels),
        *rows,
        majority + " |",
        "",
    ]


# ---- attention ---------------------------------------------------------------------------------
def plot_attention_distance(att: dict, path: Path, max_distance: int = 64) -> Path:
    """Mean attention vs distance a - b, one panel per layer, one curve per head (log scale)."""
    res = att["model"]
    d = np.array(res["distances"])
    keep = np.abs(d) <= max_distance
    mean = np.array(res["mean_by_distance"], dtype=float)  # (n_layer, H, D)
    n_layer, n_head = mean.shape[:2]
    cols = min(n_layer, 4)
    rows = math.ceil(n_layer / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True
    )
    for layer in range(n_layer):
        ax = axes[layer // cols][layer % cols]
        for h in range(n_head):
            ax.plot(d[keep], np.clip(mean[layer, h, keep], 1e-5, None), lw=1, label=f"h{h}")
        ax.set_yscale("log")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("distance (query - key)")
    axes[0][0].set_ylabel("mean attention")
    axes[0][0].legend(fontsize=6, ncol=2)
    for k in range(n_layer, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"{att.get('run', '')}: position bias (mean attention by distance)", fontsize=10)
    return _save(fig, path)


def _boundary(res: dict, level: int) -> np.ndarray:
    return np.array(res["head_scores"][f"boundary_l{level}"], dtype=float)


def plot_boundary_heatmap(att: dict, path: Path) -> Path:
    """Boundary-attention score (mass on adjacent NT ends) per layer x head, one panel per level,
    trained model above, random-init below; the chance level is in each title."""
    levels = sorted(
        int(k[len("boundary_l") :])
        for k in att["model"]["head_scores"]
        if k.startswith("boundary_l")
    )
    which = [k for k in ("model", "random_init") if k in att]
    fig, axes = plt.subplots(
        len(which),
        len(levels),
        squeeze=False,
        figsize=(2.3 * len(levels) + 0.6, 2.3 * len(which) + 0.4),
    )
    for r, key in enumerate(which):
        for c, lev in enumerate(levels):
            s = _boundary(att[key], lev)
            chance = att[key]["chance"][f"boundary_l{lev}"]
            ax = axes[r][c]
            _heat(
                ax,
                s,
                [str(h) for h in range(s.shape[1])],
                [str(i) for i in range(len(s))],
                f"{key.replace('_', ' ')}: L{lev} (chance {100 * chance:.1f})",
                cmap="magma",
            )
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
    fig.suptitle("boundary attention (%): mass from an NT end on the adjacent NT ends", fontsize=10)
    return _save(fig, path)


def plot_attention_examples(att: dict, path: Path) -> Path | None:
    """Example attention maps (first string) of the heads with the highest boundary score, with
    the NT ends of two levels drawn as lines (solid: shallower level, dotted: deeper)."""
    ex = att["model"].get("example")
    if not ex or not ex["maps"]:
        return None
    bnd = np.array(ex["is_boundary"], dtype=bool)  # (L, m)
    lv = [lev for lev in range(1, len(bnd)) if bnd[lev].any()]
    shown = [lv[(len(lv) - 1) // 2], lv[-1]] if len(lv) > 1 else lv  # a shallow and the deepest
    fig, axes = plt.subplots(
        1, len(ex["maps"]), figsize=(3.3 * len(ex["maps"]), 3.5), squeeze=False
    )
    for ax, m in zip(axes[0], ex["maps"], strict=True):
        a = np.array(m["pattern"])
        ax.imshow(a, cmap="Blues", vmin=0, vmax=max(a.max(), 1e-6))
        for style, lev in zip(("-", ":"), shown, strict=False):
            for e in np.flatnonzero(bnd[lev]):
                ax.axvline(e, color="tab:red", lw=0.6, ls=style)
                ax.axhline(e, color="tab:red", lw=0.6, ls=style)
        ax.set_title(
            f"layer {m['layer']} head {m['head']} (boundary {100 * m['boundary_score']:.0f}%)",
            fontsize=8,
        )
        ax.set_xlabel("key token")
        ax.set_ylabel("query token")
    fig.suptitle(f"attention maps, NT ends of levels {shown} (solid / dotted)", fontsize=9)
    return _save(fig, path)


def attention_markdown(att: dict) -> list[str]:
    """Per level: the best boundary head (score vs chance) of the model and of random init, and
    the position-based heads (previous / current token)."""
    out = [
        "| statistic | best head (layer.head) | score % | random-init best % | chance % |",
        "|---|---|---|---|---|",
    ]
    for name in att["model"]["head_scores"]:
        s = np.array(att["model"]["head_scores"][name], dtype=float)
        i = np.unravel_index(np.nanargmax(s), s.shape)
        rand = "-"
        if "random_init" in att:
            rand = f"{100 * np.nanmax(np.array(att['random_init']['head_scores'][name])):.1f}"
        out.append(
            f"| {name} | {i[0]}.{i[1]} | {100 * s[i]:.1f} | {rand} | "
            f"{100 * att['model']['chance'][name]:.1f} |"
        )
    return out + [""]


# ---- a run's section ---------------------------------------------------------------------------
def write_analyze_figures(analyze: dict[str, dict], fig_dir: Path) -> dict[str, Path]:
    """Every figure a run's analyze results ({"probe": ..., "attention": ...}, as
    cfglab.rundir.read_results reads them) allow, into fig_dir."""
    figs: dict[str, Path] = {}
    probe = analyze.get("probe")
    if probe:
        for target in ("ancestor", "boundary"):
            p = plot_probe_heatmap(probe, fig_dir / f"probe_{target}.png", target)
            if p:
                figs[f"probe_{target}"] = p
    att = analyze.get("attention")
    if att:
        figs["attention_distance"] = plot_attention_distance(
            att, fig_dir / "attention_distance.png"
        )
        figs["attention_boundary"] = plot_boundary_heatmap(att, fig_dir / "attention_boundary.png")
        p = plot_attention_examples(att, fig_dir / "attention_examples.png")
        if p:
            figs["attention_examples"] = p
    return figs


def analyze_markdown(analyze: dict[str, dict], figs: dict[str, Path], rel_to: Path) -> list[str]:
    """The report section "Inside the model" (empty if the run has no analyze results)."""
    probe, att = analyze.get("probe"), analyze.get("attention")
    if not probe and not att:
        return []
    out = ["## Inside the model", ""]

    def fig(name: str, caption: str) -> None:
        if name in figs:
            out.extend([f"![{caption}]({figs[name].relative_to(rel_to)})", "", f"*{caption}*", ""])

    if probe:
        out += [
            f"Multi-head linear probes on each layer's residual stream (trained on "
            f"{probe['n_train']} fresh strings, scored on {probe['n_test']} others, "
            f"{probe['n_test_tokens']} tokens); the random-init twin has the same shape.",
            "",
        ]
        out += probe_markdown(probe)
        fig("probe_ancestor", "NT-ancestor probe accuracy per layer and level")
        fig("probe_boundary", "NT-boundary probe accuracy per layer and level")
    if att:
        out += [f"Attention statistics on {att['n_strings']} fresh strings.", ""]
        out += attention_markdown(att)
        fig("attention_distance", "mean attention by distance (position bias)")
        fig("attention_boundary", "boundary attention per layer and head")
        fig("attention_examples", "example attention maps with NT ends")
    return out


def compare_runs(
    run_dirs: Sequence[str | Path], out_dir: str | Path, rel_to: str | Path | None = None
) -> list[str]:
    """GPT vs encoder (or any runs) side by side: last-layer probe tables (ancestor, boundary)
    and figures probe_compare[_boundary].png in out_dir, as Markdown lines whose figure links
    are relative to rel_to (default out_dir). Runs without analyze/probe.json are left out."""
    probes = {}
    for d in run_dirs:
        p = rundir.read_result(d, f"{rundir.ANALYZE}/probe")
        if p:
            probes[f"{p['run']} ({p.get('objective', '?')})"] = p
    if not probes:
        return []
    rel = Path(out_dir if rel_to is None else rel_to)
    out: list[str] = []
    for target, name in (
        ("ancestor", "probe_compare.png"),
        ("boundary", "probe_compare_boundary.png"),
    ):
        out += compare_markdown(probes, target)
        path = plot_probe_compare(probes, Path(out_dir) / name, target)
        if path:
            out += [f"![{target} probe comparison]({path.relative_to(rel).as_posix()})", ""]
    return out
