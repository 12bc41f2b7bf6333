"""Figures described as data, drawn here (no torch): what lets the report and `cfglab compare`
show any family's figures without knowing the family.

A spec is a JSON-ready dict {"name", "kind", "title", "caption", "panels": [...]}:

- kind "heatmaps": each panel {"title", "values": 2-D list (None = blank), "xlabels",
  "ylabels", "xlabel", "ylabel", "vmin", "vmax", "cmap", "annotate": "percent" | "value" |
  None, "width": relative panel width, "row": panel row (default 0), "marks": [{"at":
  [positions], "style": "-" | ":"}] lines drawn across the map at those rows and columns};
- kind "lines": each panel {"title", "xlabel", "ylabel", "xscale", "yscale", "ylim", "series":
  [{"label", "x", "y", "lo", "hi" (a band, or error bars with "errorbar": true), "style",
  "marker", "color": an index into the palette}], "hlines": [{"y", "style", "color", "label"}]}.

`draw(spec, path)` writes the PNG (through cfglab.rundir) and returns the path.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cfglab.report.plots import plt, save_figure  # plots.py chooses the Agg backend first


def _array(values) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)


def _annotate(ax, data: np.ndarray, how: str | None, vmin: float, vmax: float) -> None:
    if how is None or data.size > 400:  # too many cells to read numbers in
        return
    scale, fmt = (100.0, "{:.0f}") if how == "percent" else (1.0, "{:.3g}")
    for (i, j), v in np.ndenumerate(data):
        if not math.isnan(v):
            dark = v < (vmin + vmax) / 2
            ax.text(
                j,
                i,
                fmt.format(v * scale),
                ha="center",
                va="center",
                fontsize=7,
                color="w" if dark else "k",
            )


def _heat_panel(ax, panel: dict) -> None:
    data = _array(panel["values"])
    finite = data[np.isfinite(data)]
    vmin = panel.get("vmin", float(finite.min()) if finite.size else 0.0)
    vmax = panel.get("vmax", float(finite.max()) if finite.size else 1.0)
    ax.imshow(data, vmin=vmin, vmax=vmax, cmap=panel.get("cmap", "viridis"), aspect="auto")
    if "xlabels" in panel:
        ax.set_xticks(range(len(panel["xlabels"])), panel["xlabels"], fontsize=7)
    if "ylabels" in panel:
        ax.set_yticks(range(len(panel["ylabels"])), panel["ylabels"], fontsize=7)
    for mark in panel.get("marks", []):
        for at in mark["at"]:
            ax.axvline(at, color="tab:red", lw=0.6, ls=mark.get("style", "-"))
            ax.axhline(at, color="tab:red", lw=0.6, ls=mark.get("style", "-"))
    _annotate(ax, data, panel.get("annotate"), vmin, vmax)
    ax.set_title(panel.get("title", ""), fontsize=8)
    ax.set_xlabel(panel.get("xlabel", ""))
    ax.set_ylabel(panel.get("ylabel", ""))


def _draw_heatmaps(spec: dict):
    panels = spec["panels"]
    n_rows = 1 + max(p.get("row", 0) for p in panels)
    by_row = [[p for p in panels if p.get("row", 0) == r] for r in range(n_rows)]
    n_cols = max(len(r) for r in by_row)
    widths = [p.get("width", 3) for p in max(by_row, key=len)]
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
        figsize=(0.9 * sum(widths) + 1.2, 3.0 * n_rows + 0.4),
    )
    for r, row in enumerate(by_row):
        for c in range(n_cols):
            if c < len(row):
                _heat_panel(axes[r][c], row[c])
            else:
                axes[r][c].axis("off")
    return fig


def _series(ax, s: dict, palette) -> None:
    color = palette(s["color"] % 10) if s.get("color") is not None else None
    x = np.asarray(s["x"], dtype=object)
    numeric = all(isinstance(v, (int, float)) for v in x)
    xs = x.astype(float) if numeric else np.arange(len(x))
    y = np.array([np.nan if v is None else v for v in s["y"]], dtype=float)
    style = {"linestyle": s.get("style", "-"), "marker": s.get("marker"), "color": color}
    lo, hi = s.get("lo"), s.get("hi")
    has_band = lo is not None and hi is not None and any(v is not None for v in lo)
    if has_band and s.get("errorbar"):
        low = np.array([np.nan if v is None else v for v in lo], dtype=float)
        high = np.array([np.nan if v is None else v for v in hi], dtype=float)
        err = [np.nan_to_num(y - low), np.nan_to_num(high - y)]
        ax.errorbar(xs, y, yerr=err, capsize=3, label=s.get("label"), **style)
    else:
        line = ax.plot(xs, y, label=s.get("label"), **style)[0]
        if has_band:
            low = np.array([np.nan if v is None else v for v in lo], dtype=float)
            high = np.array([np.nan if v is None else v for v in hi], dtype=float)
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in x], fontsize=7, rotation=30 if len(x) > 4 else 0)


def _lines_panel(ax, panel: dict, palette) -> None:
    for s in panel.get("series", []):
        _series(ax, s, palette)
    for h in panel.get("hlines", []):
        color = palette(h["color"] % 10) if h.get("color") is not None else "k"
        ax.axhline(
            h["y"], color=color, linestyle=h.get("style", "--"), lw=0.9, label=h.get("label")
        )
    for axis in ("x", "y"):
        if panel.get(f"{axis}scale"):
            getattr(ax, f"set_{axis}scale")(panel[f"{axis}scale"])
    xs = {v for s in panel.get("series", []) for v in s["x"]}
    if xs and all(isinstance(v, int) for v in xs) and len(xs) <= 15 and not panel.get("xscale"):
        ax.set_xticks(sorted(xs))  # whole levels, not 1.5
    if panel.get("ylim"):
        ax.set_ylim(*panel["ylim"])
    ax.set_title(panel.get("title", ""), fontsize=9)
    ax.set_xlabel(panel.get("xlabel", ""))
    ax.set_ylabel(panel.get("ylabel", ""))
    if any(s.get("label") for s in panel.get("series", [])):
        ax.legend(fontsize=6, ncol=2 if len(panel["series"]) > 6 else 1)


def _draw_lines(spec: dict):
    panels = spec["panels"]
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(4.2 * cols, 3.3 * rows))
    palette = plt.get_cmap("tab10")
    for k, panel in enumerate(panels):
        _lines_panel(axes[k // cols][k % cols], panel, palette)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    return fig


KINDS = {"heatmaps": _draw_heatmaps, "lines": _draw_lines}


def draw(spec: dict, path: Path) -> Path | None:
    """The figure of a spec as a PNG at `path`; None when it has no panel to draw."""
    if not spec.get("panels"):
        return None
    fig = KINDS[spec["kind"]](spec)
    if spec.get("title"):
        fig.suptitle(spec["title"], fontsize=10)
    return save_figure(fig, path)
