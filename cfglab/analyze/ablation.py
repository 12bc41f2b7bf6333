"""Head ablation: which attention heads does the model need, and for which rows? (the
interventions family's third part)

Each head's output (blocks.{L}.attn.hook_z[:, :, h, :], what the output projection receives) is
replaced at every position by its mean over the fit strings' positions (BOS and tokens): mean
ablation, which keeps the head's average contribution and removes only what varies with the
input (zero ablation would also shift every later layer's input off its usual range). The
effect is the rise of each next-token row's KL to the exact distribution over the clean model's
(cfglab.analyze.kl_rows), pooled by row group, so a head that carries the level-l boundary (the
attention family's boundary heads) should raise the KL of the rows after a level-l NT end most.
Models without per-head outputs (lstm, ssm) have no heads to ablate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from cfglab.analyze.kl_rows import ScoredStrings, pooled, row_kls
from cfglab.analyze.states import string_windows
from cfglab.grammar.cfg import Grammar


def z_names(model: nn.Module) -> list[str]:
    """The per-head output hooks of the model, in layer order ([] without attention)."""
    from cfglab.model.hooks import hook_names

    return [n for n in hook_names(model) if n.endswith("attn.hook_z")]


def head_means(model: nn.Module, grammar: Grammar, batch, names: list[str]) -> dict[str, Tensor]:
    """{hook name: (H, D) mean of hook_z over the real positions (BOS, x_1..x_n) of `batch`}."""
    from cfglab.data.vocab import Vocab
    from cfglab.model.hooks import run_with_cache

    vocab = Vocab.from_grammar(grammar)
    strings = batch.strings()
    sums: dict[str, Tensor] = {}
    count = 0
    for start in range(0, len(strings), 64):
        chunk = strings[start : start + 64]
        tokens = string_windows(
            chunk, eos=vocab.eos, pad=vocab.pad, block_size=model.config.block_size, causal=True
        ).to(next(model.parameters()).device)
        real = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)  # (B, T)
        for j, x in enumerate(chunk):
            real[j, : len(x) + 1] = True
        _, cache = run_with_cache(model, tokens, names)
        for n in names:
            z = cache[n].double()  # (B, T, H, D)
            sums[n] = sums.get(n, 0) + z[real].sum(0)  # (H, D)
        count += int(real.sum())
    return {n: (s / count) for n, s in sums.items()}


def mean_hook(mean: Tensor, head: int) -> Callable[[Tensor, object], Tensor]:
    """A writable hook on hook_z setting head `head` to its mean (D,) at every position."""

    def fn(z: Tensor, hook) -> Tensor:  # z (B, T, H, D)
        out = z.clone()
        out[:, :, head, :] = mean[head].to(z.device, z.dtype)
        return out

    return fn


def ablate_heads(
    model: nn.Module,
    grammar: Grammar,
    fit,
    scored: ScoredStrings,
    *,
    weights: np.ndarray,
    log: Callable[[str], None],
) -> dict:
    """{"layers": [hook names], "n_head", "kl_rise": [[pooled rises by group per head] per
    layer]}; None-free: a model without hook_z gives no layers."""
    names = z_names(model)
    means = head_means(model, grammar, fit, names) if names else {}
    table = []
    for name in names:
        row = []
        for h in range(means[name].shape[0]):
            fn = mean_hook(means[name], h)
            rise = row_kls(model, scored, lambda rows, n=name, f=fn: [(n, f)]) - scored.clean
            row.append(pooled(rise, scored, weights))
        table.append(row)
        log(f"ablate {name}: KL +" + " +".join(f"{c['all']['mean']:.4f}" for c in row))
    return {"layers": names, "n_head": len(table[0]) if table else 0, "kl_rise": table}
