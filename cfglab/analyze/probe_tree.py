"""Probing the parse tree: NT-ancestor and NT-boundary probes at every level and layer (6b).

Targets, one probe per level l (level 0 = the root is skipped: it is constant):
- "ancestor": the level-l NT ancestor of every token (a class among grammar.levels[l]);
- "boundary": whether the token is the last token of its level-l subtree (binary).

Protocol: fresh training strings and fresh test strings from the sampler (different streams);
the hidden states of every layer are collected once (cfglab.analyze.states.HiddenStore) and
probed one layer at a time (cfglab.analyze.probe.fit_probe) through each window. Baselines in
the same tables: the same probes on a randomly initialised model of the same shape (the caller
probes it too and passes it to `probe_tables`), and the majority-class rate of the test labels.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from cfglab.analyze.probe import (
    SCORED_AT,
    WINDOWS,
    fit_probe,
    majority_rate,
    score_probe,
)
from cfglab.analyze.states import HiddenStore, resid_names
from cfglab.config import ProbeConfig
from cfglab.errors import ConfigError, GrammarError
from cfglab.grammar import Grammar
from cfglab.seeds import stream_seed

TARGETS = ("ancestor", "boundary")


def probe_targets(
    grammar, batch, levels: Sequence[int], targets: Sequence[str]
) -> tuple[list[tuple[str, int]], np.ndarray, list[int]]:
    """[(target, level)], labels (G, N) int64, n_classes (G,) from a labelled SampleBatch."""
    keys, labels, n_classes = [], [], []
    for target in targets:
        for lev in levels:
            keys.append((target, lev))
            if target == "ancestor":
                labels.append(batch.ancestors[lev].astype(np.int64))
                n_classes.append(len(grammar.levels[lev]))
            else:
                labels.append(batch.is_boundary[lev].astype(np.int64))
                n_classes.append(2)
    return keys, np.stack(labels), n_classes


def probe_layers(
    store: HiddenStore,
    names: Sequence[str],
    grammar: Grammar,
    train,
    test,
    *,
    settings: ProbeConfig,
    window: str = "all",
    seed: int = 0,
    max_len: int | None = None,
    levels: Sequence[int] | None = None,
    targets: Sequence[str] = TARGETS,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Probe the layers `names` of a HiddenStore (splits "train" and "test" collected from the
    labelled SampleBatches `train`, `test`) for every (target, level) through `window`.
    Returns {"layers", "keys": [(target, level)], "accuracy" (layers, G),
    "balanced_accuracy" (layers, G), "majority" (G,)}."""
    if grammar.levels is None or train.ancestors is None:
        raise GrammarError(
            f"probing needs a layered grammar (like the cfg3 family) and labelled "
            f"samples; {grammar.name or 'this grammar'} has no levels"
        )
    if window not in WINDOWS:
        raise ConfigError(f"unknown probe window {window!r}; choose from {', '.join(WINDOWS)}")
    n_levels = train.ancestors.shape[0]
    levels = list(range(1, n_levels)) if levels is None else list(levels)
    at_ends = SCORED_AT[window] == "ends"
    if at_ends:
        targets = [t for t in targets if t != "boundary"]  # a boundary probe at ends is trivial
    for t in targets:
        if t not in TARGETS:
            raise ConfigError(f"unknown probe target {t!r}; choose from {', '.join(TARGETS)}")
    keys, y_train, n_classes = probe_targets(grammar, train, levels, targets)
    _, y_test, _ = probe_targets(grammar, test, levels, targets)
    w_train = w_test = None
    if at_ends:  # restricted probes: the level's NT ends only
        w_train = np.stack([train.is_boundary[lev] for _, lev in keys])
        w_test = np.stack([test.is_boundary[lev] for _, lev in keys])
    acc, bal = [], []
    for name in names:
        t0 = time.perf_counter()
        probe = fit_probe(
            store.load("train", name),
            train.offsets,
            y_train,
            n_classes,
            settings=settings,
            window=window,
            where=w_train,
            max_len=max_len,
            seed=seed,
            device=device,
        )
        scores = score_probe(probe, store.load("test", name), test.offsets, y_test, where=w_test)
        acc.append(scores["accuracy"])
        bal.append(scores["balanced_accuracy"])
        if log:
            cells = " ".join(
                f"{t[0][:3]}{t[1]}={a:.3f}" for t, a in zip(keys, acc[-1], strict=True)
            )
            log(f"{name}: {cells} ({time.perf_counter() - t0:.1f} s)")
    return {
        "layers": list(names),
        "keys": keys,
        "accuracy": np.array(acc),
        "balanced_accuracy": np.array(bal),
        "majority": majority_rate(y_train, y_test, w_train, w_test),
    }


def probe_model(
    model: nn.Module,
    grammar: Grammar,
    train,
    test,
    *,
    settings: ProbeConfig,
    windows: Sequence[str] = ("all",),
    seed: int = 0,
    levels: Sequence[int] | None = None,
    targets: Sequence[str] = TARGETS,
    batch_size: int = 16,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Probe every layer of `model` through each window: the hidden states of `train` and
    `test` are collected once, then `probe_layers` per window (probe seed: the stream
    (seed, "probe_fit", window index)). Returns {window: probe_layers' result}."""
    from cfglab.data.vocab import Vocab

    for window in windows:
        if window not in WINDOWS:
            raise ConfigError(f"unknown probe window {window!r}; choose from {', '.join(WINDOWS)}")
    vocab = Vocab.from_grammar(grammar)
    names = resid_names(model.config.n_layer)
    out = {}
    with tempfile.TemporaryDirectory(prefix="cfglab-probe-") as tmp:
        store = HiddenStore(Path(tmp))
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
                log(f"window {window}, {SCORED_AT.get(window, '?')} positions")
            out[window] = probe_layers(
                store,
                names,
                grammar,
                train,
                test,
                settings=settings,
                window=window,
                seed=stream_seed(seed, "probe_fit", list(WINDOWS).index(window)),
                max_len=model.config.block_size,
                levels=levels,
                targets=targets,
                device=str(next(model.parameters()).device),
                log=log,
            )
    return out


def probe_tables(result: dict, baseline: dict | None, window: str) -> list[dict]:
    """Regroup probe_layers' columns into one table per target: rows layers, columns levels;
    the random-init twin's accuracies beside the model's when `baseline` is given."""
    tables = []
    for target in dict.fromkeys(t for t, _ in result["keys"]):
        cols = [i for i, (t, _) in enumerate(result["keys"]) if t == target]
        table = {
            "target": target,
            "window": window,
            "where": SCORED_AT[window],
            "levels": [result["keys"][i][1] for i in cols],
            "majority": result["majority"][cols].tolist(),
        }
        for metric in ("accuracy", "balanced_accuracy"):
            table[metric] = {"model": result[metric][:, cols].tolist()}
            if baseline is not None:
                table[metric]["random_init"] = baseline[metric][:, cols].tolist()
        tables.append(table)
    return tables
