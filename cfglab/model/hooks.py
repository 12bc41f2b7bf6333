"""Activation hooks with TransformerLens names: what probes and attention analysis read.

A `HookPoint` is an identity module placed where an activation is worth reading; its name is its
path in `model.named_modules()`, e.g. `blocks.3.hook_resid_post` or `blocks.0.attn.hook_pattern`
(the names TransformerLens uses). `run_with_cache` caches only the names asked for, removes its
hooks in `finally`, and can stop the forward pass once the last of them is cached, so probing
one layer at a time costs a partial forward pass and the memory of one activation.

Names in cfglab's GPT (shapes for a batch (B, T)):
    hook_embed                           (B, T, C) token embedding (before positions)
    blocks.{i}.hook_resid_pre            (B, T, C) residual stream entering block i
    blocks.{i}.attn.hook_scores          (B, H, T, T) attention logits, -inf where masked
    blocks.{i}.attn.hook_pattern         (B, H, T, T) attention weights (rows sum to 1)
    blocks.{i}.hook_attn_out             (B, T, C) attention output added to the residual
    blocks.{i}.hook_resid_mid            (B, T, C) residual after attention
    blocks.{i}.hook_mlp_out              (B, T, C) MLP output added to the residual
    blocks.{i}.hook_resid_post           (B, T, C) residual leaving block i
    ln_final.hook_normalized             (B, T, C) final LayerNorm output (the unembedding input)
Asking for a pattern or scores switches that layer to the manual attention path (SDPA does not
expose the pattern); the numbers are the same.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from cfglab.errors import ConfigError


class HookPoint(nn.Module):
    """Identity; a named place for forward hooks."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    @property
    def is_active(self) -> bool:
        """True while some hook is registered (the attention then exposes its pattern)."""
        return bool(self._forward_hooks)


class _StopForward(Exception):
    """Raised by a hook once every requested activation is cached (ends the pass early)."""


def hook_names(model: nn.Module) -> list[str]:
    """Every HookPoint name of `model`, in forward order."""
    return [name for name, m in model.named_modules() if isinstance(m, HookPoint)]


def run_with_cache(
    model: nn.Module, tokens: Tensor, names: Iterable[str], *, stop_early: bool = False
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Run `model(tokens)` without gradients and return (logits, {name: activation}).

    Only `names` are cached (detached). With `stop_early=True` the pass stops as soon as the
    last requested activation is cached and logits is None: caching `blocks.0.hook_resid_post`
    of a 12-layer model then runs one block. An unknown name is a ConfigError listing names.
    """
    wanted = list(dict.fromkeys(names))
    points = {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}
    unknown = [n for n in wanted if n not in points]
    if unknown:
        sample = ", ".join(list(points)[:12])
        raise ConfigError(
            f"unknown hook name(s) {', '.join(unknown)}; names look like "
            f"{sample}, ... (cfglab.model.hooks.hook_names(model) lists all)"
        )
    cache: dict[str, Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            cache[name] = output.detach()
            if stop_early and len(cache) == len(wanted):
                raise _StopForward

        return hook

    handles = [points[n].register_forward_hook(make_hook(n)) for n in wanted]
    logits = None
    try:
        with torch.no_grad():
            logits = model(tokens)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return logits, cache
