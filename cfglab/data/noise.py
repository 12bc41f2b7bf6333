"""Corruption of strings: noisy prompts for robustness tests and perturbed pretraining data.

Strings are 1-D arrays of token ids 1..T (vocab.py). `corrupt` applies each requested kind in
the order given, each token independently with probability `rate`:

- ``"substitute"``: the token becomes a *different* terminal, uniform over the other T-1;
- ``"insert"``: a uniformly random terminal is inserted just before the token;
- ``"delete"``: the token is removed; a string is never emptied (if every token of a string
  would go, its first token stays).

Example with T = 3, rate 1, kinds ("substitute",): [1, 2, 3] -> e.g. [3, 1, 2] (every token
changed). `corrupt_fraction` is the paper's perturbed pretraining: a fraction rho of the strings
is corrupted this way (Allen-Zhu & Li, Result 11-12; our default gamma = 0.15, rho = 0.1).
Everything is seeded by `seed` through `np.random.default_rng`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cfglab.errors import ConfigError, VocabError

KINDS = ("substitute", "insert", "delete")


def _check(n_terminals: int, rate: float, kinds: Sequence[str], name: str = "rate") -> None:
    if isinstance(kinds, str):
        raise ConfigError(f"kinds={kinds!r} must be a list of kinds, e.g. ({kinds!r},)")
    for k in kinds:
        if k not in KINDS:
            raise ConfigError(f"unknown corruption kind {k!r}: choose from {', '.join(KINDS)}")
    if not (0.0 <= rate <= 1.0):
        raise ConfigError(f"{name}={rate} is not a probability: give a value in [0, 1]")
    if n_terminals < 1 or ("substitute" in kinds and n_terminals < 2):
        raise ConfigError(
            f"n_terminals={n_terminals}: substitution needs at least 2 terminals (a token must "
            "change to a different one); give the grammar's terminal count"
        )


def corrupt(
    strings: Sequence[np.ndarray],
    n_terminals: int,
    rate: float,
    seed: int,
    kinds: Sequence[str] = ("substitute",),
) -> list[np.ndarray]:
    """Corrupted copies of `strings` (token ids 1..n_terminals); see the module docstring."""
    _check(n_terminals, rate, kinds)
    rng = np.random.default_rng(seed)
    lengths = np.array([len(s) for s in strings], dtype=np.int64)
    ids = (
        np.concatenate([np.asarray(s, dtype=np.int64) for s in strings])
        if len(strings)
        else np.empty(0, dtype=np.int64)
    )
    if ids.size and (ids.min() < 1 or ids.max() > n_terminals):
        bad = ids[(ids < 1) | (ids > n_terminals)][0]
        raise VocabError(
            f"token id {bad} is not a terminal id 1..{n_terminals}: strings must hold terminal "
            "ids only (no BOS/EOS/PAD), and n_terminals must be the grammar's terminal count"
        )
    owner = np.repeat(np.arange(lengths.size), lengths)  # (N,) string index of each token
    for kind in kinds:
        hit = rng.random(ids.size) < rate
        if kind == "substitute":
            # add 1..T-1 modulo T: uniform over the other terminals, never the same token
            shift = rng.integers(1, n_terminals, size=int(hit.sum()))
            ids = ids.copy()
            ids[hit] = (ids[hit] - 1 + shift) % n_terminals + 1
        elif kind == "insert":
            new = rng.integers(1, n_terminals + 1, size=int(hit.sum()))
            reps = 1 + hit.astype(np.int64)  # a hit token becomes (new, token)
            pos = np.cumsum(reps) - reps  # where each old token's first copy lands
            out = np.repeat(ids, reps)
            out_owner = np.repeat(owner, reps)
            out[pos[hit]] = new
            ids, owner = out, out_owner
        else:  # delete
            keep = ~hit
            total = np.bincount(owner, minlength=lengths.size)
            kept = np.bincount(owner[keep], minlength=lengths.size)
            emptied = np.flatnonzero((kept == 0) & (total > 0))
            first = np.cumsum(total) - total  # index of each string's first token
            keep[first[emptied]] = True
            ids, owner = ids[keep], owner[keep]
    if lengths.size == 0:
        return []
    counts = np.bincount(owner, minlength=lengths.size)
    return np.split(ids, np.cumsum(counts)[:-1])


def corrupt_fraction(
    strings: Sequence[np.ndarray],
    n_terminals: int,
    fraction: float,
    seed: int,
    rate: float = 0.15,
    kinds: Sequence[str] = ("substitute",),
) -> tuple[list[np.ndarray], np.ndarray]:
    """Perturbed pretraining data: each string is chosen with probability `fraction` (the
    paper's rho) and the chosen ones are corrupted at `rate` (gamma). Returns the strings
    (unchosen ones unchanged, same objects) and the (n,) bool mask of chosen strings."""
    _check(n_terminals, rate, kinds)
    if not (0.0 <= fraction <= 1.0):
        raise ConfigError(f"fraction={fraction} is not a probability: give a value in [0, 1]")
    rng = np.random.default_rng(seed)
    chosen = rng.random(len(strings)) < fraction
    picked = np.flatnonzero(chosen)
    # an independent stream for the corruption itself, derived from the same seed
    noisy = corrupt(
        [strings[i] for i in picked], n_terminals, rate, int(rng.integers(2**63 - 1)), kinds
    )
    out = list(strings)
    for i, s in zip(picked, noisy, strict=True):
        out[i] = s
    return out, chosen
