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

Perturbed pretraining on labelled batches (`perturb_fraction`, with a `TrainingNoise`): a
fraction rho of a SampleBatch's strings is perturbed, its tree labels kept aligned:

- kind ``"token"`` (`perturb_tokens`): `corrupt` at rate gamma. Substitution keeps every label.
  An inserted token takes its right neighbour's labels (it joins the subtrees that neighbour
  starts or continues); a deleted token takes its labels with it. Then, per level, subtree
  ordinals are renumbered 0, 1, ... left to right (a subtree whose tokens were all deleted
  disappears) and `is_boundary` is recomputed from them (t ends its level-l subtree iff the
  next token's ordinal differs, or t is last). Worked example, one level, ordinals 0 0 1 and
  a token inserted before the third: ordinals 0 0 1 1, boundaries F T F T.
- kind ``"rule"`` (`perturb_rule`, structural noise): one nonterminal node, uniform over the
  nodes of levels that have >= 2 nonterminals, gets the rule of *another* nonterminal of its
  level (that NT uniform, its rule by the grammar's probabilities) and its subtree is derived
  afresh below it. The node keeps its own label at its level; the new subtree's nodes get
  their real labels; the string usually leaves the language while every label stays defined.

`spans` are not carried through a perturbation (per-level labels are): a perturbed batch has
`spans` None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cfglab.config import CORRUPTION_NAMES, NOISE_KIND_NAMES, NoiseConfig
from cfglab.config.schema import registry
from cfglab.config.validate import check_noise
from cfglab.data.sampler import SampleBatch, strict_levels
from cfglab.errors import ConfigError, VocabError
from cfglab.grammar.cfg import Grammar

KINDS = CORRUPTION_NAMES  # the corruptions, in the order `corrupt` may apply them
NOISE_PURPOSE = 0x6E6F6973  # "nois": the seed-key part that separates noise from clean draws


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


def _corrupt_ids(ids, owner, n_strings, n_terminals, rate, rng, kinds):
    """The corruption itself on concatenated strings. Returns (ids, owner, src): src[t] is the
    old position whose labels token t takes (its own, or its right neighbour's if inserted)."""
    src = np.arange(ids.size)
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
            out[pos[hit]] = new
            ids, owner, src = out, np.repeat(owner, reps), np.repeat(src, reps)
        else:  # delete
            keep = ~hit
            total = np.bincount(owner, minlength=n_strings)
            kept = np.bincount(owner[keep], minlength=n_strings)
            emptied = np.flatnonzero((kept == 0) & (total > 0))
            first = np.cumsum(total) - total  # index of each string's first token
            keep[first[emptied]] = True
            ids, owner, src = ids[keep], owner[keep], src[keep]
    return ids, owner, src


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
    _check_ids(ids, n_terminals)
    owner = np.repeat(np.arange(lengths.size), lengths)  # (N,) string index of each token
    ids, owner, _ = _corrupt_ids(ids, owner, lengths.size, n_terminals, rate, rng, kinds)
    if lengths.size == 0:
        return []
    counts = np.bincount(owner, minlength=lengths.size)
    return np.split(ids, np.cumsum(counts)[:-1])


def _check_ids(ids: np.ndarray, n_terminals: int) -> None:
    if ids.size and (ids.min() < 1 or ids.max() > n_terminals):
        bad = ids[(ids < 1) | (ids > n_terminals)][0]
        raise VocabError(
            f"token id {bad} is not a terminal id 1..{n_terminals}: strings must hold terminal "
            "ids only (no BOS/EOS/PAD), and n_terminals must be the grammar's terminal count"
        )


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


# ---- labelled batches ------------------------------------------------------------------------
def _relabel(batch: SampleBatch, ids, offsets, src, ancestors=None, subtree=None) -> SampleBatch:
    """New strings (none empty) whose token t takes the labels of old token src[t], or the
    given label arrays; subtree ordinals renumbered 0, 1, ... per string and level, and
    boundaries recomputed from them."""
    out = SampleBatch(ids=ids, offsets=offsets)
    if batch.ancestors is None:
        return out
    out.ancestors = batch.ancestors[:, src] if ancestors is None else ancestors
    sub = batch.subtree[:, src] if subtree is None else subtree  # (L, N) nondecreasing per string
    change = np.ones(sub.shape, dtype=bool)  # (L, N): token t starts a subtree
    change[:, 1:] = sub[:, 1:] != sub[:, :-1]
    change[:, offsets[:-1]] = True  # every string's first token
    rank = np.cumsum(change, axis=1)  # running count of subtrees over the whole batch
    first = np.repeat(rank[:, offsets[:-1]], np.diff(offsets), axis=1)
    out.subtree = (rank - first).astype(batch.subtree.dtype)
    out.is_boundary = np.ones(sub.shape, dtype=bool)
    out.is_boundary[:, :-1] = change[:, 1:]  # t ends its subtree iff t+1 starts one, or is last
    return out


def perturb_tokens(
    batch: SampleBatch,
    n_terminals: int,
    rate: float,
    seed: int | np.random.Generator,
    kinds: Sequence[str] = ("substitute",),
) -> SampleBatch:
    """Every string of `batch` corrupted as `corrupt` does, labels kept aligned (module doc)."""
    _check(n_terminals, rate, kinds)
    _check_ids(batch.ids, n_terminals)
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(len(batch)), batch.lengths)
    ids, owner, src = _corrupt_ids(batch.ids, owner, len(batch), n_terminals, rate, rng, kinds)
    offsets = np.zeros(len(batch) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=len(batch)), out=offsets[1:])
    return _relabel(batch, ids, offsets, src)


def _rule_levels(grammar: Grammar) -> tuple[tuple[int, ...], ...]:
    """The strict levels, if rule noise can work on this grammar; else a ConfigError."""
    levels = strict_levels(grammar)
    name = grammar.name or "the grammar"
    if levels is None:
        raise ConfigError(
            f"rule noise needs a layered grammar (its trees' levels), and {name} is not "
            "layered: use data.noise.kind=token"
        )
    if all(len(lev) < 2 for lev in levels):
        raise ConfigError(
            f"rule noise swaps a node's rule for one of another nonterminal of its level, but "
            f"no level of {name} has 2 nonterminals: use data.noise.kind=token"
        )
    return levels


def perturb_rule(
    batch: SampleBatch, grammar: Grammar, seed: int | np.random.Generator
) -> tuple[SampleBatch, np.ndarray]:
    """Structural noise on every string of `batch` (which needs its per-level labels): one node
    per string gets another same-level nonterminal's rule (module docstring). Returns the batch
    and (n, 2) int64 (level, subtree ordinal) of each string's perturbed node."""
    levels = _rule_levels(grammar)
    if batch.ancestors is None:
        raise ConfigError("rule noise needs the batch's tree labels: sample it with labels=True")
    rng = np.random.default_rng(seed)
    n_lev = len(levels)
    level_of = {a: lev for lev, nts in enumerate(levels) for a in nts}
    index = {a: k for nts in levels for k, a in enumerate(nts)}
    eligible = [lev for lev in range(n_lev) if len(levels[lev]) >= 2]
    rhs_of = [[grammar.rules[r].rhs for r in rs] for rs in grammar.rules_of]
    cum = [np.cumsum([grammar.rules[r].prob for r in rs]) for rs in grammar.rules_of]

    def draw_rhs(a: int) -> tuple[int, ...]:  # inverse CDF; min() guards a last sum below 1
        j = int(np.searchsorted(cum[a], rng.random(), side="right"))
        return rhs_of[a][min(j, len(rhs_of[a]) - 1)]

    ids_parts, anc_parts, sub_parts = [], [], []
    nodes = np.zeros((len(batch), 2), dtype=np.int64)
    for i in range(len(batch)):
        lo, hi = int(batch.offsets[i]), int(batch.offsets[i + 1])
        anc, sub = batch.ancestors[:, lo:hi], batch.subtree[:, lo:hi]
        # the node: uniform over the nodes of the eligible levels of this string
        counts = sub[eligible, -1].astype(np.int64) + 1  # (E,) nodes per eligible level
        k = int(rng.integers(counts.sum()))
        j = int(np.searchsorted(np.cumsum(counts), k, side="right"))
        lev, ordinal = eligible[j], k - int(counts[:j].sum())
        nodes[i] = lev, ordinal
        where = np.flatnonzero(sub[lev] == ordinal)
        s, e = int(where[0]), int(where[-1]) + 1  # its tokens: x[s:e]
        others = [x for x in levels[lev] if index[x] != int(anc[lev, s])]
        b = others[int(rng.integers(len(others)))]
        # derive b's rule and the subtrees below it in pre-order; at every terminal, path[m]
        # holds its level-m ancestor (index, ordinal among the new level-m nodes)
        toks: list[int] = []
        rows: list[list[int]] = []  # per new token: [index, ordinal] for each level below lev
        counter = [0] * n_lev
        path = [[0, 0] for _ in range(n_lev)]
        stack = list(reversed(draw_rhs(b)))
        while stack:
            x = stack.pop()
            if x >= grammar.n_nt:
                toks.append(x - grammar.n_nt + 1)
                rows.append([v for m in range(lev + 1, n_lev) for v in path[m]])
                continue
            m = level_of[x]
            path[m] = [index[x], counter[m]]
            counter[m] += 1
            stack.extend(reversed(draw_rhs(x)))
        n_new = len(toks)
        new = np.array(rows, dtype=np.int64).reshape(n_new, -1)  # (n_new, 2 * (L - lev - 1))
        mid_anc = np.repeat(anc[:, s : s + 1], n_new, axis=1).astype(np.int64)
        mid_sub = np.repeat(sub[:, s : s + 1], n_new, axis=1).astype(np.int64)
        right_sub = sub[:, e:].astype(np.int64)
        for q, m in enumerate(range(lev + 1, n_lev)):
            mid_anc[m] = new[:, 2 * q]
            mid_sub[m] += new[:, 2 * q + 1]  # the new nodes take the old first node's place
            old_count = int(sub[m, e - 1]) - int(sub[m, s]) + 1
            right_sub[m] += counter[m] - old_count  # later subtrees shift by the difference
        ids_parts.append(np.concatenate([batch.ids[lo : lo + s], toks, batch.ids[lo + e : hi]]))
        anc_parts.append(np.concatenate([anc[:, :s], mid_anc, anc[:, e:]], axis=1))
        sub_parts.append(np.concatenate([sub[:, :s], mid_sub, right_sub], axis=1))
    lengths = np.array([len(x) for x in ids_parts], dtype=np.int64)
    offsets = np.zeros(len(batch) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if not ids_parts:
        return batch, nodes
    out = _relabel(
        batch,
        np.concatenate(ids_parts).astype(batch.ids.dtype),
        offsets,
        None,
        np.concatenate(anc_parts, axis=1).astype(batch.ancestors.dtype),
        np.concatenate(sub_parts, axis=1).astype(batch.subtree.dtype),
    )
    return out, nodes


# ---- a fraction rho of a batch ---------------------------------------------------------------
def _perturb_tokens_kind(batch, grammar, noise, rng) -> SampleBatch:
    return perturb_tokens(batch, grammar.n_t, noise.rate, rng, noise.kinds)


def _perturb_rule_kind(batch, grammar, noise, rng) -> SampleBatch:
    return perturb_rule(batch, grammar, rng)[0]


# kind name -> (batch, grammar, TrainingNoise, rng) -> perturbed batch
NOISE_KINDS = registry(
    NOISE_KIND_NAMES, {"token": _perturb_tokens_kind, "rule": _perturb_rule_kind}, "NOISE_KINDS"
)


@dataclass
class TrainingNoise(NoiseConfig):
    """Perturbed pretraining data: `fraction` (rho) of the strings perturbed by `kind`.

    The settings of cfglab.config.NoiseConfig (`data.noise`, where their defaults live), checked:
    `rate` (gamma) and `kinds` apply to kind "token" (see `corrupt`); kind "rule" has no
    parameter. `fraction` 0 means no noise at all (streams stay bit-identical to clean ones).
    """

    def __post_init__(self) -> None:
        check_noise(self)  # the config's own check of data.noise (names, ranges)
        self.kinds = tuple(self.kinds)

    @property
    def is_active(self) -> bool:
        return self.fraction > 0.0

    @property
    def needs_labels(self) -> bool:
        """Whether the strings must be sampled with their trees (rule noise rewrites them)."""
        return self.kind == "rule"

    def check(self, grammar: Grammar) -> None:
        """Fail now, before any sampling, if this noise cannot apply to `grammar`."""
        if not self.is_active:
            return
        if self.kind == "rule":
            _rule_levels(grammar)
        else:
            _check(grammar.n_t, self.rate, self.kinds, name="data.noise.rate")


def _select(batch: SampleBatch, idx: np.ndarray) -> SampleBatch:
    """The strings idx (sorted) of a batch, with their per-level labels."""
    lengths = batch.lengths[idx]
    offsets = np.zeros(idx.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tok = np.repeat(batch.offsets[idx] - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
    out = SampleBatch(ids=batch.ids[tok], offsets=offsets)
    if batch.ancestors is not None:
        out.ancestors = batch.ancestors[:, tok]
        out.subtree = batch.subtree[:, tok]
        out.is_boundary = batch.is_boundary[:, tok]
    return out


def _merge(batch: SampleBatch, idx: np.ndarray, new: SampleBatch) -> SampleBatch:
    """`batch` with its strings idx replaced by the strings of `new`, in order."""
    is_new = np.zeros(len(batch), dtype=bool)
    is_new[idx] = True
    where = np.cumsum(is_new) - 1  # string i's index within new, if replaced
    lengths = np.where(is_new, 0, batch.lengths)
    lengths[idx] = new.lengths
    offsets = np.zeros(len(batch) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # gather index into the concatenation [batch.ids, new.ids] for every output token
    src_start = np.where(is_new, new.offsets[:-1][where] + batch.ids.size, batch.offsets[:-1])
    tok = np.repeat(src_start - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
    out = SampleBatch(ids=np.concatenate([batch.ids, new.ids])[tok], offsets=offsets)
    if batch.ancestors is not None:
        for name in ("ancestors", "subtree", "is_boundary"):
            both = np.concatenate([getattr(batch, name), getattr(new, name)], axis=1)
            setattr(out, name, both[:, tok])
    return out


def perturb_fraction(
    batch: SampleBatch, grammar: Grammar, noise: TrainingNoise, seed: int
) -> tuple[SampleBatch, np.ndarray]:
    """Each string of `batch` chosen with probability noise.fraction and perturbed by its kind.

    Returns (batch, perturbed): the unchosen strings unchanged and in place, perturbed the
    (n,) bool mask of chosen strings (a chosen string may still be a sentence: measure that
    with the exact recognizer). With nothing chosen the very same batch object comes back.
    """
    rng = np.random.default_rng(seed)
    chosen = rng.random(len(batch)) < noise.fraction
    if not chosen.any():
        return batch, chosen
    idx = np.flatnonzero(chosen)
    noisy = NOISE_KINDS[noise.kind](_select(batch, idx), grammar, noise, rng)
    return _merge(batch, idx, noisy), chosen
