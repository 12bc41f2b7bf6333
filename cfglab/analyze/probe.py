"""Linear probes on frozen hidden states: does layer i encode the parse tree? (stage 6b)

The paper's multi-head linear probe (SPEC.md "Probing") predicts a label at position i from the
frozen hidden states E_k of one layer:

    G_i = sum_{r=1..H} sum_k w_{r,i->k} f_r(E_k)
    w_{r,i->.} = softmax_k(<P_{i,r}, P_{k,r}> / sqrt(d'))

f_r is linear and the attention weights w depend on positions only (trainable embeddings P), so
G stays a linear function of the hidden states: a probe that succeeds shows the information is
linearly present, not computed by the probe. Which keys k a query may use is the `window`
(WINDOWS: all positions as in the paper, causal, or the restricted diagonal / |i-k| <= 1
probes, which are scored at NT ends only). The paper uses H = 16, d' = 1024 and 30k steps on
GPU; the CPU defaults here (ProbeSettings) are H = 4, d' = 32, 300 steps of 16 strings, each
step's loss taken on 64 random positions per string (an unbiased estimate of the full loss at a
cost of 64*T instead of T^2), inputs standardised, the read-out started at the ridge solution.

Targets, one probe per level l (level 0 = the root is skipped: it is constant):
- "ancestor": the level-l NT ancestor of every token (a class among grammar.levels[l]);
- "boundary": whether the token is the last token of its level-l subtree (binary).

Protocol: fresh training strings and fresh test strings from the sampler (different seeds);
hidden states of every probed layer are collected in one forward pass per batch and spilled to
a temporary folder, then loaded and probed one layer at a time, so memory holds one layer's
states, not all of them. Baselines in the same table: the same probe on a randomly initialised
model of the same shape, and the majority-class rate of the test labels (majority class taken
from the training labels).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfglab.config import ExperimentConfig
from cfglab.errors import ConfigError, GrammarError
from cfglab.grammar import Grammar


def _window_all(t: int) -> None:
    return None  # no restriction: skips the masking pass


def _window_causal(t: int) -> Tensor:
    return torch.ones(t, t, dtype=torch.bool).tril()


def _window_band(width: int) -> Callable[[int], Tensor]:
    def window(t: int) -> Tensor:
        pos = torch.arange(t)
        return (pos[:, None] - pos[None, :]).abs() <= width

    return window


# Which keys k position i may read: name -> T -> (T, T) bool [query i, key k], None = all.
WINDOWS: dict[str, Callable[[int], Tensor | None]] = {
    "all": _window_all,  # the paper's probe: every position of the string
    "causal": _window_causal,  # k <= i: only what a left-to-right reader has seen
    "diagonal": _window_band(0),  # k = i: the information sits at the token itself
    "tridiagonal": _window_band(1),  # |i - k| <= 1: "near the ending position +-1"
}

# Where a probe is trained and scored: "all" tokens, or only the level's NT "ends".
WHERE = ("all", "ends")

TARGETS = ("ancestor", "boundary")


@dataclass(frozen=True)
class ProbeSettings:
    """Probe size and training; scaled down from the paper's H=16, d'=1024, 30k steps for CPU."""

    n_heads: int = 4  # H: probe heads r
    d_probe: int = 32  # d': size of the position embeddings P
    window: str = "all"  # a key of WINDOWS
    where: str = "all"  # "all" tokens, or only NT "ends" of the probed level (restricted probes)
    steps: int = 300  # optimizer steps (batches of training strings)
    batch_size: int = 16  # strings per step
    n_queries: int = 64  # positions per string whose loss a step uses (random; all if fewer)
    lr: float = 1e-2  # AdamW, constant; the paper's 3e-3 needs ~10x more steps than we can pay
    weight_decay: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ConfigError(
                f"unknown probe window {self.window!r}; choose from {', '.join(WINDOWS)}"
            )
        if self.where not in WHERE:
            raise ConfigError(
                f"unknown probe positions {self.where!r}; choose from {', '.join(WHERE)}"
            )
        for name in ("n_heads", "d_probe", "steps", "batch_size", "n_queries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"probe {name} must be >= 1, got {getattr(self, name)}")


class MultiHeadProbe(nn.Module):
    """G independent multi-head linear probes reading the same hidden states.

    Probe g predicts one of n_classes[g] classes at every position. Probes share no parameter,
    so training them on the sum of their losses is the same as training each alone (AdamW is
    per-parameter); batching them only saves time.
    """

    def __init__(
        self,
        n_embd: int,
        n_classes: Sequence[int],
        *,
        n_heads: int = 4,
        d_probe: int = 64,
        max_len: int = 512,
        window: str = "all",
    ) -> None:
        super().__init__()
        if window not in WINDOWS:
            raise ConfigError(f"unknown probe window {window!r}; choose from {', '.join(WINDOWS)}")
        n_probes, n_max = len(n_classes), max(n_classes)
        self.window = window
        self.d_probe = d_probe
        # P ~ N(0, s^2) with s^2 = 8 / sqrt(d'): the self-score <P_i, P_i>/sqrt(d') ~ 8 dominates
        # the off-diagonal ones (std s^2), so every probe starts close to "read your own
        # position" (~80% of the weight over 500 keys) and learns where else to look.
        std = (8 / math.sqrt(d_probe)) ** 0.5
        self.pos = nn.Parameter(std * torch.randn(n_probes, max_len, n_heads, d_probe))  # G,T,H,D'
        self.read = nn.Parameter(torch.randn(n_probes, n_embd, n_heads, n_max) / math.sqrt(n_embd))
        self.bias = nn.Parameter(torch.zeros(n_probes, n_max))  # (G, K)
        classes = torch.arange(n_max)[None, :] < torch.tensor(list(n_classes))[:, None]
        self.register_buffer("is_class", classes, persistent=False)  # (G, K) real classes
        # per-dimension standardisation of the inputs (set by fit_probe from the training
        # states): an invertible affine map, so the probe stays linear in E, but AdamW's steps
        # no longer depend on how large a layer's residual stream happens to be
        self.register_buffer("shift", torch.zeros(n_embd), persistent=False)
        self.register_buffer("scale", torch.ones(n_embd), persistent=False)

    @property
    def max_len(self) -> int:
        return self.pos.shape[1]

    def forward(self, h: Tensor, lengths: Tensor, queries: Tensor | None = None) -> Tensor:
        """h (B, T, C) hidden states (rows >= length are padding), lengths (B,), queries (Q,)
        the positions to predict (default all T) -> (G, B, Q, K) logits; classes a probe does
        not have are -inf. Predicting a subset costs Q*T instead of T^2 and changes nothing
        else: training on random subsets is stochastic gradient descent on the same loss."""
        b, t, c = h.shape
        n_probes, _, n_heads, n_max = self.read.shape
        h = (h - self.shift) / self.scale
        pos = self.pos[:, :t].transpose(1, 2)  # (G, H, T, D')
        pos_q = pos if queries is None else pos[:, :, queries]  # (G, H, Q, D')
        n_q = pos_q.shape[2]
        scores = (pos_q @ pos.transpose(-1, -2)) / math.sqrt(self.d_probe)  # (G, H, Q, T)
        window = WINDOWS[self.window](t)
        if window is not None:
            window = window if queries is None else window[queries.cpu()]
            scores = scores.masked_fill(~window.to(h.device), float("-inf"))
        # A softmax over the keys k < length of each string, without a (G, B, H, Q, T) tensor:
        # the weights depend on positions only, so one (G, H, Q, T) matrix u serves the whole
        # batch, and string b's normaliser sum_{k < n_b} u[i, k] is one more column of the same
        # product. The shift by the row maximum cancels in the ratio, so it needs no gradient.
        u = torch.exp(scores - scores.detach().amax(-1, keepdim=True))  # (G, H, Q, T)
        is_real = (torch.arange(t, device=h.device)[None, :] < lengths[:, None]).to(h.dtype)
        feats = (h * is_real[..., None])[None] @ self.read.view(n_probes, 1, c, n_heads * n_max)
        feats = feats.view(n_probes, b, t, n_heads, n_max).permute(0, 3, 2, 1, 4)  # (G,H,T,B,K)
        rhs = torch.cat(
            [
                feats.reshape(n_probes * n_heads, t, b * n_max),
                is_real.T.expand(n_probes * n_heads, t, b),
            ],
            dim=-1,
        )  # (G*H, T, B*K+B)
        out = u.view(-1, n_q, t) @ rhs  # (G*H, Q, B*K + B)
        num = out[..., : b * n_max].view(n_probes, n_heads, n_q, b, n_max)
        den = out[..., b * n_max :].view(n_probes, n_heads, n_q, b, 1)
        mixed = (num / den.clamp_min(1e-30)).sum(1)  # (G, Q, B, K): sum over probe heads r
        logits = mixed.transpose(1, 2) + self.bias[:, None, None, :]  # (G, B, Q, K)
        return logits.masked_fill(~self.is_class[:, None, None, :], float("-inf"))


def _batch(
    feats: np.ndarray,
    offsets: np.ndarray,
    labels: np.ndarray,
    where: np.ndarray | None,
    idx: np.ndarray,
) -> tuple[Tensor, Tensor, Tensor]:
    """Strings idx of a flat store -> padded h (B, T, C) float32, targets (G, B, T) with -100 at
    padding and outside `where`, lengths (B,)."""
    lengths = offsets[idx + 1] - offsets[idx]
    t = int(lengths.max())
    rows = np.zeros((len(idx), t), dtype=np.int64)
    is_real = np.arange(t)[None, :] < lengths[:, None]  # (B, T)
    rows[is_real] = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx])
    h = torch.from_numpy(feats[rows].astype(np.float32, copy=False))  # (B, T, C)
    y = labels[:, rows].astype(np.int64)  # (G, B, T)
    keep = is_real[None] if where is None else is_real[None] & where[:, rows]
    y[~np.broadcast_to(keep, y.shape)] = -100
    return h, torch.from_numpy(y), torch.from_numpy(lengths)


def _length_buckets(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of batches of strings of similar length (the probe's cost grows as T^2 with the
    longest string of a batch), in random order; the jitter varies the batches between epochs."""
    order = np.argsort(lengths + rng.uniform(0, 0.1 * lengths.mean() + 1, len(lengths)))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@torch.no_grad()
def _warm_start(
    probe: MultiHeadProbe,
    feats: np.ndarray,
    labels: np.ndarray,
    n_classes: Sequence[int],
    where: np.ndarray | None,
    n_max: int = 100_000,
) -> None:
    """Start each probe's read-out f_r at the ridge least-squares map from a token's own state
    to its one-hot label (split over the H heads). The probe starts near-diagonal, so this is
    where plain gradient descent would head first; AdamW then needs far fewer steps. Only the
    starting point changes, not the probe."""
    rng = np.random.default_rng(0)
    n, c = feats.shape
    n_heads = probe.read.shape[2]
    for g, k in enumerate(n_classes):
        rows = np.flatnonzero(where[g]) if where is not None else np.arange(n)
        if len(rows) > n_max:
            rows = rng.choice(rows, n_max, replace=False)
        if len(rows) == 0:
            continue
        x = (torch.from_numpy(feats[rows].astype(np.float64)) - probe.shift) / probe.scale
        y = F.one_hot(torch.from_numpy(labels[g, rows]), k).double()  # (M, K)
        mu_x, mu_y = x.mean(0), y.mean(0)
        xc = x - mu_x
        gram = xc.T @ xc + 1e-3 * len(rows) * torch.eye(c, dtype=torch.float64)
        w = torch.linalg.solve(gram, xc.T @ (y - mu_y))  # (C, K)
        probe.read[g, :, :, :k] = (w / n_heads).float()[:, None, :]
        probe.bias[g, :k] = (mu_y - mu_x @ w).float()


def fit_probe(
    feats: np.ndarray,
    offsets: np.ndarray,
    labels: np.ndarray,
    n_classes: Sequence[int],
    *,
    where: np.ndarray | None = None,
    settings: ProbeSettings = ProbeSettings(),
    max_len: int | None = None,
) -> MultiHeadProbe:
    """Train G probes on one layer's states of a set of strings.

    feats (N, C) hidden states of all tokens, strings concatenated; offsets (S+1,) string starts;
    labels (G, N) int class per token and probe; n_classes (G,); where (G, N) bool: the tokens
    each probe is trained on (None: all). max_len: the longest string the probe will ever read
    (default: the longest here)."""
    n_probes, n = labels.shape
    if feats.shape[0] != n or offsets[-1] != n:
        raise ValueError(
            f"feats {feats.shape}, labels {labels.shape} and offsets end "
            f"{offsets[-1]} disagree on the number of tokens"
        )
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    longest = int(np.diff(offsets).max())
    probe = MultiHeadProbe(
        feats.shape[1],
        n_classes,
        n_heads=settings.n_heads,
        d_probe=settings.d_probe,
        max_len=max(max_len or 0, longest),
        window=settings.window,
    )
    sample = feats[np.random.default_rng(0).choice(n, min(n, 100_000), replace=False)]
    sample = sample.astype(np.float64)
    probe.shift.copy_(torch.from_numpy(sample.mean(0)))
    probe.scale.copy_(torch.from_numpy(sample.std(0) + 1e-6))
    _warm_start(probe, feats, labels, n_classes, where)
    opt = torch.optim.AdamW(
        probe.parameters(), lr=settings.lr, betas=(0.9, 0.98), weight_decay=settings.weight_decay
    )
    batches: list[np.ndarray] = []
    for _ in range(settings.steps):
        if not batches:  # a new epoch over the training strings
            batches = _length_buckets(np.diff(offsets), settings.batch_size, rng)
        idx = batches.pop()
        h, y, lengths = _batch(feats, offsets, labels, where, idx)
        queries = None
        if h.shape[1] > settings.n_queries:  # a random subset of positions (cost Q*T, not T^2)
            queries = torch.from_numpy(
                np.sort(rng.choice(h.shape[1], settings.n_queries, replace=False))
            )
            y = y[:, :, queries]
        logits = probe(h, lengths, queries)  # (G, B, Q, K)
        loss = F.cross_entropy(
            logits.flatten(0, 2), y.flatten(), ignore_index=-100, reduction="none"
        ).view(n_probes, -1)  # (G, B*Q)
        counts = (y != -100).flatten(1).sum(1).clamp_min(1)
        loss = (loss.sum(1) / counts).sum()  # each probe's mean loss; sum = independent training
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe


@torch.no_grad()
def predict_probe(
    probe: MultiHeadProbe, feats: np.ndarray, offsets: np.ndarray, batch_size: int = 32
) -> np.ndarray:
    """(G, N) predicted class of every token for each probe."""
    n_strings = len(offsets) - 1
    longest = int(np.diff(offsets).max())
    if longest > probe.max_len:
        raise ValueError(f"a string of {longest} tokens is longer than the probe's {probe.max_len}")
    dummy = np.zeros((len(probe.is_class), offsets[-1]), dtype=np.int64)
    out = []
    for start in range(0, n_strings, batch_size):
        idx = np.arange(start, min(start + batch_size, n_strings))
        h, _, lengths = _batch(feats, offsets, dummy, None, idx)
        pred = probe(h, lengths).argmax(-1)  # (G, B, T)
        is_real = torch.arange(h.shape[1])[None, :] < lengths[:, None]
        out.append(pred[:, is_real])  # (G, tokens of these strings), string order kept
    return torch.cat(out, dim=1).numpy()


def score_probe(
    probe: MultiHeadProbe,
    feats: np.ndarray,
    offsets: np.ndarray,
    labels: np.ndarray,
    *,
    where: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Accuracy (G,) and class-balanced accuracy (G,) on the tokens in `where` (default all)."""
    pred = predict_probe(probe, feats, offsets)
    return score_predictions(pred, labels, where)


def score_predictions(
    pred: np.ndarray, labels: np.ndarray, where: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """pred, labels (G, N); where (G, N) bool or None -> accuracy and balanced accuracy (G,)."""
    acc, bal = [], []
    for g in range(labels.shape[0]):
        keep = slice(None) if where is None else where[g]
        p, y = pred[g][keep], labels[g][keep]
        acc.append(float((p == y).mean()) if len(y) else float("nan"))
        recalls = [float((p[y == c] == c).mean()) for c in np.unique(y)]
        bal.append(float(np.mean(recalls)) if recalls else float("nan"))
    return {"accuracy": np.array(acc), "balanced_accuracy": np.array(bal)}


def majority_rate(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    train_where: np.ndarray | None = None,
    test_where: np.ndarray | None = None,
) -> np.ndarray:
    """(G,) accuracy on the test tokens of always answering the training set's commonest class."""
    out = []
    for g in range(train_labels.shape[0]):
        tr = train_labels[g] if train_where is None else train_labels[g][train_where[g]]
        te = test_labels[g] if test_where is None else test_labels[g][test_where[g]]
        if len(tr) == 0 or len(te) == 0:
            out.append(float("nan"))
            continue
        values, counts = np.unique(tr, return_counts=True)
        out.append(float((te == values[counts.argmax()]).mean()))
    return np.array(out)


# ---- hidden states of a model -----------------------------------------------------------------
def string_windows(
    strings: Sequence[np.ndarray], *, eos: int, pad: int, block_size: int, causal: bool
) -> Tensor:
    """Model inputs (B, T) int64 in which string j's tokens sit at positions 1..n_j.

    Row j is `BOS x_j EOS` as in training. A causal model cannot see what follows, so the rows
    are padded with PAD to the longest; an encoder would see the padding, so its row continues
    with the next strings of the batch packed as in training (`BOS x EOS BOS x EOS ...`, the
    batch read cyclically) up to block_size: the context it was trained on."""
    from cfglab.data.vocab import BOS

    rows = []
    for j, x in enumerate(strings):
        if len(x) + 2 > block_size:
            raise ConfigError(
                f"a string of {len(x)} tokens does not fit the model's block_size "
                f"{block_size} with BOS and EOS; sample with max_len <= "
                f"{block_size - 2}"
            )
        parts, have, k = [], 0, j
        while True:
            y = strings[k % len(strings)]
            parts.append(np.concatenate([[BOS], y, [eos]]))
            have += len(y) + 2
            k += 1
            if causal or have >= block_size:
                break
        rows.append(np.concatenate(parts)[:block_size])
    t = max(len(r) for r in rows)
    out = np.full((len(rows), t), pad, dtype=np.int64)
    for j, r in enumerate(rows):
        out[j, : len(r)] = r
    return torch.from_numpy(out)


def resid_names(n_layer: int) -> list[str]:
    """The probed activations: the residual stream after each block."""
    return [f"blocks.{i}.hook_resid_post" for i in range(n_layer)]


class HiddenStore:
    """Hidden states of a set of strings for several layers, spilled to a temporary folder.

    `collect` runs the model once per batch with every layer cached and appends each layer's
    real-token rows (fp16) to that layer's file; `load` reads one layer back as (N, C). So the
    probes hold one layer of one split in memory, and the model runs once, not once per layer.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.n_embd: int | None = None

    def collect(
        self,
        model: nn.Module,
        split: str,
        strings: Sequence[np.ndarray],
        names: Sequence[str],
        *,
        eos: int,
        pad: int,
        batch_size: int = 16,
    ) -> None:
        from cfglab.model.hooks import run_with_cache

        cfg = model.config
        files = {n: open(self.dir / f"{split}.{n}.bin", "wb") for n in names}
        try:
            for start in range(0, len(strings), batch_size):
                chunk = strings[start : start + batch_size]
                tokens = string_windows(
                    chunk, eos=eos, pad=pad, block_size=cfg.block_size, causal=cfg.causal
                )
                device = next(model.parameters()).device
                _, cache = run_with_cache(model, tokens.to(device), names, stop_early=cfg.causal)
                for n in names:
                    h = cache[n].float().cpu()  # (B, T, C)
                    self.n_embd = h.shape[-1]
                    rows = torch.cat([h[j, 1 : len(x) + 1] for j, x in enumerate(chunk)])
                    files[n].write(rows.to(torch.float16).numpy().tobytes())
        finally:
            for f in files.values():
                f.close()

    def load(self, split: str, name: str) -> np.ndarray:
        """(N, C) float16 states of one layer for one split, strings concatenated."""
        return np.fromfile(self.dir / f"{split}.{name}.bin", dtype=np.float16).reshape(
            -1, self.n_embd
        )


# ---- probing a model and a run ------------------------------------------------------------------
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


def probe_model(
    model: nn.Module,
    grammar,
    train,
    test,
    *,
    settings: ProbeSettings = ProbeSettings(),
    levels: Sequence[int] | None = None,
    targets: Sequence[str] = TARGETS,
    batch_size: int = 16,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Probe every layer of `model` for every (target, level): trained on the labelled
    SampleBatch `train`, scored on `test`. Returns {"layers", "keys": [(target, level)],
    "accuracy" (layers, G), "balanced_accuracy" (layers, G), "majority" (G,)}."""
    from cfglab.data.vocab import Vocab

    if grammar.levels is None or train.ancestors is None:
        raise GrammarError(
            f"probing needs a layered grammar (like the cfg3 family) and labelled "
            f"samples; {grammar.name or 'this grammar'} has no levels"
        )
    n_levels = train.ancestors.shape[0]
    levels = list(range(1, n_levels)) if levels is None else list(levels)
    if settings.where == "ends":
        targets = [t for t in targets if t != "boundary"]  # a boundary probe at ends is trivial
    for t in targets:
        if t not in TARGETS:
            raise ConfigError(f"unknown probe target {t!r}; choose from {', '.join(TARGETS)}")
    keys, y_train, n_classes = probe_targets(grammar, train, levels, targets)
    _, y_test, _ = probe_targets(grammar, test, levels, targets)
    w_train = w_test = None
    if settings.where == "ends":  # restricted probes: the level's NT ends only
        w_train = np.stack([train.is_boundary[lev] for _, lev in keys])
        w_test = np.stack([test.is_boundary[lev] for _, lev in keys])
    vocab = Vocab.from_grammar(grammar)
    names = resid_names(model.config.n_layer)
    acc, bal = [], []
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
        for name in names:
            t0 = time.perf_counter()
            probe = fit_probe(
                store.load("train", name),
                train.offsets,
                y_train,
                n_classes,
                where=w_train,
                settings=settings,
                max_len=model.config.block_size,
            )
            scores = score_probe(
                probe, store.load("test", name), test.offsets, y_test, where=w_test
            )
            acc.append(scores["accuracy"])
            bal.append(scores["balanced_accuracy"])
            if log:
                log(
                    f"{name}: "
                    + " ".join(
                        f"{t[0][:3]}{t[1]}={a:.3f}" for t, a in zip(keys, acc[-1], strict=True)
                    )
                    + f" ({time.perf_counter() - t0:.1f} s)"
                )
    return {
        "layers": names,
        "keys": keys,
        "accuracy": np.array(acc),
        "balanced_accuracy": np.array(bal),
        "majority": majority_rate(y_train, y_test, w_train, w_test),
    }


def _tables(
    result: dict, baseline: dict | None, levels: Sequence[int], settings: ProbeSettings
) -> list[dict]:
    """Regroup probe_model's columns into one table per target: rows layers, columns levels."""
    tables = []
    for target in dict.fromkeys(t for t, _ in result["keys"]):
        cols = [i for i, (t, _) in enumerate(result["keys"]) if t == target]
        table = {
            "target": target,
            "window": settings.window,
            "where": settings.where,
            "levels": [result["keys"][i][1] for i in cols],
            "majority": result["majority"][cols].tolist(),
        }
        for metric in ("accuracy", "balanced_accuracy"):
            table[metric] = {"model": result[metric][:, cols].tolist()}
            if baseline is not None:
                table[metric]["random_init"] = baseline[metric][:, cols].tolist()
        tables.append(table)
    return tables


# ---- what every analysis of a run directory does first -----------------------------------------
def load_layered_run(run_dir: Path, needs: str) -> tuple[nn.Module, ExperimentConfig, Grammar]:
    """(model, ExperimentConfig, Grammar) of a run; GrammarError unless the grammar is layered.

    `needs` opens the error message, e.g. "probing needs"."""
    from cfglab.train.checkpoint import load_model

    model, cfg = load_model(run_dir)
    grammar = cfg.grammar.load()
    if grammar.levels is None:
        raise GrammarError(
            f"{needs} a layered grammar (like the cfg3 family); the run's "
            f"grammar {cfg.grammar.name!r} has no levels"
        )
    return model, cfg, grammar


def with_random_init(model: nn.Module, baseline: bool, seed: int) -> dict[str, nn.Module]:
    """{"model": model}, plus "random_init" (an untrained twin built under torch seed `seed`)
    when `baseline`: the chance level of every statistic."""
    from cfglab.model import build_model

    models = {"model": model}
    if baseline:
        torch.manual_seed(seed)
        models["random_init"] = build_model(model.config).eval()
    return models


def run_header(run_dir: Path, cfg: ExperimentConfig, model: nn.Module) -> dict:
    """The keys every analyze/*.json starts with: run, grammar, model shape, objective."""
    return {
        "run": run_dir.name,
        "grammar": cfg.grammar.name,
        "model": {
            k: getattr(model.config, k)
            for k in ("n_layer", "n_head", "n_embd", "position", "causal")
        },
        "objective": cfg.train.objective,
    }


def probe_run(
    run_dir: str | Path,
    *,
    n_train: int = 768,
    n_test: int = 256,
    seed: int = 2,
    windows: Sequence[str] = ("all",),
    settings: ProbeSettings = ProbeSettings(),
    baseline: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Probe a run's model (and a random-init twin) -> run_dir/analyze/probe.json.

    Training strings use sampler seed `seed`, test strings `seed + 1`; the random-init model is
    built with torch seed `seed`. Windows other than "all"/"causal" are restricted probes, scored
    at NT ends (the paper's local probes)."""
    from cfglab.data.sampler import sample

    run_dir = Path(run_dir)
    model, cfg, grammar = load_layered_run(run_dir, "probing needs")
    max_len = model.config.block_size - 2
    t0 = time.perf_counter()
    train = sample(grammar, n_train, seed, max_len=max_len, labels=True)
    test = sample(grammar, n_test, seed + 1, max_len=max_len, labels=True)
    models = with_random_init(model, baseline, seed)
    tables = []
    for window in windows:
        where = "all" if WINDOWS[window](2) is None or window == "causal" else "ends"
        s = ProbeSettings(**{**asdict(settings), "window": window, "where": where})
        results = {}
        for label, m in models.items():
            if log:
                log(f"probing {label} (window {window}, {where} positions)")
            results[label] = probe_model(m, grammar, train, test, settings=s, log=log)
        levels = sorted({lev for _, lev in results["model"]["keys"]})
        for table in _tables(results["model"], results.get("random_init"), levels, s):
            table["settings"] = asdict(s)
            tables.append(table)
    out = {
        **run_header(run_dir, cfg, model),
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "n_test_tokens": int(test.offsets[-1]),
        "layers": resid_names(model.config.n_layer),
        "tables": tables,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = run_dir / "analyze" / "probe.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return path
