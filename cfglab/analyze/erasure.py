"""Concept erasure: remove what a linear probe reads from one layer's residual stream and
measure what the model's predictions lose (the interventions family's first part).

The eraser is LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed
form"): for hidden states X (N, C) and one-hot labels Z (N, K),

    r(x) = x - W+ P W (x - mean),   W = (Cov X)^(-1/2) (on its support), W+ its pseudo-inverse,
                                     P = the orthogonal projector onto the columns of W Cov(X, Z).

After it, Cov(r(X), Z) = 0: every class has the same mean state, so no linear classifier reads
the labels better than a constant (on the fitting data), and among all such affine erasers it
moves the states least (in the whitened norm). Why LEACE and not "project out the probe's
weights": cfglab's probes are multi-head attention probes with their own position embedding, so
their weights are not a subspace of the residual stream; LEACE is closed form, needs no probe
training, removes *every* linear reader's information, and its rank is the information's own
(at most K - 1 for K classes: 1 for a boundary, 2 for three NTs of a level).

The control erases a random subspace of the same rank the same way: P is the projector onto r
random directions of the whitened space (Haar, the stream (seed, "intervene_random", target,
layer, draw)). Both erasers remove exactly r units of whitened variance, so the comparison is
of *which* directions go, not how much of the state.

Protocol (`erase_layers`): the fit strings' states of every layer (blocks.{i}.hook_resid_post)
are collected once; for each layer and each probe target (cfglab.analyze.targets: the level-l
ancestor and boundary of a layered grammar), the LEACE eraser and `draws` random ones of equal
rank are applied through a writable hook at every token position (not BOS) of other, fresh true
strings, and each next-token row's KL to the exact distribution is compared with the clean
model's (cfglab.analyze.kl_rows).

Generation under erasure (`generation_scorer`): the model samples cut0 strings (from BOS, at
temperature 1) with the eraser active, and the exact recognizer judges them, as the eval
accuracy family does; LEACE beside the first random draw, beside the clean model sampled under
the same seed. The eraser must act at every generated position: with a KV cache each forward
call feeds one new position, so `erasing` tells positions by their token (BOS or not), never by
their index within the call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cfglab import rundir
from cfglab.analyze.kl_rows import ScoredStrings, pooled, ratio, resample_weights, row_kls
from cfglab.analyze.states import HiddenStore, resid_names
from cfglab.analyze.targets import build_targets
from cfglab.data.vocab import BOS
from cfglab.grammar.cfg import Grammar
from cfglab.seeds import rng

RANK_TOL = 1e-6  # singular values (eigenvalues) below this share of the largest count as zero


@dataclass
class Whitening:
    """The states' mean and covariance eigenbasis: W = B diag(1/s) B^T, W+ = B diag(s) B^T."""

    mean: np.ndarray  # (C,)
    basis: np.ndarray  # (C, k) eigenvectors of the covariance with nonzero variance
    scale: np.ndarray  # (k,) their standard deviations

    @classmethod
    def fit(cls, x: np.ndarray) -> Whitening:
        """x (N, C) float64 states."""
        mean = x.mean(0)
        xc = x - mean
        evals, evecs = np.linalg.eigh(xc.T @ xc / len(x))  # (C,), (C, C)
        keep = evals > RANK_TOL * max(float(evals.max()), 1e-300)
        return cls(mean, evecs[:, keep], np.sqrt(evals[keep]))

    def whiten(self, v: np.ndarray) -> np.ndarray:
        """W v for v (C, m)."""
        return self.basis @ ((self.basis.T @ v) / self.scale[:, None])

    def unwhiten(self, v: np.ndarray) -> np.ndarray:
        """W+ v for v (C, m)."""
        return self.basis @ ((self.basis.T @ v) * self.scale[:, None])


@dataclass
class Eraser:
    """x -> x - ((x - mean) @ down) @ up.T, with down = W U and up = W+ U for an orthonormal
    (C, r) basis U of the erased whitened directions: r(x) = x - W+ U U^T W (x - mean)."""

    mean: np.ndarray  # (C,)
    down: np.ndarray  # (C, r)
    up: np.ndarray  # (C, r)

    @property
    def rank(self) -> int:
        return int(self.down.shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Erase states x (N, C)."""
        return x - ((x - self.mean) @ self.down) @ self.up.T

    def hook(self, is_bos: Callable[[], Tensor]) -> Callable[[Tensor, object], Tensor]:
        """A writable hook (cfglab.model.hooks) erasing every position whose token is not BOS;
        is_bos() gives the current forward call's (B, T) mask (see `erasing`)."""
        cache: dict = {}

        def fn(act: Tensor, hook) -> Tensor:  # act (B, T, C)
            if act.device not in cache:
                cache[act.device] = [
                    torch.as_tensor(a, dtype=act.dtype, device=act.device)
                    for a in (self.mean, self.down, self.up)
                ]
            mean, down, up = cache[act.device]
            erased = act - ((act - mean) @ down) @ up.T  # (B, T, C)
            return torch.where(is_bos()[..., None], act, erased)

        return fn


@contextmanager
def erasing(model: nn.Module, name: str, eraser: Eraser) -> Iterator[None]:
    """Within the block, every forward call of `model` erases hook `name` at every position
    whose input token is not BOS. The positions are told by the tokens, not by their index in
    the call: a full sequence keeps position 0 alone, and generation with a KV cache, which
    feeds one new position per call (index 0 of its chunk), has each of them erased, so a
    sampled string sees the eraser at every position but its BOS. The tokens (B, T) are read
    by a forward pre-hook on the model (its first positional argument)."""
    from cfglab.model.hooks import using_hooks

    seen: dict[str, Tensor] = {}

    def read_tokens(module: nn.Module, args: tuple) -> None:
        seen["is_bos"] = args[0] == BOS  # (B, T)

    handle = model.register_forward_pre_hook(read_tokens)
    try:
        with using_hooks(model, [(name, eraser.hook(lambda: seen["is_bos"]))]):
            yield
    finally:
        handle.remove()


# (model, n, seed) -> n cut0 generations (BOS + completion, EOS included when produced): the
# stages layer builds it from cfglab.evaluate (AnalysisContext.generate), which analyze may not
# import
GenerateFn = Callable[[nn.Module, int, int], list[np.ndarray]]
# (hook name, eraser), both None for the clean model -> {"accuracy", "drop"} (generation_scorer)
ScoreFn = Callable[[str | None, Eraser | None], dict]


def _eraser(w: Whitening, u: np.ndarray) -> Eraser:
    return Eraser(w.mean, w.whiten(u), w.unwhiten(u))


def fit_leace(w: Whitening, x: np.ndarray, labels: np.ndarray, n_classes: int) -> Eraser:
    """The LEACE eraser of labels (N,) int in 0..n_classes-1 from states x (N, C)."""
    z = np.eye(n_classes)[labels]  # (N, K) one-hot
    cross = (x - w.mean).T @ (z - z.mean(0)) / len(x)  # (C, K) Cov(X, Z)
    u, s, _ = np.linalg.svd(w.whiten(cross), full_matrices=False)  # (C, K), (K,)
    rank = int((s > RANK_TOL * max(float(s.max(initial=0.0)), 1e-300)).sum())
    return _eraser(w, u[:, :rank])


def random_eraser(w: Whitening, rank: int, gen: np.random.Generator) -> Eraser:
    """The control: `rank` uniformly random orthonormal directions of the whitened support."""
    q, _ = np.linalg.qr(gen.standard_normal((w.basis.shape[1], rank)))  # (k, rank)
    return _eraser(w, w.basis @ q)


def displacement(eraser: Eraser, x: np.ndarray) -> float:
    """Mean squared move of the states over their total variance: how much an eraser takes."""
    moved = ((x - eraser(x)) ** 2).sum(1).mean()
    return float(moved / ((x - x.mean(0)) ** 2).sum(1).mean())


def fit_states(model: nn.Module, grammar: Grammar, batch, names: list[str], folder) -> HiddenStore:
    """Every layer's states of the fit strings' tokens, collected once (spilled to disk)."""
    from cfglab.data.vocab import Vocab

    vocab = Vocab.from_grammar(grammar)
    store = HiddenStore(folder)
    store.collect(model, "fit", batch.strings(), names, eos=vocab.eos, pad=vocab.pad)
    return store


def erase_layers(
    model: nn.Module,
    grammar: Grammar,
    fit,
    scored: ScoredStrings,
    targets: list[str],
    *,
    draws: int,
    seed: int,
    weights: np.ndarray,
    log: Callable[[str], None],
    score_generation: ScoreFn | None = None,
) -> dict:
    """LEACE and random erasers per (layer, probe target) -> {"layers", "generation_clean",
    "cells": [{target, column, layer, rank, displacement, random_displacement, leace, random,
    excess, generation}]}: leace, random (mean over draws) and excess (leace - random) are
    `pooled` KL rises by row group; with `score_generation` (`generation_scorer`), generation
    holds {leace, random (the first draw)}, each {accuracy, drop} cells of cut0 generations, and
    generation_clean the clean model's accuracy cell (else both None)."""
    names = resid_names(model.config.n_layer)
    concepts = build_targets(grammar, fit, targets)
    cells = []
    clean = score_generation(None, None)["accuracy"] if score_generation else None
    if clean:
        log(f"cut0 generation accuracy, clean: {clean['mean']:.3f} ({clean['k']}/{clean['n']})")
    with rundir.scratch_folder("cfglab-erase-") as tmp:
        store = fit_states(model, grammar, fit, names, tmp)
        for layer, name in enumerate(names):
            x = store.load("fit", name).astype(np.float64)  # (N, C)
            w = Whitening.fit(x)
            for ci, t in enumerate(concepts):
                cell = _erase_one(
                    model, scored, name, w, x, t, (ci, layer), draws, seed, weights,
                    score_generation,
                )  # fmt: skip
                cells.append({"target": t.target, "column": t.column, "layer": layer, **cell})
                log(f"erase {t.target} {t.column} at layer {layer}: {_said(cell)}")
    return {"layers": names, "cells": cells, "generation_clean": clean}


def _said(cell: dict) -> str:
    """The log line of one cell: KL rises (and accuracies), LEACE vs random."""
    text = (
        f"(rank {cell['rank']}): KL +{cell['leace']['all']['mean']:.4f} vs random "
        f"+{(cell['random'] or {}).get('all', {}).get('mean', float('nan')):.4f}"
    )
    gen = cell["generation"]
    if gen:
        rand = gen["random"]["accuracy"]["mean"] if gen["random"] else float("nan")
        text += f"; accuracy {gen['leace']['accuracy']['mean']:.3f} vs random {rand:.3f}"
    return text


def _erase_one(model, scored, name, w, x, target, key, draws, seed, weights, score) -> dict:
    """One (target, layer) cell of erase_layers."""
    leace = fit_leace(w, x, target.y, target.n_classes)
    with erasing(model, name, leace):
        rise = row_kls(model, scored) - scored.clean
    cell = {
        "rank": leace.rank,
        "displacement": displacement(leace, x),
        "leace": pooled(rise, scored, weights),
        "random": None,
        "excess": None,
        "random_displacement": None,
        "generation": None,
    }
    controls = []
    if draws and leace.rank:
        controls = [random_eraser(w, leace.rank, rng(seed, "intervene_random", *key, d)) for d in
                    range(draws)]  # fmt: skip
        kls = []
        for e in controls:
            with erasing(model, name, e):
                kls.append(row_kls(model, scored))
        rand = np.mean(kls, 0) - scored.clean
        cell["random"] = pooled(rand, scored, weights)
        cell["excess"] = pooled(rise - rand, scored, weights)
        cell["random_displacement"] = float(np.mean([displacement(e, x) for e in controls]))
    if score is not None:
        cell["generation"] = {
            "leace": score(name, leace),
            "random": score(name, controls[0]) if controls else None,
        }
    return cell


# ---- generation under erasure ----------------------------------------------------------------
def cut0_correct(grammar: Grammar, sequences: list[np.ndarray]) -> np.ndarray:
    """(N,) bool: the eval accuracy family's verdict on generated sequences (BOS + completion):
    an EOS was produced, every token before the first EOS is a terminal, and those terminals
    are a sentence of the language (exact CYK, cfglab.exact.cyk)."""
    from cfglab.exact.cyk import recognize

    eos = grammar.n_t + 1
    ok = np.zeros(len(sequences), dtype=bool)
    judged, strings = [], []
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)[1:]  # BOS dropped
        ends = np.flatnonzero(seq == eos)
        string = seq[: ends[0]] if len(ends) else seq
        if len(ends) and ((string >= 1) & (string <= grammar.n_t)).all():
            judged.append(i)
            strings.append(string)
    if strings:
        ok[judged] = np.asarray(recognize(grammar, strings), dtype=bool)
    return ok


def generation_scorer(
    model: nn.Module, grammar: Grammar, generate: GenerateFn, n: int, seed: int, n_boot: int
) -> ScoreFn:
    """score(name, eraser) -> {"accuracy", "drop"}: accuracy, the share of n cut0 generations
    `generate(model, n, seed)` (with the eraser on hook `name` at every generated position:
    `erasing`) that are sentences, and drop, the clean model's accuracy minus it (None for the
    clean model itself), each a `ratio` cell {mean, lo, hi, n} with k (the count correct) on
    accuracy. Every call samples under the same seed, so the clean model and each eraser get
    the same sampling draws (they part once a token differs); the intervals are 95% percentile
    bootstraps over generation indices, common to every call (the drop's resamples pairs)."""
    weights = resample_weights(n, n_boot, seed)
    ones = np.ones(n)
    clean: list[np.ndarray] = []  # the clean model's verdicts, sampled once

    def verdicts(name: str | None, eraser: Eraser | None) -> np.ndarray:
        if eraser is None:
            return cut0_correct(grammar, generate(model, n, seed)).astype(np.float64)
        with erasing(model, name, eraser):
            return cut0_correct(grammar, generate(model, n, seed)).astype(np.float64)

    def score(name: str | None, eraser: Eraser | None) -> dict:
        if not clean:
            clean.append(verdicts(None, None))
        ok = clean[0] if eraser is None else verdicts(name, eraser)
        accuracy = {**ratio(ok, ones, weights), "k": int(ok.sum())}
        drop = None if eraser is None else ratio(clean[0] - ok, ones, weights)
        return {"accuracy": accuracy, "drop": drop}

    return score
