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


def _cell_row(base: dict, cell: dict | None) -> list[dict]:
    """One tidy row of a {mean, lo, hi, n} cell ([] when it has no value)."""
    if not cell or cell.get("mean") is None:
        return []
    return [{**base, "value": cell["mean"], "ci_low": cell["lo"], "ci_high": cell["hi"],
             "n": cell["n"]}]  # fmt: skip


def generation_rows(erasure: dict | None) -> list[dict]:
    """erase_accuracy_clean; erase_accuracy and erase_accuracy_drop per (target, column, layer,
    eraser)."""
    if not erasure or not erasure.get("generation_clean"):
        return []
    out = _cell_row({"metric": "erase_accuracy_clean"}, erasure["generation_clean"])
    for cell in erasure["cells"]:
        base = {"target": cell["target"], **cell["column"], "layer": cell["layer"]}
        for eraser, got in (cell["generation"] or {}).items():
            if got:
                out += _cell_row({"metric": "erase_accuracy", **base, "eraser": eraser},
                                 got["accuracy"])  # fmt: skip
                out += _cell_row({"metric": "erase_accuracy_drop", **base, "eraser": eraser},
                                 got["drop"])  # fmt: skip
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
    for level in patching["levels"]:
        heads = patching.get("heads", {}).get(str(level), [])
        for name, row in zip(patching.get("head_layers", []), heads, strict=True):
            for h, cell in enumerate(row):
                base = {"metric": "patch_head_recovered", "level": level, "layer": _layer(name)}
                out += _cell_row({**base, "head": h}, cell)
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


def generation_table(result: dict) -> list[dict]:
    """Cut0 accuracy per erased (target, column, layer): LEACE, random, and their drops."""
    erasure = result["erasure"]
    if not erasure or not erasure.get("generation_clean"):
        return []

    def both(got: dict | None) -> list[str]:
        if not got:
            return ["-", "-"]
        return [_fmt(got["accuracy"], 3), _fmt(got["drop"], 3)]

    rows = [
        [c["target"], _column_name(c["column"]), str(c["layer"]),
         *both(c["generation"]["leace"]), *both(c["generation"]["random"])]
        for c in erasure["cells"]
        if c["generation"]
    ]  # fmt: skip
    clean = erasure["generation_clean"]
    return [
        {
            "title": "cut0 generation accuracy with a layer's probe information erased (LEACE) vs"
            f" a random subspace of equal rank [95% CI over {clean['n']} generations]",
            "header": ["target", "probe", "layer", "LEACE", "LEACE drop", "random"]
            + ["random drop"],
            "rows": rows,
            "note": f"The unmodified model on the same sampling seed: {_fmt(clean, 3)} "
            f"({clean['k']}/{clean['n']} sentences). Generations start at BOS, temperature 1, "
            "the eraser acting at every generated position; judged by exact CYK recognition.",
        }
    ]


def head_patching_table(patching: dict | None) -> list[dict]:
    """Share recovered by patching one head's output at the NT end: rows layer.head, columns
    the pooled levels and each level."""
    if not patching or not patching.get("head_layers"):
        return []
    keys = ["all", *map(str, patching["levels"])]
    rows = [
        [f"{_layer(name)}.{h}", *(_fmt(patching["heads"][k][li][h], 2) for k in keys)]
        for li, name in enumerate(patching["head_layers"])
        for h in range(len(patching["heads"]["all"][li]))
    ]
    return [
        {
            "title": "activation patching of one head's output (hook_z) at the NT's last token: "
            "share of the way to the source recovered [95% CI over pairs]",
            "header": ["layer.head"]
            + [
                f"{'all levels' if k == 'all' else 'level ' + k} ({patching['n_pairs'][k]})"
                for k in keys
            ],  # fmt: skip
            "rows": rows,
        }
    ]


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


def generation_figure(result: dict) -> list[dict]:
    """Cut0 accuracy per layer x probe column, a LEACE and a random panel per target."""
    erasure = result["erasure"]
    if not erasure or not erasure.get("generation_clean"):
        return []
    panels = []
    for target in dict.fromkeys(c["target"] for c in erasure["cells"]):
        cells = [c for c in erasure["cells"] if c["target"] == target and c["generation"]]
        columns = list(dict.fromkeys(_column_name(c["column"]) for c in cells))
        layers = sorted({c["layer"] for c in cells})
        at = {(c["layer"], _column_name(c["column"])): c["generation"] for c in cells}
        for key, name in (("leace", "LEACE"), ("random", "random")):
            values = [
                [((at[lay, col][key] or {}).get("accuracy") or {}).get("mean") for col in columns]
                for lay in layers
            ]
            panels.append(
                _heat(f"{target}, {name}", values, columns, [str(x) for x in layers], "probe",
                      vmin=0, vmax=1, annotate="percent")
            )  # fmt: skip
    clean = erasure["generation_clean"]
    return [
        {
            "name": "erasure_generation",
            "kind": "heatmaps",
            "title": f"cut0 generation accuracy under erasure (unmodified: {clean['mean']:.0%})",
            "caption": "share of cut0 generations in the language with a layer's probe "
            "information erased (LEACE) or a random subspace of equal rank, at every generated "
            "position",
            "panels": panels,
        }
    ]


def head_patching_figure(patching: dict | None) -> list[dict]:
    """Share recovered per layer x head, a panel per level (and pooled)."""
    if not patching or not patching.get("head_layers"):
        return []
    layers = [str(_layer(n)) for n in patching["head_layers"]]
    panels = []
    for key in ["all", *map(str, patching["levels"])]:
        values = [[c["mean"] for c in row] for row in patching["heads"][key]]
        heads = [str(h) for h in range(len(values[0]))]
        what = "all levels" if key == "all" else f"level {key}"
        title = f"{what} ({patching['n_pairs'][key]})"
        panels.append(_heat(title, values, heads, layers, "head", vmin=0, vmax=1,
                            annotate="percent"))  # fmt: skip
    return [
        {
            "name": "patching_heads",
            "kind": "heatmaps",
            "title": "activation patching of one head's output at the NT end: share recovered (%)",
            "caption": "share of the way to the source string's prediction after an NT recovered "
            "by patching one head's output (hook_z) at the NT's last token",
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
