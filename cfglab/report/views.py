"""Cross-run views described as data (no torch): each family's `COMPARE` entries, drawn over the
seed-aggregated rows of `cfglab compare` (and of `cfglab report RUN --compare OTHER`) without
knowing the family.

A view is {"name", "kind": "lines" | "table", "title", "caption", "metric", "where":
{qualifier: value, or "last" for the largest value of that grid point (e.g. its last layer)},
"x": [qualifiers, the first one the rows have goes on the x axis], "panels": [qualifiers that
split the figure into panels], "styles": {"qualifier", "values": {value: line style}},
"xscale", "ylabel"}. Rows measured at a training step (the dynamics stage's) belong to views
whose x axis is the step; every other view reads the rows about each run's final model.

A "lines" view is a figure (one colour per grid point, one line style per `styles` value, 95%
error bars across seeds, else the pooled interval) and the table of the numbers it plots; a
"table" view is the table only.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

FIXED = {"experiment", "stage", "metric", "n_seeds", "mean", "seed_ci_low", "seed_ci_high"}
FIXED |= {"pooled_ci_low", "pooled_ci_high"}


def _label(point: tuple, axes: list[str]) -> str:
    return ", ".join(f"{a.split('.')[-1]}={v}" for a, v in zip(axes, point, strict=True))


def _point(row: dict, axes: list[str]) -> tuple:
    return tuple(row.get(a) for a in axes)


def select(view: dict, agg: list[dict], axes: list[str]) -> list[dict]:
    """The aggregated rows a view shows."""
    by_step = "step" in view.get("x", [])
    rows = [
        a for a in agg if a["metric"] == view["metric"] and (a.get("step") is not None) == by_step
    ]
    for key, value in view.get("where", {}).items():
        if value == "last":
            top: dict[tuple, object] = {}
            for a in rows:
                if a.get(key) is not None:
                    p = _point(a, axes)
                    top[p] = max(top.get(p, a[key]), a[key])
            rows = [a for a in rows if a.get(key) == top.get(_point(a, axes))]
        else:
            rows = [a for a in rows if a.get(key) == value]
    return rows


def _present(rows: list[dict], keys: list[str]) -> list[str]:
    return [k for k in keys if any(r.get(k) is not None for r in rows)]


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _interval(a: dict) -> tuple:
    low = a["seed_ci_low"] if a["seed_ci_low"] is not None else a["pooled_ci_low"]
    high = a["seed_ci_high"] if a["seed_ci_high"] is not None else a["pooled_ci_high"]
    return low, high


def _layout(view: dict, rows: list[dict]) -> tuple[str | None, list[str], str | None]:
    x = next(iter(_present(rows, view.get("x", []))), None)
    panels = _present(rows, view.get("panels", []))
    style = (view.get("styles") or {}).get("qualifier")
    return x, panels, style if style in _present(rows, [style] if style else []) else None


def view_figure(view: dict, agg: list[dict], axes: list[str]) -> dict | None:
    """A "lines" view as a figure spec (cfglab.report.figures), None when no row matches."""
    rows = select(view, agg, axes)
    if not rows or view["kind"] != "lines":
        return None
    x, panels, style = _layout(view, rows)
    styles = (view.get("styles") or {}).get("values", {})
    points = list(dict.fromkeys(_point(a, axes) for a in rows))
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for a in rows:
        grouped[tuple(a.get(p) for p in panels)].append(a)
    out_panels = []
    for panel_key in sorted(grouped, key=lambda k: [_sort_key(v) for v in k]):
        mine, series = grouped[panel_key], []
        for i, point in enumerate(points):
            for value in dict.fromkeys(a.get(style) for a in mine) if style else [None]:
                sel = [a for a in mine if _point(a, axes) == point and a.get(style) == value]
                sel.sort(key=lambda a: _sort_key(a.get(x)))
                if not sel:
                    continue
                label = _label(point, axes) if axes else None
                if value is not None and value != next(iter(styles), value):
                    label = None  # one legend entry per grid point: its first line style
                series.append(
                    {
                        "label": label,
                        "x": [a.get(x) if x else "" for a in sel],
                        "y": [a["mean"] for a in sel],
                        "lo": [_interval(a)[0] for a in sel],
                        "hi": [_interval(a)[1] for a in sel],
                        "errorbar": True,
                        "marker": "o",
                        "color": i,
                        "style": styles.get(value, "-"),
                    }
                )
        title = ", ".join(f"{p}={v}" for p, v in zip(panels, panel_key, strict=True))
        out_panels.append(
            {
                "title": title or view.get("title", ""),
                "xlabel": x or "",
                "ylabel": view.get("ylabel", view["metric"]),
                "xscale": view.get("xscale"),
                "series": series,
            }
        )
    return {
        "name": view["name"],
        "kind": "lines",
        "title": view.get("title", ""),
        "caption": view.get("caption", ""),
        "panels": out_panels,
    }


def _cell(a: dict) -> str:
    from cfglab.report.tables import fmt_interval

    return fmt_interval(a["mean"], *_interval(a))


def view_table(view: dict, agg: list[dict], axes: list[str]) -> dict | None:
    """The numbers of a view: one row per grid point, panel and line style, one column per
    value of the x qualifier."""
    rows = select(view, agg, axes)
    if not rows:
        return None
    x, panels, style = _layout(view, rows)
    keys = [*panels, *([style] if style else [])]
    xs = sorted(dict.fromkeys(a.get(x) for a in rows), key=_sort_key) if x else [None]
    lines = list(dict.fromkeys((_point(a, axes), tuple(a.get(k) for k in keys)) for a in rows))
    cells = {
        (_point(a, axes), tuple(a.get(k) for k in keys), a.get(x) if x else None): _cell(a)
        for a in rows
    }
    header = [*(a.split(".")[-1] for a in axes), *keys]
    header += [f"{x}={v}" for v in xs] if x else ["value"]
    body = [
        [*map(str, point), *map(str, key), *(cells.get((point, key, v), "-") for v in xs)]
        for point, key in lines
    ]
    return {"title": view.get("title", view["name"]), "header": header, "rows": body}


def draw_views(
    views: list[dict],
    agg: list[dict],
    axes: list[str],
    fig_dir: Path,
    rel_to: Path,
    prefix: str = "",
) -> tuple[list[str], dict[str, Path]]:
    """Every view that has rows: its figure (fig_dir/<prefix><name>.png) and its table, as
    Markdown lines with links relative to rel_to; returns (lines, figure name -> path)."""
    from cfglab.report.figures import draw
    from cfglab.report.tables import table_markdown

    lines: list[str] = []
    figs: dict[str, Path] = {}
    for view in views:
        spec = view_figure(view, agg, axes)
        path = draw(spec, fig_dir / f"{prefix}{view['name']}.png") if spec else None
        if path is not None:
            figs[prefix + view["name"]] = path
            caption = view.get("caption") or view["name"]
            lines += [f"![{caption}]({path.relative_to(rel_to).as_posix()})", ""]
        table = view_table(view, agg, axes)
        if table is not None:
            lines += table_markdown(table)
    return lines, figs
