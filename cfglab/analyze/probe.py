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
GPU; the CPU defaults (cfglab.config.ProbeConfig) are H = 4, d' = 32, 600 steps of 16 strings, each
step's loss taken on 64 random positions per string (an unbiased estimate of the full loss at a
cost of 64*T instead of T^2), inputs standardised, the read-out started at the ridge solution.

Which targets are probed, on which strings, and the tables: cfglab.analyze.probe_tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfglab.config import PROBE_WINDOWS, ProbeConfig
from cfglab.config.schema import registry
from cfglab.errors import ConfigError


def _window_band(width: int) -> Callable[[int], Tensor]:
    def window(t: int) -> Tensor:
        pos = torch.arange(t)
        return (pos[:, None] - pos[None, :]).abs() <= width

    return window


# Which keys k position i may read: name -> T -> (T, T) bool [query i, key k], None = all.
WINDOWS: dict[str, Callable[[int], Tensor | None]] = registry(
    PROBE_WINDOWS,
    {
        "all": lambda t: None,  # the paper's probe: every position (None skips the masking pass)
        "causal": lambda t: torch.ones(t, t, dtype=torch.bool).tril(),  # k <= i: what was read
        "diagonal": _window_band(0),  # k = i: the information sits at the token itself
        "tridiagonal": _window_band(1),  # |i - k| <= 1: "near the ending position +-1"
    },
    "analyze.probe.WINDOWS",
)

# Where a window's probe is trained and scored: every token, or only the probed level's NT
# ends (the paper's restricted probes read the information "near the ending position +-1").
SCORED_AT: dict[str, str] = {
    "all": "all",
    "causal": "all",
    "diagonal": "ends",
    "tridiagonal": "ends",
}


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
        n_heads: int = ProbeConfig.n_heads,  # the defaults are the config's (one source)
        d_probe: int = ProbeConfig.d_probe,
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
        # every probe head's read-out in one (B*T, C) @ (C, G*H*K) product
        read = self.read.permute(1, 0, 2, 3).reshape(c, n_probes * n_heads * n_max)
        feats = (h * is_real[..., None]).reshape(b * t, c) @ read
        feats = feats.view(b, t, n_probes, n_heads, n_max).permute(2, 3, 1, 0, 4)  # (G,H,T,B,K)
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
    starting point changes, not the probe. Computed on the probe's device; probes trained on
    the same tokens (where None) share one Gram matrix and one solve."""
    rng = np.random.default_rng(0)
    n, c = feats.shape
    n_heads = probe.read.shape[2]
    dev = probe.read.device
    groups = (
        [list(range(len(n_classes)))] if where is None else [[g] for g in range(len(n_classes))]
    )
    for group in groups:
        rows = np.arange(n) if where is None else np.flatnonzero(where[group[0]])
        if len(rows) > n_max:
            rows = rng.choice(rows, n_max, replace=False)
        if len(rows) == 0:
            continue
        x = torch.from_numpy(feats[rows]).to(dev, torch.float64)
        x = (x - probe.shift.double()) / probe.scale.double()  # (M, C)
        ys = [
            F.one_hot(torch.from_numpy(labels[g, rows]).to(dev), n_classes[g]).double()
            for g in group
        ]
        y = torch.cat(ys, dim=1)  # (M, sum of the group's K)
        mu_x, mu_y = x.mean(0), y.mean(0)
        xc = x - mu_x
        gram = xc.T @ xc + 1e-3 * len(rows) * torch.eye(c, dtype=torch.float64, device=dev)
        w = torch.linalg.solve(gram, xc.T @ (y - mu_y))  # (C, sum K)
        b = mu_y - mu_x @ w
        col = 0
        for g in group:
            k = n_classes[g]
            probe.read[g, :, :, :k] = (w[:, col : col + k] / n_heads).float()[:, None, :]
            probe.bias[g, :k] = b[col : col + k].float()
            col += k


def fit_probe(
    feats: np.ndarray,
    offsets: np.ndarray,
    labels: np.ndarray,
    n_classes: Sequence[int],
    *,
    settings: ProbeConfig,
    window: str = "all",
    where: np.ndarray | None = None,
    max_len: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> MultiHeadProbe:
    """Train G probes on one layer's states of a set of strings (on `device`).

    feats (N, C) hidden states of all tokens, strings concatenated; offsets (S+1,) string starts;
    labels (G, N) int class per token and probe; n_classes (G,); where (G, N) bool: the tokens
    each probe is trained on (None: all). settings: size and training (ProbeConfig); window: a
    key of WINDOWS; max_len: the longest string the probe will ever read (default: the longest
    here); seed: its initialisation and batches; device: where it trains (the model's)."""
    n_probes, n = labels.shape
    if feats.shape[0] != n or offsets[-1] != n:
        raise ValueError(
            f"feats {feats.shape}, labels {labels.shape} and offsets end "
            f"{offsets[-1]} disagree on the number of tokens"
        )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    longest = int(np.diff(offsets).max())
    probe = MultiHeadProbe(
        feats.shape[1],
        n_classes,
        n_heads=settings.n_heads,
        d_probe=settings.d_probe,
        max_len=max(max_len or 0, longest),
        window=window,
    )
    sample = feats[np.random.default_rng(0).choice(n, min(n, 100_000), replace=False)]
    sample = sample.astype(np.float64)
    probe.shift.copy_(torch.from_numpy(sample.mean(0)))
    probe.scale.copy_(torch.from_numpy(sample.std(0) + 1e-6))
    probe.to(device)
    _warm_start(probe, feats, labels, n_classes, where)
    opt = torch.optim.AdamW(
        probe.parameters(), lr=settings.lr, betas=(0.9, 0.98), weight_decay=settings.weight_decay
    )
    batches: list[np.ndarray] = []
    for _ in range(settings.steps):
        if not batches:  # a new epoch over the training strings
            batches = _length_buckets(np.diff(offsets), settings.batch_size, rng)
        idx = batches.pop()
        h, y, lengths = (t.to(device) for t in _batch(feats, offsets, labels, where, idx))
        queries = None
        if h.shape[1] > settings.n_queries:  # a random subset of positions (cost Q*T, not T^2)
            queries = torch.from_numpy(
                np.sort(rng.choice(h.shape[1], settings.n_queries, replace=False))
            ).to(device)
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
        pred = probe(h.to(probe.read.device), lengths.to(probe.read.device)).argmax(-1).cpu()
        is_real = torch.arange(h.shape[1])[None, :] < lengths[:, None]  # (B, T)
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


def per_string_counts(
    pred: np.ndarray, labels: np.ndarray, offsets: np.ndarray, where: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per test string: correct predictions and scored tokens, (G, S) each, for resampling
    strings (the emergence step's bootstrap interval): a string's tokens are not independent
    draws, the strings are."""
    scored = np.ones_like(labels, dtype=bool) if where is None else where.astype(bool)
    hit = (pred == labels) & scored
    starts = np.asarray(offsets[:-1])
    return {
        "correct": np.add.reduceat(hit, starts, axis=1).astype(np.int64),
        "tokens": np.add.reduceat(scored, starts, axis=1).astype(np.int64),
    }


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
