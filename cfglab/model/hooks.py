"""Activation hooks with TransformerLens names: read activations (probes, attention analysis) or
replace them (interventions, activation patching).

A `HookPoint` is an identity module placed where an activation is worth reading; its name is its
path in `model.named_modules()`, e.g. `blocks.3.hook_resid_post` or `blocks.0.attn.hook_pattern`
(the names TransformerLens uses), and `hook.name` holds it. Three entry points, all of which
remove their hooks in `finally`:
    run_with_cache(model, tokens, names)         -> (logits, {name: activation}); caches only the
        names asked for, and can stop the forward pass once the last of them is cached, so
        probing one layer at a time costs a partial forward pass and one activation's memory
    run_with_hooks(model, tokens, fwd_hooks)     -> logits, with fwd_hooks = [(name, fn), ...];
        fn(activation, hook) may return a tensor of the same shape, which REPLACES the
        activation downstream (None leaves it), as in TransformerLens
    using_hooks(model, fwd_hooks)                a context manager for several forward calls
        (generation with a KV cache: each call's new positions pass through the hooks)

Names in cfglab's GPT (shapes for a batch (B, T); H heads of D dims, C = H * D):
    hook_embed                         (B, T, C)      token embedding (before positions)
    blocks.{i}.hook_resid_pre          (B, T, C)      residual stream entering block i
    blocks.{i}.attn.hook_q             (B, T, H, D)   queries right after W_q, before the q/k
    blocks.{i}.attn.hook_k             (B, T, H, D)   transform (rot's rotation) and any logit term
    blocks.{i}.attn.hook_v             (B, T, H, D)   values right after W_v
    blocks.{i}.attn.hook_attn_scores   (B, H, T, Tk)  attention logits: scaled q.k + the variant's
                                                      term, -inf where masked
    blocks.{i}.attn.hook_pattern       (B, H, T, Tk)  attention weights (rows sum to 1)
    blocks.{i}.attn.hook_z             (B, T, H, D)   each head's output (pattern @ v), the
                                                      input of the output projection c_proj
    blocks.{i}.hook_attn_out           (B, T, C)      attention output added to the residual
    blocks.{i}.hook_resid_mid          (B, T, C)      residual after attention
    blocks.{i}.mlp.hook_pre            (B, T, 4C)     MLP pre-activation (c_fc output)
    blocks.{i}.mlp.hook_post           (B, T, 4C)     MLP neurons after GELU (c_proj input)
    blocks.{i}.hook_mlp_out            (B, T, C)      MLP output added to the residual
    blocks.{i}.hook_resid_post         (B, T, C)      residual leaving block i
    ln_final.hook_normalized           (B, T, C)      final LayerNorm's (x - mean) / std, before its
                                                      weight and bias (as in TransformerLens)
With Canon layers (model.canon), each present site's output, in forward order:
    blocks.{i}.hook_canon_a            (B, T, C)      Canon A: ln_1 output mixed, attention's input
    blocks.{i}.hook_canon_b            (B, T, 3C)     Canon B: q, k, v side by side (v alone, (B, T,
                                                      C), for pos and uni); hook_q/k/v see its parts
    blocks.{i}.hook_canon_c            (B, T, C)      Canon C: ln_2's output mixed, the MLP's input
    blocks.{i}.hook_canon_d            (B, T, 4C)     Canon D: what GELU receives (mlp.hook_pre is
                                                      c_fc's output before it)
Other families (cfglab.model.families) share hook_embed, blocks.{i}.hook_resid_post and
ln_final.hook_normalized: lstm's hook_resid_post is each LSTM layer's output (no residual); ssm
also has blocks.{i}.hook_resid_pre and blocks.{i}.hook_mixer_out.
Tk is the number of keys: T, or cached + T with a KV cache. With a cache, hook_q/k/v see only
the T new positions (as in TransformerLens): the cache keeps what the hooks returned, so a
patch applied at every call of a generation equals the same patch on one full forward pass.
The position-only variants (`pos`, `uni`: no W_q, W_k) have no hook_q and hook_k.
TransformerLens names cfglab lacks: ln1/ln2/ln_final.hook_scale and ln1/ln2.hook_normalized
(cfglab uses torch's fused LayerNorm inside the blocks), attn.hook_result and the optional
hook_attn_in, hook_q/k/v_input, hook_mlp_in (off by default in TransformerLens too), and
hook_pos_embed.
For `rel`, hook_q/k hold the tokens' q, k (in q.k and in DeBERTa's c2p and p2c terms); the
relative table's own projections through W_q, W_k are not hooked.
Hooking hook_attn_scores or hook_pattern switches that layer to the manual attention path (SDPA
does not expose them; the numbers are the same); every other hook keeps the SDPA path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from cfglab.errors import ConfigError


class HookPoint(nn.Module):
    """Identity; a named place for forward hooks. `name` is its path in the model (set by
    `hook_points`, which the model's constructor calls)."""

    name: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        return x

    @property
    def is_active(self) -> bool:
        """True while some hook is registered (the attention then exposes its pattern)."""
        return bool(self._forward_hooks)


# fn(activation, hook) -> a replacement activation, or None to leave it as it is
HookFn = Callable[[Tensor, HookPoint], Tensor | None]


class _StopForward(Exception):
    """Raised by a hook once every requested activation is cached (ends the pass early)."""


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """{name: HookPoint} of `model` in forward order; sets each point's `name`."""
    points = {}
    for name, module in model.named_modules():
        if isinstance(module, HookPoint):
            module.name = name
            points[name] = module
    return points


def hook_names(model: nn.Module) -> list[str]:
    """Every HookPoint name of `model`, in forward order."""
    return list(hook_points(model))


def _check_names(points: dict[str, HookPoint], names: Iterable[str]) -> None:
    unknown = [n for n in dict.fromkeys(names) if n not in points]
    if unknown:
        sample = ", ".join(list(points)[:12])
        raise ConfigError(
            f"unknown hook name(s) {', '.join(unknown)}; names look like "
            f"{sample}, ... (cfglab.model.hooks.hook_names(model) lists all)"
        )


@contextmanager
def using_hooks(model: nn.Module, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Within the block, every forward call runs fwd_hooks = [(name, fn), ...] (in list order
    where several share a name: each fn gets what the previous one returned). fn(activation,
    hook) returning a tensor replaces the activation downstream. Removed on exit, exceptions
    included. An unknown name is a ConfigError listing names, raised before anything runs."""
    points = hook_points(model)
    _check_names(points, (name for name, _ in fwd_hooks))

    def wrap(fn: HookFn):
        # torch's forward-hook protocol: a non-None return value replaces the module's output
        return lambda module, args, output: fn(output, module)

    handles = []
    try:
        for name, fn in fwd_hooks:
            handles.append(points[name].register_forward_hook(wrap(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


def run_with_hooks(
    model: nn.Module, tokens: Tensor, fwd_hooks: Sequence[tuple[str, HookFn]], **kwargs
) -> Tensor:
    """`model(tokens, **kwargs)` with fwd_hooks = [(name, fn), ...] registered for this call
    (see `using_hooks`): returns the logits. Gradients flow as usual (wrap the call in
    torch.no_grad() when none are needed); eval mode is the caller's choice, as for model()."""
    with using_hooks(model, fwd_hooks):
        return model(tokens, **kwargs)


def run_with_cache(
    model: nn.Module,
    tokens: Tensor,
    names: Iterable[str],
    *,
    stop_early: bool = False,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    **kwargs,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Run `model(tokens, **kwargs)` without gradients and return (logits, {name: activation}).

    Only `names` are cached (detached). With `stop_early=True` the pass stops as soon as the
    last requested activation is cached and logits is None: caching `blocks.0.hook_resid_post`
    of a 12-layer model then runs one block. `fwd_hooks` run first, so what is cached is what
    flows downstream of them (a patched activation is cached patched). An unknown name is a
    ConfigError listing names.
    """
    wanted = list(dict.fromkeys(names))
    cache: dict[str, Tensor] = {}

    def save(activation: Tensor, hook: HookPoint) -> None:
        cache[hook.name] = activation.detach()
        if stop_early and len(cache) == len(wanted):
            raise _StopForward

    logits = None
    try:
        with torch.no_grad(), using_hooks(model, [*fwd_hooks, *((n, save) for n in wanted)]):
            logits = model(tokens, **kwargs)
    except _StopForward:
        pass
    return logits, cache
