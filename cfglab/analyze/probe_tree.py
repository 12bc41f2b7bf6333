"""The probe family: does each layer linearly encode the parse tree? (stage 6b, analysis family)

Targets (cfglab.analyze.targets.TARGETS; `probe.targets`, null = the grammar's defaults): for a
layered grammar the level-l NT ancestor of every token and whether it ends its level-l subtree
(the paper's probes, one per level below the root); for any other grammar the label of the
smallest constituent ending at each token, "a constituent of label A ends here" (one probe per
label) and the depth of each token.

Protocol: fresh training strings and fresh test strings from the sampler (streams
(probe.seed, "probe_train" / "probe_test")); the hidden states of every layer are collected once
(cfglab.analyze.states.HiddenStore) and probed one layer at a time (cfglab.analyze.probe.
fit_probe) through each window. Baselines in the same tables: the same probes on the run's
random-init twin, and the majority-class rate of the test labels. Above them, for the ancestor
target: the ceiling, the best accuracy any reader of the whole test string can reach
(cfglab.exact.posterior: max_a P(ancestor = a | x) by inside-outside; below 1 only where the
grammar is ambiguous, e.g. an implicit grammar's hidden terminals).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from cfglab import rundir
from cfglab.analyze.context import AnalysisContext
from cfglab.analyze.probe import (
    SCORED_AT,
    WINDOWS,
    fit_probe,
    majority_rate,
    per_string_counts,
    predict_probe,
    score_predictions,
)
from cfglab.analyze.states import HiddenStore, resid_names
from cfglab.analyze.targets import Target, build_targets, default_targets
from cfglab.config import ProbeConfig
from cfglab.grammar import Grammar
from cfglab.seeds import stream_seed

TITLE = (
    "Probes: is the parse tree linearly readable from each layer?"  # the report section's heading
)
DEFINITIONS: dict[str, str] = {
    "probe_accuracy": (
        "share of test tokens whose label a multi-head linear probe on one layer's residual "
        "stream (blocks.{layer}.hook_resid_post) predicts correctly; trained on probe.n_train "
        "fresh strings, scored on probe.n_test others; restricted windows (diagonal, "
        "tridiagonal) are trained and scored at the probed level's NT ends only. model: the "
        "trained model or its random-init twin (the run's own initialisation)."
    ),
    "probe_majority": "accuracy of always answering the training tokens' commonest label",
    "probe_ceiling": (
        "target ancestor, window all: the best accuracy any predictor reading the whole string "
        "can reach on the level-l ancestor of each token: the mean over the probe's test tokens "
        "of max_a P(ancestor_l(t) = a | x), the exact posterior of the parse trees of x "
        "(inside-outside, cfglab.exact.posterior). 1 where every test string has one parse at "
        "that level; for an implicit grammar the deepest level is the hidden terminals."
    ),
}


def _column_name(column: dict) -> str:
    if "level" in column:
        return f"L{column['level']}"
    return str(column.get("label", "all"))


def probe_layers(
    store: HiddenStore,
    names: Sequence[str],
    train_targets: list[Target],
    test_targets: list[Target],
    offsets: tuple[np.ndarray, np.ndarray],
    *,
    settings: ProbeConfig,
    window: str = "all",
    seed: int = 0,
    max_len: int | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Probe the layers `names` of a HiddenStore (splits "train" and "test") for every target
    through `window`; offsets = (train, test) string offsets. Returns {"layers", "keys":
    [(target, column)], "accuracy" (layers, G), "balanced_accuracy" (layers, G), "majority"
    (G,), "per_string": the last layer's correct and scored tokens per test string, (G, S)
    each}. Restricted windows probe the targets that have NT ends only, scored there."""
    at_ends = SCORED_AT[window] == "ends"
    pairs = [
        (tr, te)
        for tr, te in zip(train_targets, test_targets, strict=True)
        if not at_ends or tr.at_ends is not None
    ]
    keys = [(tr.target, tr.column) for tr, _ in pairs]
    y_train = np.stack([tr.y for tr, _ in pairs])
    y_test = np.stack([te.y for _, te in pairs])
    n_classes = [tr.n_classes for tr, _ in pairs]
    w_train = np.stack([tr.at_ends for tr, _ in pairs]) if at_ends else None
    w_test = np.stack([te.at_ends for _, te in pairs]) if at_ends else None
    acc, bal = [], []
    for name in names:
        t0 = time.perf_counter()
        probe = fit_probe(
            store.load("train", name),
            offsets[0],
            y_train,
            n_classes,
            settings=settings,
            window=window,
            where=w_train,
            max_len=max_len,
            seed=seed,
            device=device,
        )
        pred = predict_probe(probe, store.load("test", name), offsets[1])
        scores = score_predictions(pred, y_test, w_test)
        if name == names[-1]:
            per_string = per_string_counts(pred, y_test, offsets[1], w_test)
        acc.append(scores["accuracy"])
        bal.append(scores["balanced_accuracy"])
        if log:
            cells = " ".join(
                f"{t[:3]}{_column_name(c)}={a:.3f}" for (t, c), a in zip(keys, acc[-1], strict=True)
            )
            log(f"{name}: {cells} ({time.perf_counter() - t0:.1f} s)")
    return {
        "layers": list(names),
        "keys": keys,
        "accuracy": np.array(acc),
        "balanced_accuracy": np.array(bal),
        "majority": majority_rate(y_train, y_test, w_train, w_test),
        "per_string": per_string,  # the last layer's, per test string (per_string_counts)
    }


def probe_model(
    model: nn.Module,
    grammar: Grammar,
    train,
    test,
    *,
    settings: ProbeConfig,
    targets: Sequence[str],
    windows: Sequence[str] = ("all",),
    seed: int = 0,
    batch_size: int = 16,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Probe every layer of `model` for `targets` through each window: the hidden states of the
    labelled SampleBatches `train` and `test` are collected once, then `probe_layers` per
    window (probe seed: the stream (seed, "probe_fit", window index)). {window: result}."""
    from cfglab.data.vocab import Vocab

    vocab = Vocab.from_grammar(grammar)
    names = resid_names(model.config.n_layer)
    if settings.layers == "last":  # e.g. the dynamics stage: emergence reads the last layer
        names = names[-1:]
    train_targets = build_targets(grammar, train, list(targets))
    test_targets = build_targets(grammar, test, list(targets))
    out = {}
    with rundir.scratch_folder("cfglab-probe-") as tmp:
        store = HiddenStore(tmp)
        for split, batch in (("train", train), ("test", test)):
            store.collect(
                model,
                split,
                batch.strings(),
                names,
                eos=vocab.eos,
                pad=vocab.pad,
                batch_size=batch_size,
            )
        for window in windows:
            if log:
                log(f"window {window}, {SCORED_AT[window]} positions")
            out[window] = probe_layers(
                store,
                names,
                train_targets,
                test_targets,
                (train.offsets, test.offsets),
                settings=settings,
                window=window,
                seed=stream_seed(seed, "probe_fit", list(WINDOWS).index(window)),
                max_len=model.config.block_size,
                device=str(next(model.parameters()).device),
                log=log,
            )
    return out


def probe_tables(result: dict, baseline: dict | None, window: str) -> list[dict]:
    """Regroup probe_layers' columns into one table per target: rows layers, columns the
    target's probes (levels, labels); the random-init twin's accuracies beside the model's."""
    tables = []
    for target in dict.fromkeys(t for t, _ in result["keys"]):
        cols = [i for i, (t, _) in enumerate(result["keys"]) if t == target]
        table = {
            "target": target,
            "window": window,
            "where": SCORED_AT[window],
            "columns": [result["keys"][i][1] for i in cols],
            "majority": result["majority"][cols].tolist(),
        }
        for metric in ("accuracy", "balanced_accuracy"):
            table[metric] = {"model": result[metric][:, cols].tolist()}
            if baseline is not None:
                table[metric]["random_init"] = baseline[metric][:, cols].tolist()
        # the last layer per test string: the dynamics stage resamples strings with it
        table["last_layer_per_string"] = {
            "tokens": result["per_string"]["tokens"][cols].tolist(),
            "correct": {"model": result["per_string"]["correct"][cols].tolist()},
        }
        if baseline is not None:
            twin = baseline["per_string"]["correct"][cols].tolist()
            table["last_layer_per_string"]["correct"]["random_init"] = twin
        tables.append(table)
    return tables


# ---- the family protocol ---------------------------------------------------------------------
def supports(ctx: AnalysisContext) -> str | None:
    """Every grammar has probe targets; every model family exposes hook_resid_post."""
    return None


def measure(ctx: AnalysisContext) -> dict:
    """Probe tables of the trained model (and its random-init twin) per cfg.probe."""
    p = ctx.cfg.probe
    targets = list(p.targets) if p.targets is not None else default_targets(ctx.grammar)
    train = ctx.labelled("probe_train", p.n_train, p.seed)
    test = ctx.labelled("probe_test", p.n_test, p.seed)

    def run(model: nn.Module, label: str) -> dict:
        ctx.log(f"probing {label}")
        return probe_model(
            model,
            ctx.grammar,
            train,
            test,
            settings=p,
            targets=targets,
            windows=p.windows,
            seed=p.seed,
            log=ctx.log,
        )

    trained = run(ctx.model, "model")
    base = None
    if p.baseline:
        base = ctx.baseline("probe", dataclasses.asdict(p), lambda t: run(t, "random_init"))
    tables = []
    for window in p.windows:
        tables += probe_tables(trained[window], base[window] if base else None, window)
    return {
        "targets": targets,
        "n_train": p.n_train,
        "n_test": p.n_test,
        "n_test_tokens": int(test.offsets[-1]),
        "layers": trained[p.windows[0]]["layers"],
        "tables": tables,
        "ceiling": ancestor_ceiling(ctx, test) if "ancestor" in targets else None,
    }


def ancestor_ceiling(ctx: AnalysisContext, test) -> dict:
    """cfglab.exact.posterior.ancestor_ceiling on the probe's test strings, once per memo (it
    does not depend on the model): {"target", "window", "levels", "ceiling", "n_tokens",
    "reason"}; an exact-stage refusal (a grammar too large for its bounds) leaves "ceiling"
    None and says why."""
    from cfglab.errors import ExactError
    from cfglab.exact.posterior import ancestor_ceiling as exact_ceiling

    p = ctx.cfg.probe
    key = f"probe_ceiling:{p.n_test}:{p.seed}"
    if key not in ctx.memo:
        out = {"target": "ancestor", "window": "all", "levels": [], "ceiling": None}
        try:
            out.update(exact_ceiling(ctx.grammar, test.strings()), reason=None)
        except ExactError as exc:
            out.update(n_tokens=int(test.offsets[-1]), reason=str(exc))
        ctx.memo[key] = out
    return ctx.memo[key]


def layer_index(name: str) -> int:
    """blocks.{i}.hook_resid_post -> i."""
    return int(name.split(".")[1])


def summary_rows(result: dict) -> list[dict]:
    """probe_accuracy per (target, window, column, layer, model) and probe_majority."""
    rows = []
    layers = [layer_index(name) for name in result["layers"]]
    for t in result["tables"]:
        at = {"target": t["target"], "window": t["window"]}
        for model, table in t["accuracy"].items():
            for layer, row in zip(layers, table, strict=True):
                for column, value in zip(t["columns"], row, strict=True):
                    rows.append(
                        {
                            "metric": "probe_accuracy",
                            **at,
                            **column,
                            "layer": layer,
                            "weights": "trained" if model == "model" else model,
                            "value": value,
                            "n": result["n_test"],
                        }
                    )
        for column, value in zip(t["columns"], t["majority"], strict=True):
            rows.append({"metric": "probe_majority", **at, **column, "value": value, "n": 0})
    ceiling = result.get("ceiling") or {}
    for level, value in zip(ceiling.get("levels", []), ceiling.get("ceiling") or [], strict=True):
        rows.append(
            {
                "metric": "probe_ceiling",
                "target": ceiling["target"],
                "window": ceiling["window"],
                "level": level,
                "value": value,
                "n": result["n_test"],
            }
        )
    return rows


def _ceiling_row(result: dict, table: dict) -> list[list[str]]:
    """The "ceiling" row of the ancestor table of window all (percent per level), if any."""
    ceiling = result.get("ceiling") or {}
    if (table["target"], table["window"]) != (ceiling.get("target"), ceiling.get("window")):
        return []
    if ceiling.get("ceiling") is None:
        return []
    by_level = dict(zip(ceiling["levels"], ceiling["ceiling"], strict=True))
    return [["ceiling", *(f"{100 * by_level[c['level']]:.1f}" for c in table["columns"])]]


def tables(result: dict) -> list[dict]:
    """One table per probe table: rows layers, columns the target's probes, model / twin (%)."""
    out = []
    layers = [layer_index(name) for name in result["layers"]]
    for t in result["tables"]:
        rand = t["accuracy"].get("random_init")
        body = [
            [str(layers[i])]
            + [
                f"{100 * v:.1f}" + (f" / {100 * rand[i][j]:.1f}" if rand else "")
                for j, v in enumerate(row)
            ]
            for i, row in enumerate(t["accuracy"]["model"])
        ]
        body.append(["majority", *(f"{100 * v:.1f}" for v in t["majority"])])
        body += _ceiling_row(result, t)
        out.append(
            {
                "title": f"{t['target']} probe (window {t['window']}, {t['where']} positions; "
                "accuracy %, model / random-init)",
                "header": ["layer", *(_column_name(c) for c in t["columns"])],
                "rows": body,
            }
        )
    return out


def figures(result: dict) -> list[dict]:
    """Per probe table a heatmap (layer x probe): trained | random init | majority class."""
    out = []
    for t in result["tables"]:
        names = [_column_name(c) for c in t["columns"]]
        layers = [str(layer_index(n)) for n in result["layers"]]
        panels = [
            {
                "title": title,
                "values": t["accuracy"][key],
                "xlabels": names,
                "ylabels": layers,
                "xlabel": "probe",
                "ylabel": "layer",
                "vmin": 0,
                "vmax": 1,
                "annotate": "percent",
                "width": 3,
            }
            for key, title in (("model", "model"), ("random_init", "random init"))
            if key in t["accuracy"]
        ]
        panels.append(
            {
                "title": "majority",
                "values": [[v] for v in t["majority"]],
                "xlabels": ["maj."],
                "ylabels": names,
                "vmin": 0,
                "vmax": 1,
                "annotate": "percent",
                "width": 1.2,
            }
        )
        out.append(
            {
                "name": f"probe_{t['target']}"
                + ("" if t["window"] == "all" else f"_{t['window']}"),
                "kind": "heatmaps",
                "title": f"{t['target']} probe accuracy (%), window {t['window']}, "
                f"{t['where']} positions",
                "caption": f"{t['target']} probe accuracy per layer and probe, beside the "
                "random-init twin and the majority class",
                "panels": panels,
            }
        )
    return out


# cross-run views for `cfglab compare` (data: compare draws them without knowing this family)
COMPARE = [
    {
        "name": "probe",
        "kind": "lines",
        "title": "last-layer probe accuracy (dotted: random init)",
        "metric": "probe_accuracy",
        "where": {"layer": "last"},
        "x": ["level", "label"],
        "panels": ["target", "window"],
        "styles": {"qualifier": "weights", "values": {"trained": "-", "random_init": ":"}},
        "ylabel": "probe accuracy",
        "caption": "last-layer probe accuracy per probe (95% CI across seeds)",
    },
]
