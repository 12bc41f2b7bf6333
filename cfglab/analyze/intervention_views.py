"""The interventions family's result as tidy rows, report tables and figure specs (no torch):
what cfglab.analyze.interventions' summary_rows, tables and figures return, from the result
alone (the report and `cfglab compare` draw them without knowing the family).

A result's numbers are cells {mean, lo, hi, n} (cfglab.analyze.kl_rows): a pooled mean and its
95% bootstrap interval; erasure and head cells hold one per row group ("all", "start", "L1",
..., "inside").
"""

from __future__ import annotations


def _fmt(cell: dict | None, digits: int = 4) -> str:
    """`mean [lo, hi]`, or "-"."""
    if not cell or cell.get("mean") is None:
        return "-"
    text = f"{cell['mean']:.{digits}f}"
    if cell.get("lo") is not None:
        text += f" [{cell['lo']:.{digits}f}, {cell['hi']:.{digits}f}]"
    return text


def _moved(cell: dict) -> str:
    """The share of the states' variance an eraser moves: LEACE / random."""
    rand = cell.get("random_displacement")
    return f"{100 * cell['displacement']:.1f}% / " + ("-" if rand is None else f"{100 * rand:.1f}%")


def _layer(name: str) -> int:
    """blocks.{i}.<anything> -> i."""
    return int(name.split(".")[1])


def _column_name(column: dict) -> str:
    if "level" in column:
        return f"L{column['level']}"
    return str(column.get("label", "all"))


# ---- rows ------------------------------------------------------------------------------------
def group_rows(base: dict, cells: dict | None, n: int, skip: tuple = ()) -> list[dict]:
    """One row per row group of `cells` ({group: cell}) with the qualifiers of `base`."""
    out = []
    for group, cell in (cells or {}).items():
        if group in skip or cell.get("mean") is None:
            continue
        value = {"value": cell["mean"], "ci_low": cell["lo"], "ci_high": cell["hi"], "n": n}
        out.append({**base, "rows": group, **value})
    return out


def erasure_rows(erasure: dict | None, n: int) -> list[dict]:
    """erase_kl_rise per (target, column, layer, eraser, rows) and erase_kl_excess; row 0
    (start) is left out: an eraser at the token positions never changes it."""
    out = []
    for cell in (erasure or {}).get("cells", []):
        base = {"target": cell["target"], **cell["column"], "layer": cell["layer"]}
        for eraser in ("leace", "random"):
            metric = {"metric": "erase_kl_rise", **base, "eraser": eraser}
            out += group_rows(metric, cell[eraser], n, skip=("start",))
        out += group_rows({"metric": "erase_kl_excess", **base}, cell["excess"], n, ("start",))
    return out


def head_rows(heads: dict | None, n: int) -> list[dict]:
    out = []
    heads = heads or {"layers": [], "kl_rise": []}
    for name, row in zip(heads["layers"], heads["kl_rise"], strict=True):
        for h, cells in enumerate(row):
            base = {"metric": "head_ablation_kl_rise", "layer": _layer(name), "head": h}
            out += group_rows(base, cells, n)
    return out


def patching_rows(patching: dict | None) -> list[dict]:
    """patch_recovered per (level, layer, offset); the pooled levels are in the tables only."""
    out = []
    if not patching:
        return out
    for level in patching["levels"]:
        for name, row in zip(patching["layers"], patching["recovered"][str(level)], strict=True):
            for d, cell in zip(patching["offsets"], row, strict=True):
                if cell["mean"] is None:
                    continue
                out.append(
                    {
                        "metric": "patch_recovered",
                        "level": level,
                        "layer": _layer(name),
                        "offset": d,
                        "value": cell["mean"],
                        "ci_low": cell["lo"],
                        "ci_high": cell["hi"],
                        "n": cell["n"],
                    }
                )
    return out


# ---- tables ----------------------------------------------------------------------------------
def erasure_tables(result: dict) -> list[dict]:
    """One table per erased target: rows (column, layer), KL rises with their intervals."""
    erasure = result["erasure"]
    if not erasure:
        return []
    groups = [g for g in result["groups"] if g != "start"]
    out = []
    for target in dict.fromkeys(c["target"] for c in erasure["cells"]):
        cells = [c for c in erasure["cells"] if c["target"] == target]
        rows = [
            [
                _column_name(c["column"]),
                str(c["layer"]),
                str(c["rank"]),
                _fmt(c["leace"]["all"]),
                _fmt((c["random"] or {}).get("all")),
                _fmt((c["excess"] or {}).get("all")),
                _moved(c),
                *(_fmt(c["leace"].get(g), 3) for g in groups),
            ]
            for c in cells
        ]
        out.append(
            {
                "title": f"erasing the {target} probe's information per layer (LEACE) vs a random "
                f"subspace of equal rank: next-token KL rise, nats per row [95% CI over "
                f"{result['n_strings']} strings]",
                "header": ["probe", "layer", "rank", "LEACE", "random", "LEACE - random"]
                + ["variance moved"]
                + [f"LEACE, rows {g}" for g in groups],
                "rows": rows,
                "note": "The unmodified model's KL on these strings: "
                f"{_fmt(result['clean']['all'])} nats per row; rows L<l>: after a token that ends "
                "a level-l NT. Variance moved: mean squared change of the fit strings' states "
                "over their total variance (LEACE / random).",
            }
        )
    return out


def patching_tables(patching: dict | None) -> list[dict]:
    """Per level (and pooled): share recovered, layers x offsets from the NT end."""
    if not patching:
        return []
    out = []
    for key in ["all", *map(str, patching["levels"])]:
        rows = [
            [str(_layer(name)), *("-" if c["mean"] is None else f"{c['mean']:.2f}" for c in row)]
            for name, row in zip(patching["layers"], patching["recovered"][key], strict=True)
        ]
        what = "all levels" if key == "all" else f"level {key}"
        out.append(
            {
                "title": f"activation patching, {what} ({patching['n_pairs'][key]} pairs, "
                f"{100 * patching['same_nt'][key]:.0f}% with the same NT): share of the way to the"
                " source recovered by patching one residual-stream cell (layer x position from the"
                " NT's last token)",
                "header": ["layer", *(f"{d:+d}" for d in patching["offsets"])],
                "rows": rows,
                "note": f"KL(source exact || target run) {patching['kl_clean'][key]:.3f}, "
                f"KL(source exact || source run) {patching['kl_source'][key]:.3f} nats at the row "
                "after the NT.",
            }
        )
    return out


def head_table(result: dict) -> list[dict]:
    heads = result["heads"]
    if not heads or not heads["layers"]:
        return []
    groups = ["all", *result["groups"]]
    rows = [
        [f"{_layer(name)}.{h}", *(_fmt(cells.get(g), 3) for g in groups)]
        for name, row in zip(heads["layers"], heads["kl_rise"], strict=True)
        for h, cells in enumerate(row)
    ]
    return [
        {
            "title": "mean-ablating one head: next-token KL rise, nats per row [95% CI over "
            f"{result['n_strings']} strings]",
            "header": ["layer.head", *(f"rows {g}" for g in groups)],
            "rows": rows,
        }
    ]


# ---- figures ---------------------------------------------------------------------------------
def _heat(title: str, values: list, xlabels: list, ylabels: list, xlabel: str, **kw) -> dict:
    return {
        "title": title,
        "values": values,
        "xlabels": xlabels,
        "ylabels": ylabels,
        "xlabel": xlabel,
        "ylabel": "layer",
        "annotate": "value",
        **kw,
    }


def erasure_figures(result: dict) -> list[dict]:
    """Per target: KL rise (all rows) per layer x probe column, LEACE beside random."""
    erasure = result["erasure"]
    if not erasure:
        return []
    out = []
    for target in dict.fromkeys(c["target"] for c in erasure["cells"]):
        cells = [c for c in erasure["cells"] if c["target"] == target]
        columns = list(dict.fromkeys(_column_name(c["column"]) for c in cells))
        layers = sorted({c["layer"] for c in cells})

        def grid(key: str, cells=cells, columns=columns, layers=layers) -> list:
            at = {(c["layer"], _column_name(c["column"])): c for c in cells}
            return [
                [((at[lay, col][key] or {}).get("all") or {}).get("mean") for col in columns]
                for lay in layers
            ]

        both = [v for key in ("leace", "random") for r in grid(key) for v in r if v is not None]
        top = max(both + [1e-9])
        labels = [str(x) for x in layers]
        panels = [
            _heat(name, grid(key), columns, labels, "probe", vmin=0, vmax=top)
            for key, name in (("leace", "LEACE"), ("random", "random subspace, equal rank"))
        ]
        out.append(
            {
                "name": f"erasure_{target}",
                "kind": "heatmaps",
                "title": f"next-token KL rise when the {target} probe's information is erased",
                "caption": f"KL rise (nats per row) when LEACE erases the {target} labels from a "
                "layer's residual stream, beside a random subspace of the same rank",
                "panels": panels,
            }
        )
    return out


def patching_figure(patching: dict | None) -> list[dict]:
    if not patching:
        return []
    offsets = [f"{d:+d}" for d in patching["offsets"]]
    layers = [str(_layer(n)) for n in patching["layers"]]
    panels = []
    for key in ["all", *map(str, patching["levels"])]:
        values = [[c["mean"] for c in row] for row in patching["recovered"][key]]
        title = (
            "all levels" if key == "all" else f"level {key}"
        ) + f" ({patching['n_pairs'][key]})"
        panels.append(
            _heat(title, values, offsets, layers, "position from NT end", vmin=0, vmax=1,
                  annotate="percent")
        )  # fmt: skip
    return [
        {
            "name": "patching",
            "kind": "heatmaps",
            "title": "activation patching: share recovered (%)",
            "caption": "share of the way to the source string's prediction after an NT recovered "
            "by patching one layer's residual stream at one position (0: the NT's last token)",
            "panels": panels,
        }
    ]


def head_figure(result: dict) -> list[dict]:
    heads = result["heads"]
    if not heads or not heads["layers"]:
        return []
    layers = [str(_layer(n)) for n in heads["layers"]]
    groups = ["all", *(g for g in result["groups"] if g != "start")]
    panels = [
        _heat(
            f"rows {g}",
            [[cells.get(g, {}).get("mean") for cells in row] for row in heads["kl_rise"]],
            [str(h) for h in range(heads["n_head"])],
            layers,
            "head",
            vmin=0,
        )
        for g in groups
    ]
    return [
        {
            "name": "head_ablation",
            "kind": "heatmaps",
            "title": "next-token KL rise when one head is mean-ablated",
            "caption": "KL rise (nats per row) per mean-ablated head, all rows and by the level of"
            " the NT ending before the row",
            "panels": panels,
        }
    ]
