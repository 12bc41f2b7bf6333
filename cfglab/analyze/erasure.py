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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cfglab import rundir
from cfglab.analyze.kl_rows import ScoredStrings, pooled, row_kls
from cfglab.analyze.states import HiddenStore, resid_names
from cfglab.analyze.targets import build_targets
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

    def hook(self) -> Callable[[Tensor, object], Tensor]:
        """A writable hook (cfglab.model.hooks) erasing every position but BOS (position 0)."""
        cache: dict = {}

        def fn(act: Tensor, hook) -> Tensor:  # act (B, T, C)
            if act.device not in cache:
                cache[act.device] = [
                    torch.as_tensor(a, dtype=act.dtype, device=act.device)
                    for a in (self.mean, self.down, self.up)
                ]
            mean, down, up = cache[act.device]
            out = act.clone()
            out[:, 1:] = act[:, 1:] - ((act[:, 1:] - mean) @ down) @ up.T
            return out

        return fn


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
) -> dict:
    """LEACE and random erasers per (layer, probe target) -> {"layers", "cells": [{target,
    column, layer, rank, displacement, random_displacement, leace, random, excess}]}: leace,
    random (mean over draws) and excess (leace - random) are `pooled` KL rises by row group."""
    names = resid_names(model.config.n_layer)
    concepts = build_targets(grammar, fit, targets)
    cells = []
    with rundir.scratch_folder("cfglab-erase-") as tmp:
        store = fit_states(model, grammar, fit, names, tmp)
        for layer, name in enumerate(names):
            x = store.load("fit", name).astype(np.float64)  # (N, C)
            w = Whitening.fit(x)
            for ci, t in enumerate(concepts):
                cell = _erase_one(model, scored, name, w, x, t, (ci, layer), draws, seed, weights)
                cells.append({"target": t.target, "column": t.column, "layer": layer, **cell})
                log(
                    f"erase {t.target} {t.column} at layer {layer} (rank {cell['rank']}): KL "
                    f"+{cell['leace']['all']['mean']:.4f} vs random "
                    f"+{(cell['random'] or {}).get('all', {}).get('mean', float('nan')):.4f}"
                )
    return {"layers": names, "cells": cells}


def _erase_one(model, scored, name, w, x, target, key, draws, seed, weights) -> dict:
    """One (target, layer) cell of erase_layers."""
    leace = fit_leace(w, x, target.y, target.n_classes)
    rise = row_kls(model, scored, lambda rows: [(name, leace.hook())]) - scored.clean
    cell = {
        "rank": leace.rank,
        "displacement": displacement(leace, x),
        "leace": pooled(rise, scored, weights),
        "random": None,
        "excess": None,
        "random_displacement": None,
    }
    if draws and leace.rank:
        controls = [random_eraser(w, leace.rank, rng(seed, "intervene_random", *key, d)) for d in
                    range(draws)]  # fmt: skip
        rand = (
            np.mean(
                [row_kls(model, scored, lambda rows, e=e: [(name, e.hook())]) for e in controls], 0
            )
            - scored.clean
        )
        cell["random"] = pooled(rand, scored, weights)
        cell["excess"] = pooled(rise - rand, scored, weights)
        cell["random_displacement"] = float(np.mean([displacement(e, x) for e in controls]))
    return cell
