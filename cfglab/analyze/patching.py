"""Activation patching: where, layer by layer and position by position, does the model carry
what a subtree tells about the next token? (the interventions family's second part)

Pairs (`find_pairs`): two true strings from a pool of fresh labelled strings that share the
prefix x_1..x_s and each have a level-l node spanning exactly x_{s+1}..x_e, with different
yields there (another NT of the level, or another expansion); after x_e they continue as each
was sampled, so both are true strings. Only pairs whose exact next-token distributions after
x_e differ (total variation >= MIN_TV) are kept: for the others the grammar itself says the
subtree does not matter for the next token (a CFG's future depends on the NT, not its yield),
and the measure below is 0 / 0. At most `n_pairs` per level, in random order (stream (seed,
"intervene_pairs")).

Patching (`patch_pairs`): run the target string, but at one layer's residual stream
(blocks.{L}.hook_resid_post) and one position e + d (d = offset from the NT end, -window+1..0)
replace the activation with the source string's. Row e (the prediction right after the NT, read
at position e) is compared with the *source's* exact next-token distribution p*:

    recovered(L, d) = sum over pairs [KL(p* || q_clean) - KL(p* || q_patched)]
                      / sum over pairs [KL(p* || q_clean) - KL(p* || q_source)]

q_clean: the target run's row e, q_source: the source run's, q_patched: the patched run's (KL as
cfglab.analyze.kl_rows). 0: the patch moved nothing towards the source; 1: as far as running the
source itself does (patching every position at one layer gives exactly 1, patching none 0).
The yardstick is the model's own reach, not KL(p* || q_clean) alone, so a model that predicts
the source imperfectly can still score 1 where all of its information flows. Positions at or
before x_s hold the shared prefix (equal activations): their cells are 0 by construction. A cell
can be negative: one patched cell inside the span makes a state that is neither string's (the
target's other tokens with one of the source's), which may move the prediction away from both.
The ratio of sums weighs each pair by how much it can move (None where that is <= 0: nothing to
recover); the interval is a 95% bootstrap over pairs.

Heads: the same measure with one head's output patched instead of a residual-stream cell: the
source's blocks.{L}.attn.hook_z[:, e, h, :] (what the output projection receives from head h) at
the NT's last position e. A head whose output at e carries what the subtree tells scores near 1
at the last layer it matters; a head the output projection ignores scores exactly 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cfglab.analyze.kl_rows import (
    HookMaker,
    model_rows,
    no_hooks,
    ratio,
    resample_weights,
    smoothed_kl,
)
from cfglab.analyze.states import resid_names, string_windows
from cfglab.grammar.cfg import Grammar

MIN_TV = 0.05  # pairs whose exact rows after the NT differ less (total variation) are dropped
PER_KEY = 4  # pairs drawn per (level, prefix, span): keeps one frequent span from crowding out


@dataclass
class Pairs:
    """P (target, source) string pairs; the NT spans x_{s+1}..x_e (model positions s+1..e)."""

    target: list[np.ndarray]
    source: list[np.ndarray]
    start: np.ndarray  # (P,) s
    end: np.ndarray  # (P,) e
    level: np.ndarray  # (P,) the node's level (depth below the root)
    same_nt: np.ndarray  # (P,) bool: the two nodes have the same NT (another expansion)
    exact: np.ndarray  # (P, S) the source's exact next-symbol row e

    def __len__(self) -> int:
        return len(self.target)


def _candidates(batch, gen: np.random.Generator) -> list[tuple[int, int, int, int, int, bool]]:
    """(level, target, source, s, e, same NT) of every string pair that shares a prefix and a
    node span at one level with different yields (at most PER_KEY per key), shuffled."""
    strings, spans = batch.strings(), batch.spans
    depth = np.split(batch.span_depth, batch.span_offsets[1:-1])
    nodes = defaultdict(list)  # (level, s, e, prefix) -> [(string, nt, yield)]
    for i, (x, rows, lev) in enumerate(zip(strings, spans, depth, strict=True)):
        for (nt, s, e), d in zip(rows.tolist(), lev.tolist(), strict=True):
            if d >= 1:
                nodes[(d, s, e, x[:s].tobytes())].append((i, nt, x[s:e].tobytes()))
    out = []
    for (d, s, e, _), found in nodes.items():
        if len(found) < 2:
            continue
        order = gen.permutation(len(found))
        picked = 0
        for a, b in zip(order[:-1], order[1:], strict=True):
            (i, nt_i, y_i), (j, nt_j, y_j) = found[a], found[b]
            if y_i != y_j and picked < PER_KEY:
                out.append((d, i, j, s, e, nt_i == nt_j))
                picked += 1
    return [out[k] for k in gen.permutation(len(out))]


def find_pairs(grammar: Grammar, batch, n_pairs: int, gen: np.random.Generator) -> Pairs:
    """Up to n_pairs pairs per level from a labelled pool (module docstring)."""
    from cfglab.exact.inside import next_token_dist

    strings = batch.strings()
    found = _candidates(batch, gen)
    used = sorted({k for c in found for k in c[1:3]})
    rows = dict(zip(used, next_token_dist(grammar, [strings[k] for k in used]), strict=True))
    taken: dict[int, int] = defaultdict(int)
    keep = []
    for d, i, j, s, e, same in found:
        tv = 0.5 * np.abs(rows[i][e] - rows[j][e]).sum()
        if taken[d] < n_pairs and tv >= MIN_TV:
            keep.append((d, i, j, s, e, same))
            taken[d] += 1
    keep.sort()  # by level, then strings: a stable order for the tables
    return Pairs(
        target=[strings[c[1]] for c in keep],
        source=[strings[c[2]] for c in keep],
        start=np.array([c[3] for c in keep], dtype=np.int64),
        end=np.array([c[4] for c in keep], dtype=np.int64),
        level=np.array([c[0] for c in keep], dtype=np.int64),
        same_nt=np.array([c[5] for c in keep], dtype=bool),
        exact=np.array([rows[c[2]][c[4]] for c in keep]).reshape(len(keep), -1),
    )


def _inputs(model: nn.Module, grammar: Grammar, pairs: Pairs):
    """(target tokens, source tokens), each (P, T) on the model's device."""
    from cfglab.data.vocab import Vocab

    vocab = Vocab.from_grammar(grammar)
    device = next(model.parameters()).device
    block = model.config.block_size
    return tuple(
        string_windows(xs, eos=vocab.eos, pad=vocab.pad, block_size=block, causal=True).to(device)
        for xs in (pairs.target, pairs.source)
    )


def patch_hooks(name: str, source: Tensor, positions: np.ndarray, head: int | None = None):
    """Hooks (for model_rows) replacing layer `name`'s activation at positions[b] (P, k) of
    batch row b (-1: none) with the source run's activation there, source (P, T, C); with
    `head`, only that head's slice of a per-head activation (hook_z: source (P, T, H, D))."""
    part_index = slice(None) if head is None else head

    def make(rows: slice) -> list:
        part = positions[rows]  # (b, k)
        b, k = np.nonzero(part >= 0)
        local = torch.as_tensor(b)
        at = torch.as_tensor(part[b, k])

        def fn(act: Tensor, hook) -> Tensor:  # act (b, T, C) or (b, T, H, D)
            out = act.clone()
            i, t = local.to(act.device), at.to(act.device)
            out[i, t, part_index] = source[i + rows.start, t, part_index].to(act.dtype)
            return out

        return [(name, fn)]

    return make


def pair_kls(model: nn.Module, tokens: Tensor, pairs: Pairs, hooks: HookMaker = no_hooks):
    """(P,) KL(source exact row e || the model's row e of `tokens` under hooks)."""
    t = pairs.exact.shape[1] - 1
    q = model_rows(model, tokens, np.arange(len(pairs)), pairs.end, hooks, t)
    return smoothed_kl(pairs.exact, q)


def patch_pairs(
    model: nn.Module,
    grammar: Grammar,
    pairs: Pairs,
    *,
    window: int,
    n_boot: int,
    seed: int,
) -> dict:
    """recovered(L, d) per level ("all" too) -> {"layers", "offsets", "levels", "n_pairs",
    "same_nt", "kl_clean", "kl_source", "recovered": {level: [[cell per offset] per layer]},
    "head_layers", "heads": {level: [[cell per head] per layer]}} with cells {mean, lo, hi, n}
    (module docstring); heads: one head's hook_z patched at the NT end (offset 0), empty for a
    model without per-head outputs."""
    from cfglab.analyze.ablation import z_names
    from cfglab.model.hooks import run_with_cache

    names, z_layers = resid_names(model.config.n_layer), z_names(model)
    offsets = list(range(-(window - 1), 1))
    target, source = _inputs(model, grammar, pairs)
    _, cache = run_with_cache(model, source, names + z_layers)  # (P, T, C), (P, T, H, D)
    kl_clean = pair_kls(model, target, pairs)
    kl_source = pair_kls(model, source, pairs)
    gain = {}  # (layer, offset) -> (P,) KL(p* || q_clean) - KL(p* || q_patched)
    for layer, name in enumerate(names):
        for d in offsets:
            at = np.where(pairs.end + d >= 1, pairs.end + d, -1)  # position 0 (BOS) is shared
            hooks = patch_hooks(name, cache[name], at[:, None])
            gain[layer, d] = kl_clean - pair_kls(model, target, pairs, hooks)
    head_gain = {}  # (layer, head) -> (P,), the same with one head's output at the NT end
    for layer, name in enumerate(z_layers):
        for h in range(cache[name].shape[2]):
            hooks = patch_hooks(name, cache[name], pairs.end[:, None], head=h)
            head_gain[layer, h] = kl_clean - pair_kls(model, target, pairs, hooks)
    levels = sorted(set(pairs.level.tolist()))
    out = {"layers": names, "offsets": offsets, "levels": levels, "head_layers": z_layers}
    out.update(recovered={}, heads={}, n_pairs={}, same_nt={}, kl_clean={}, kl_source={})
    n_heads = cache[z_layers[0]].shape[2] if z_layers else 0
    for level in ["all", *levels]:
        sel = np.ones(len(pairs), bool) if level == "all" else pairs.level == level
        w = resample_weights(int(sel.sum()), n_boot, seed)
        den = (kl_clean - kl_source)[sel]
        key = str(level)
        out["recovered"][key] = [
            [ratio(gain[layer, d][sel], den, w) for d in offsets] for layer in range(len(names))
        ]
        out["heads"][key] = [
            [ratio(head_gain[layer, h][sel], den, w) for h in range(n_heads)]
            for layer in range(len(z_layers))
        ]
        out["n_pairs"][key] = int(sel.sum())
        out["same_nt"][key] = float(pairs.same_nt[sel].mean())
        out["kl_clean"][key] = float(kl_clean[sel].mean())
        out["kl_source"][key] = float(kl_source[sel].mean())
    return out
