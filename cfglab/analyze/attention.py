"""The attention family: position-based and boundary-based attention (stage 6b, analysis family).

Read from `blocks.{l}.attn.hook_pattern` (B, H, T, T) on fresh labelled strings placed at
positions 1..n of the model's input (see probe.string_windows). A[a, b] is the weight from query
token a to key token b of the string (0-based token indices; the BOS, EOS and any other window
position are not pairs of the statistics, but their mass stays in the rows, as in the model).

- Position bias (SPEC.md "Attention" (6)): Abar[l, h, d] = mean of A over pairs at distance
  d = a - b (d >= 0 for a GPT; -T < d < T for an encoder).
- Residual B = A - Abar[a - b]; its means over sets S of pairs (Results 7-9) are computed in one
  pass: mean_S B = (sum_S A - sum_d count_S(d) Abar[d]) / |S|.
  (7) `end_offset[l, h, level, delta]`: keys b with b + delta a level NT end, delta = -2..2;
  (8) `end_to_end[l, h, level]`: query and key both level NT ends;
  (9) `adjacent_by_rank[l, h, level, r]`: query and key with b#(a) = b#(b) = level, bucketed by
      r = p_level(a) - p_level(b), where p is the subtree ordinal and b#(i) the shallowest level
      (closest to the root, root excluded) whose subtree ends at i ([repro] "smallest level").
- Boundary-based attention: a query a at a level-l NT end, in subtree p, has as *adjacent ends*
  the end of subtree p - 1 (and of p + 1 for an encoder). `head_scores["boundary_l{l}"][l, h]`
  is the attention mass on them, averaged over such queries; `chance["boundary_l{l}"]` is what a
  uniform pattern over the query's keys (a + 2 for a GPT: BOS and tokens 0..a; the window for an
  encoder) would put there. Like TransformerLens' head detector ("mul" measure): score = mass on
  the detection pattern / mass of those rows, rows summing to 1. Also scored the same way:
  "previous_token" (b = a - 1) and "current_token" (b = a) on every query.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from cfglab.analyze.attention_stats import attention_model
from cfglab.analyze.context import AnalysisContext
from cfglab.grammar.cfg import Grammar

# ---- the family protocol ---------------------------------------------------------------------
TITLE = "Attention: position-based and boundary-based heads"  # the report section's heading
DEFINITIONS: dict[str, str] = {
    "best_head_score": (
        "the highest score over layers and heads of a detection pattern: the attention mass a "
        "head puts on the pattern's keys (previous_token: the token before the query; "
        "current_token: the query itself; boundary_l{l}: the adjacent level-l NT ends of a query "
        "that is itself a level-l NT end), averaged over the pattern's queries (TransformerLens' "
        "head detector, 'mul'); levels are the tree's depths (a layered grammar's levels)"
    ),
    "head_score_chance": (
        "what a uniform pattern over each query's keys would score on the same pattern"
    ),
    "attention_by_distance": (
        "(Result 6) position-based attention: the mean attention weight from a query to the "
        "key `distance` tokens before it (0 = itself), averaged over the layer's heads and over "
        "query positions (Abar of the attention statistics); distances 0..16"
    ),
    "end_to_end_attention": (
        "(Result 8) the largest, over layers and heads, mean residual attention B = A - "
        "Abar[query - key] over the pairs whose query and key are both level-l NT ends: "
        "attention from an NT end to earlier NT ends beyond what distance alone explains; 0 is "
        "what position alone gives, and the random-init twin's value is the chance level"
    ),
    "end_offset_attention": (
        "(Result 7) for the head with the largest end_to_end_attention at level l: its mean "
        "residual attention B on keys `delta` tokens from a level-l NT end (delta = -2..2); "
        "the paper finds a peak at delta = 0"
    ),
    "rank_attention": (
        "(Result 9) for that head: its mean residual attention B between tokens whose "
        "shallowest NT end is level l, by the subtree distance r = p_l(query) - p_l(key) "
        "(0..8, 8 pooling larger r); the paper finds it largest at r in {0, 1}"
    ),
}


def supports(ctx: AnalysisContext) -> str | None:
    from cfglab.model.hooks import hook_names

    if not any(n.endswith("attn.hook_pattern") for n in hook_names(ctx.model)):
        return "the model has no attention (no blocks.{i}.attn.hook_pattern)"
    if not isinstance(ctx.grammar, Grammar):
        return (
            "its boundary statistics need a grammar's parse trees, and a language beyond "
            "context-free has none (a score for attending to the dependent token is not built yet)"
        )
    return None


def measure(ctx: AnalysisContext) -> dict:
    """Attention statistics of the trained model and its random-init twin per cfg.attention."""
    import dataclasses

    a = ctx.cfg.attention
    batch = ctx.labelled("attention_strings", a.n_strings, a.seed)

    def run(model: nn.Module, label: str) -> dict:
        ctx.log(f"attention statistics of {label} on {a.n_strings} strings")
        return attention_model(
            model, ctx.grammar, batch, n_examples=a.n_examples, example_len=a.example_len
        )

    out = {"n_strings": a.n_strings, "model": run(ctx.model, "model")}
    base = None
    if a.baseline:
        base = ctx.baseline("attention", dataclasses.asdict(a), lambda t: run(t, "random_init"))
    if base is not None:
        out["random_init"] = base
    return out


def _best(scores: list) -> tuple[float, int, int]:
    s = np.array(scores, dtype=float)
    if np.isnan(s).all():
        return float("nan"), -1, -1
    i = np.unravel_index(np.nanargmax(s), s.shape)
    return float(s[i]), int(i[0]), int(i[1])


def summary_rows(result: dict) -> list[dict]:
    """best_head_score per pattern and model (with its layer and head), head_score_chance."""
    rows = []
    n = result["n_strings"]
    for key in ("model", "random_init"):
        res = result.get(key)
        for pattern, scores in (res or {}).get("head_scores", {}).items():
            value, layer, head = _best(scores)
            model = "trained" if key == "model" else key
            rows.append(
                {
                    "metric": "best_head_score",
                    "pattern": pattern,
                    "weights": model,
                    "value": value,
                    "n": n,
                }
            )
            if key == "model":
                rows.append(
                    {
                        "metric": "head_score_chance",
                        "pattern": pattern,
                        "value": res["chance"][pattern],
                        "n": n,
                    }
                )
    return rows + mechanism_rows(result)


def _levels(res: dict, key: str) -> np.ndarray:
    """One of the residual statistics as an array (n_layer, H, n_levels, ...) of floats."""
    return np.array(res[key], dtype=float)


def _best_heads(res: dict) -> list[tuple[int, int, int]]:
    """Per level >= 1: (level, layer, head) of the head with the largest end_to_end residual."""
    e2e = _levels(res, "end_to_end")  # (n_layer, H, n_levels)
    out = []
    for lev in range(1, e2e.shape[2]):
        s = e2e[:, :, lev]
        if np.isnan(s).all():
            continue
        layer, head = np.unravel_index(np.nanargmax(s), s.shape)
        out.append((lev, int(layer), int(head)))
    return out


MAX_DISTANCE_ROWS = 16  # attention_by_distance rows: distances 0..16


def mechanism_rows(result: dict) -> list[dict]:
    """Results 6-9 as rows: per layer the mean attention by distance (heads averaged); per
    level and model, the best head's end-to-end residual, its profile over the key's offset
    from an NT end, and over the subtree distance r."""
    rows = []
    n = result["n_strings"]
    for key in ("model", "random_init"):
        res = result.get(key)
        if res is None or "end_to_end" not in res:
            continue
        model = "trained" if key == "model" else key
        mean = np.nanmean(np.array(res["mean_by_distance"], dtype=float), axis=1)  # (L, D)
        for layer in range(mean.shape[0]):
            for k, d in enumerate(res["distances"]):
                if 0 <= d <= MAX_DISTANCE_ROWS and np.isfinite(mean[layer, k]):
                    rows.append(
                        {
                            "metric": "attention_by_distance",
                            "layer": layer,
                            "distance": d,
                            "weights": model,
                            "value": float(mean[layer, k]),
                            "n": n,
                        }
                    )
        offset, rank = _levels(res, "end_offset"), _levels(res, "adjacent_by_rank")
        ranks = res["ranks"]
        for lev, layer, head in _best_heads(res):
            value = float(_levels(res, "end_to_end")[layer, head, lev])
            at = {"level": lev, "weights": model, "n": n}
            rows.append({"metric": "end_to_end_attention", **at, "value": value})
            for k, delta in enumerate(res["deltas"]):
                v = float(offset[layer, head, lev, k])
                rows.append(
                    {
                        "metric": "end_offset_attention",
                        "delta": delta,
                        **at,
                        "value": v if np.isfinite(v) else None,
                    }
                )
            for k, r in enumerate(ranks):
                v = float(rank[layer, head, lev, k])
                if r >= 0 and np.isfinite(v):
                    rows.append({"metric": "rank_attention", "rank": r, **at, "value": v})
    return rows


def _mechanism_figures(result: dict) -> list[dict]:
    """Result 8 per layer and head, and the best heads' profiles of Results 7 and 9."""
    res = result["model"]
    e2e = _levels(res, "end_to_end")
    # one symmetric colour scale around 0 (no residual) for the model and its twin
    both = [
        _levels(result[k], "end_to_end")[:, :, 1:] for k in ("model", "random_init") if k in result
    ]
    top = max((float(np.nanmax(np.abs(b))) for b in both if np.isfinite(b).any()), default=1.0)
    panels = []
    for row, key in enumerate(("model", "random_init")):
        if key not in result:
            continue
        data = _levels(result[key], "end_to_end")
        for lev in range(1, e2e.shape[2]):
            s = data[:, :, lev]
            panels.append(
                {
                    "title": f"{key.replace('_', ' ')}: L{lev}",
                    "values": np.where(np.isnan(s), None, np.round(s, 4)).tolist(),
                    "xlabels": [str(h) for h in range(s.shape[1])],
                    "ylabels": [str(i) for i in range(s.shape[0])],
                    "xlabel": "head",
                    "ylabel": "layer",
                    "cmap": "coolwarm",
                    "annotate": "value",
                    "row": row,
                    "vmin": -top,
                    "vmax": top,
                }
            )
    out = [
        {
            "name": "attention_end_to_end",
            "kind": "heatmaps",
            "panels": panels,
            "title": "NT end to NT end: mean residual attention B per layer and head (Result 8)",
            "caption": "attention between NT ends beyond the position bias, trained and twin",
        }
    ]
    rows = mechanism_rows(result)
    for metric, x, title in (
        ("end_offset_attention", "delta", "keys delta tokens from an NT end (Result 7)"),
        ("rank_attention", "rank", "subtree distance r between same-level ends (Result 9)"),
    ):
        panels = []
        for lev in sorted({r["level"] for r in rows if r["metric"] == metric}):
            series = []
            for model, style in (("trained", "-"), ("random_init", "--")):
                sel = [
                    r
                    for r in rows
                    if r["metric"] == metric and r["level"] == lev and r["weights"] == model
                ]
                if sel:
                    series.append(
                        {
                            "label": model,
                            "x": [r[x] for r in sel],
                            "y": [r["value"] for r in sel],
                            "style": style,
                            "marker": "o",
                        }
                    )
            panels.append(
                {
                    "title": f"L{lev}: best end-to-end head",
                    "xlabel": x,
                    "ylabel": "mean residual attention B",
                    "series": series,
                    "hlines": [{"y": 0.0, "style": ":"}],
                }
            )
        out.append(
            {
                "name": f"attention_{metric}",
                "kind": "lines",
                "panels": panels,
                "title": title,
                "caption": title,
            }
        )
    return out


def tables(result: dict) -> list[dict]:
    """Per pattern: the best head (score vs chance) of the model and of random init."""
    body = []
    for name, scores in result["model"]["head_scores"].items():
        value, layer, head = _best(scores)
        rand = "-"
        if "random_init" in result:
            rand = f"{100 * _best(result['random_init']['head_scores'][name])[0]:.1f}"
        chance = result["model"]["chance"][name]
        body.append([name, f"{layer}.{head}", f"{100 * value:.1f}", rand, f"{100 * chance:.1f}"])
    return [
        {
            "title": f"Attention statistics on {result['n_strings']} fresh strings",
            "header": [
                "statistic",
                "best head (layer.head)",
                "score %",
                "random-init best %",
                "chance %",
            ],
            "rows": body,
        }
    ]


def _distance_figure(res: dict, max_distance: int = 64) -> dict:
    d = np.array(res["distances"])
    keep = np.abs(d) <= max_distance
    mean = np.array(res["mean_by_distance"], dtype=float)  # (n_layer, H, D)
    panels = []
    for layer in range(mean.shape[0]):
        series = [
            {
                "label": f"h{h}",
                "x": d[keep].tolist(),
                "y": np.clip(mean[layer, h, keep], 1e-5, None).tolist(),
            }
            for h in range(mean.shape[1])
        ]
        panels.append(
            {
                "title": f"layer {layer}",
                "xlabel": "distance (query - key)",
                "ylabel": "mean attention",
                "yscale": "log",
                "series": series,
            }
        )
    return {
        "name": "attention_distance",
        "kind": "lines",
        "title": "position bias (mean attention by distance)",
        "panels": panels,
        "caption": "mean attention by distance (position bias), one curve per head",
    }


def _boundary_figure(result: dict) -> dict:
    levels = sorted(
        int(k[len("boundary_l") :])
        for k in result["model"]["head_scores"]
        if k.startswith("boundary_l")
    )
    panels = []
    for key in ("model", "random_init"):
        if key not in result:
            continue
        for lev in levels:
            s = np.array(result[key]["head_scores"][f"boundary_l{lev}"], dtype=float)
            chance = result[key]["chance"][f"boundary_l{lev}"]
            panels.append(
                {
                    "title": f"{key.replace('_', ' ')}: L{lev} (chance {100 * chance:.1f})",
                    "values": np.where(np.isnan(s), None, s).tolist(),
                    "xlabels": [str(h) for h in range(s.shape[1])],
                    "ylabels": [str(i) for i in range(len(s))],
                    "xlabel": "head",
                    "ylabel": "layer",
                    "vmin": 0,
                    "vmax": 1,
                    "annotate": "percent",
                    "cmap": "magma",
                    "row": 0 if key == "model" else 1,
                }
            )
    return {
        "name": "attention_boundary",
        "kind": "heatmaps",
        "title": "boundary attention (%): mass from an NT end on the adjacent NT ends",
        "panels": panels,
        "caption": "boundary attention per layer and head",
    }


def _examples_figure(result: dict) -> dict | None:
    ex = result["model"].get("example")
    if not ex or not ex["maps"]:
        return None
    bnd = np.array(ex["is_boundary"], dtype=bool)  # (L, m)
    lv = [lev for lev in range(1, len(bnd)) if bnd[lev].any()]
    shown = [lv[(len(lv) - 1) // 2], lv[-1]] if len(lv) > 1 else lv  # a shallow and the deepest
    marks = [
        {"at": np.flatnonzero(bnd[lev]).tolist(), "style": style}
        for style, lev in zip(("-", ":"), shown, strict=False)
    ]
    panels = [
        {
            "title": f"layer {m['layer']} head {m['head']} (boundary "
            f"{100 * m['boundary_score']:.0f}%)",
            "values": m["pattern"],
            "xlabel": "key token",
            "ylabel": "query token",
            "cmap": "Blues",
            "marks": marks,
        }
        for m in ex["maps"]
    ]
    return {
        "name": "attention_examples",
        "kind": "heatmaps",
        "title": f"attention maps, NT ends of levels {shown} (solid / dotted)",
        "panels": panels,
        "caption": "example attention maps with NT ends",
    }


def figures(result: dict) -> list[dict]:
    out = [_distance_figure(result["model"]), _boundary_figure(result)]
    example = _examples_figure(result)
    return out + ([example] if example else []) + _mechanism_figures(result)


COMPARE = [
    {
        "name": "attention_heads",
        "kind": "lines",
        "title": "best head score per pattern (dotted: random init)",
        "metric": "best_head_score",
        "where": {},
        "x": ["pattern"],
        "panels": [],
        "styles": {"qualifier": "weights", "values": {"trained": "-", "random_init": ":"}},
        "ylabel": "best head's score",
        "caption": "the best head's score per detection pattern (95% CI across seeds)",
    },
    {
        "name": "attention_by_distance",
        "kind": "lines",
        "title": "position-based attention: mean weight by distance (dotted: random init)",
        "metric": "attention_by_distance",
        "where": {},
        "x": ["distance"],
        "panels": ["layer"],
        "styles": {"qualifier": "weights", "values": {"trained": "-", "random_init": ":"}},
        "ylabel": "mean attention",
        "caption": "Result 6 per layer, heads averaged (95% CI across seeds)",
    },
    {
        "name": "attention_end_to_end",
        "kind": "lines",
        "title": "NT end to NT end attention beyond position, best head (dotted: random init)",
        "metric": "end_to_end_attention",
        "where": {},
        "x": ["level"],
        "panels": [],
        "styles": {"qualifier": "weights", "values": {"trained": "-", "random_init": ":"}},
        "ylabel": "mean residual attention B",
        "caption": "Result 8 per level: the best head's end-to-end residual (95% CI across seeds)",
    },
    {
        "name": "attention_end_offset",
        "kind": "lines",
        "title": "residual attention on keys delta tokens from an NT end (dotted: random init)",
        "metric": "end_offset_attention",
        "where": {},
        "x": ["delta"],
        "panels": ["level"],
        "styles": {"qualifier": "weights", "values": {"trained": "-", "random_init": ":"}},
        "ylabel": "mean residual attention B",
        "caption": "Result 7 per level, the best end-to-end head (95% CI across seeds)",
    },
]
