"""The estimator of the attention family: position-based and boundary-based statistics of
attention patterns, accumulated string by string (`AttentionStats`), and `attention_model`, which
runs a model on labelled strings and feeds it their patterns (see cfglab.analyze.attention for
what each statistic means and how the family reports them)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor, nn

from cfglab.data.tree import shallowest_end, tree_labels

DELTAS = (-2, -1, 0, 1, 2)  # Result 7: key offsets from an NT end
MAX_RANK = 8  # Result 9: |r| buckets 0..MAX_RANK (larger r pooled into the last)


def adjacent_ends(
    subtree: np.ndarray, is_boundary: np.ndarray, causal: bool
) -> list[tuple[int, list[int]]]:
    """For one level: [(query a, [keys b])] for every NT-end token a with at least one adjacent
    end: the end of the previous subtree (and of the next one unless causal). subtree, is_boundary
    (n,) of that level."""
    ends = np.flatnonzero(is_boundary)
    end_of = {int(subtree[e]): int(e) for e in ends}  # subtree ordinal -> its last token
    out = []
    for a in ends:
        p = int(subtree[a])
        keys = [end_of[q] for q in ((p - 1,) if causal else (p - 1, p + 1)) if q in end_of]
        if keys:
            out.append((int(a), keys))
    return out


class AttentionStats:
    """Accumulates the statistics of the module docstring over strings, layer by layer."""

    def __init__(self, n_layer: int, n_head: int, n_levels: int, max_len: int, causal: bool):
        self.causal = causal
        self.n_levels = n_levels
        self.d0 = max_len - 1  # distance d is stored at index d + d0
        nd = 2 * max_len - 1
        z = np.zeros
        self.dist_sum = z((n_layer, n_head, nd))
        self.dist_count = z(nd)
        self.score_mass: dict[str, np.ndarray] = {}  # pattern -> (n_layer, H)
        self.score_rows: dict[str, float] = {}
        self.score_chance: dict[str, float] = {}
        shape_e = (n_levels, len(DELTAS))
        self.end_sum, self.end_hist = z((n_layer, n_head, *shape_e)), z((*shape_e, nd))
        self.e2e_sum, self.e2e_hist = z((n_layer, n_head, n_levels)), z((n_levels, nd))
        nr = 2 * MAX_RANK + 1
        self.rank_sum, self.rank_hist = z((n_layer, n_head, n_levels, nr)), z((n_levels, nr, nd))

    def _pair_hist(self, n: int, keys: np.ndarray, queries: np.ndarray | None = None) -> np.ndarray:
        """Counts by distance of the allowed pairs (a in queries (default all), b in keys)."""
        a = np.arange(n) if queries is None else queries
        d = (a[:, None] - keys[None, :]).ravel()
        if self.causal:
            d = d[d >= 0]
        return np.bincount(d + self.d0, minlength=len(self.dist_count))

    def add_labels(self, subtree: np.ndarray, is_boundary: np.ndarray, window: int) -> dict:
        """Label-only work for one string (shared by all layers): pair sets, histograms and the
        chance levels. subtree, is_boundary (L, n); window: the length of its input row."""
        n = is_boundary.shape[1]
        d = np.arange(0 if self.causal else -(n - 1), n)
        self.dist_count[d + self.d0] += n - np.abs(d)
        keys = np.arange(n)
        # keys a uniform pattern spreads over: BOS and tokens 0..a (GPT), the window (encoder)
        n_keys = keys + 2 if self.causal else np.full(n, window)
        det: dict[str, tuple[np.ndarray, np.ndarray]] = {  # name -> (rows a, keys b) of pairs
            "current_token": (keys, keys),
            "previous_token": (keys[1:], keys[:-1]),
        }
        for lev in range(1, self.n_levels):
            pairs = adjacent_ends(subtree[lev], is_boundary[lev], self.causal)
            rows = [a for a, bs in pairs for _ in bs]
            det[f"boundary_l{lev}"] = (
                np.array(rows, dtype=np.int64),
                np.array([b for _, bs in pairs for b in bs], np.int64),
            )
        for name, (rows, _) in det.items():
            if name not in self.score_mass:
                self.score_mass[name] = np.zeros(self.dist_sum.shape[:2])
                self.score_rows[name] = self.score_chance[name] = 0.0
            self.score_rows[name] += len(np.unique(rows))
            self.score_chance[name] += float((1.0 / n_keys[rows]).sum())
        sharp = shallowest_end(is_boundary)
        sets = {"end": [], "e2e": [], "rank": []}
        for lev in range(self.n_levels):
            ends = np.flatnonzero(is_boundary[lev])
            for k, delta in enumerate(DELTAS):
                hit = np.zeros(n, dtype=bool)  # keys b with b + delta an end
                src = ends - delta
                hit[src[(src >= 0) & (src < n)]] = True
                kb = np.flatnonzero(hit)
                self.end_hist[lev, k] += self._pair_hist(n, kb)
                sets["end"].append((lev, k, hit))
            self.e2e_hist[lev] += self._pair_hist(n, ends, ends)
            sets["e2e"].append((lev, ends))
            same = np.flatnonzero(sharp == lev)
            if len(same):
                r = subtree[lev][same][:, None] - subtree[lev][same][None, :]  # (m, m) a - b
                r = np.clip(r, -MAX_RANK, MAX_RANK) + MAX_RANK
                dd = same[:, None] - same[None, :]
                ok = dd >= 0 if self.causal else np.ones_like(dd, dtype=bool)
                np.add.at(self.rank_hist[lev], (r[ok], dd[ok] + self.d0), 1)
                sets["rank"].append((lev, same, r, ok))
        return {"n": n, "det": det, "sets": sets}

    def add_pattern(self, layer: int, pattern: Tensor, lab: dict, start: int = 1) -> None:
        """pattern (H, Tw, Tw) of one string's window, its tokens at start..start+n-1."""
        n = lab["n"]
        full = pattern.double().cpu().numpy()
        a = full[:, start : start + n, start : start + n]  # (H, n, n) token-to-token weights
        # position bias: sums along the diagonals d = a - b
        q, k = np.indices((n, n))
        self.dist_sum[layer] += np.stack(
            [
                np.bincount(
                    (q - k).ravel() + self.d0,
                    weights=a[h].ravel(),
                    minlength=self.dist_sum.shape[-1],
                )
                for h in range(a.shape[0])
            ]
        )
        for name, (rows, keys) in lab["det"].items():
            self.score_mass[name][layer] += a[:, rows, keys].sum(1)
        col = a.sum(1)  # (H, n): each key's received mass (allowed pairs only)
        for lev, k, hit in lab["sets"]["end"]:
            self.end_sum[layer, :, lev, k] += col[:, hit].sum(1)
        for lev, ends in lab["sets"]["e2e"]:
            self.e2e_sum[layer, :, lev] += a[:, ends][:, :, ends].sum((1, 2))
        for lev, same, r, ok in lab["sets"]["rank"]:
            block = a[:, same][:, :, same]  # (H, m, m)
            for h in range(a.shape[0]):
                np.add.at(self.rank_sum[layer, h, lev], r[ok], block[h][ok])

    def result(self) -> dict:
        """Means as nested lists (JSON-ready). Residual means are NaN where a set is empty."""
        with np.errstate(invalid="ignore", divide="ignore"):
            abar = self.dist_sum / self.dist_count  # (n_layer, H, nd)
            abar0 = np.nan_to_num(abar)

            def residual(total: np.ndarray, hist: np.ndarray) -> np.ndarray:
                # total (n_layer, H, *S); hist (*S, nd) -> mean B per set
                expected = np.einsum("lhd,...d->lh...", abar0, hist)
                return (total - expected) / hist.sum(-1)

            scores = {k: (m / self.score_rows[k]).tolist() for k, m in self.score_mass.items()}
            chance = {k: self.score_chance[k] / self.score_rows[k] for k in self.score_mass}
            keep = self.dist_count > 0
            return {
                "distances": (np.flatnonzero(keep) - self.d0).tolist(),
                "mean_by_distance": abar[:, :, keep].tolist(),
                "head_scores": scores,
                "chance": chance,
                "end_offset": residual(self.end_sum, self.end_hist).tolist(),
                "end_to_end": residual(self.e2e_sum, self.e2e_hist).tolist(),
                "adjacent_by_rank": residual(self.rank_sum, self.rank_hist).tolist(),
                "deltas": list(DELTAS),
                "ranks": list(range(-MAX_RANK, MAX_RANK + 1)),
            }


def attention_model(
    model: nn.Module,
    grammar,
    batch,
    *,
    batch_size: int = 8,
    n_examples: int = 4,
    example_len: int = 64,
) -> dict:
    """The statistics of the module docstring for `model` on the labelled SampleBatch `batch`,
    plus example maps: the first string's first `example_len` tokens for the `n_examples` heads
    with the highest boundary score, with the labels to draw the tree's boundaries. Levels are
    the tree's depths (cfglab.analyze.targets.tree_labels): a layered grammar's levels."""
    from cfglab.analyze.states import string_windows
    from cfglab.data.vocab import Vocab
    from cfglab.model.hooks import run_with_cache

    cfg = model.config
    vocab = Vocab.from_grammar(grammar)
    tl = tree_labels(grammar, batch)
    stats = AttentionStats(cfg.n_layer, cfg.n_head, tl.n_levels, cfg.block_size, cfg.causal)
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(cfg.n_layer)]
    strings = batch.strings()
    off = batch.offsets
    first: Tensor | None = None
    device = next(model.parameters()).device
    for s0 in range(0, len(strings), batch_size):
        chunk = strings[s0 : s0 + batch_size]
        tokens = string_windows(
            chunk, eos=vocab.eos, pad=vocab.pad, block_size=cfg.block_size, causal=cfg.causal
        )
        _, cache = run_with_cache(model, tokens.to(device), names)
        for j in range(len(chunk)):
            lo, hi = off[s0 + j], off[s0 + j + 1]
            lab = stats.add_labels(tl.subtree[:, lo:hi], tl.is_boundary[:, lo:hi], tokens.shape[1])
            for layer, name in enumerate(names):
                stats.add_pattern(layer, cache[name][j], lab)
        if first is None:
            m = min(example_len, len(chunk[0]))
            first = torch.stack([cache[n][0, :, 1 : m + 1, 1 : m + 1] for n in names])  # (l,H,m,m)
    out = stats.result()
    scores = [out["head_scores"][f"boundary_l{lev}"] for lev in range(1, tl.n_levels)]
    with warnings.catch_warnings():  # a head with no boundary pair at any level: NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        boundary = (
            np.nanmax(scores, axis=0) if scores else np.full((cfg.n_layer, cfg.n_head), np.nan)
        )
    # boundary (n_layer, H): each head's best level
    top = np.argsort(np.nan_to_num(boundary, nan=-1.0), axis=None)[::-1][:n_examples]
    m = first.shape[-1]
    out["example"] = {
        "tokens": strings[0][:m].tolist(),
        "is_boundary": tl.is_boundary[:, :m].astype(int).tolist(),
        "subtree": tl.subtree[:, :m].tolist(),
        "maps": [
            {
                "layer": int(i // cfg.n_head),
                "head": int(i % cfg.n_head),
                "boundary_score": float(boundary.flat[i]),
                "pattern": np.round(first[i // cfg.n_head, i % cfg.n_head].numpy(), 4).tolist(),
            }
            for i in top
        ],
    }
    return out
