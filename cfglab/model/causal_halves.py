"""Causal self-attention on CPU as two query halves: 3/4 of the work of one SDPA call.

PyTorch's CPU flash kernel computes keys in 512-wide blocks: up to T = 512 a causal call does the
whole T x T square and masks half of it. Two half-length query blocks (the first half causal over
the first half of the keys, the second over all keys with a lower-right causal mask) compute 3/4
of the square. `python -m benchmarks model` times both forms, fwd + bwd, B=4 H=4 D=32, 2 threads:
1.15x at T=384, 448 and 512, 1.05x at 576, 1.02x at 640; 0.96x at 256 and 320 (the halves'
smaller query blocks cost more than the skipped work), 0.93x at 768 (the kernel skips key blocks).
Kept only while that benchmark shows it pays. GPU flash kernels skip masked blocks themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SPLIT_MIN_T, SPLIT_MAX_T = 384, 640


def split_causal(q: Tensor, T: int, Tk: int, dropout_p: float) -> bool:
    """Whether causal self-attention of T queries over T keys runs faster in two query halves:
    on CPU only, without attention dropout (kept to one SDPA call, whose dropout is the tested
    one)."""
    return q.device.type == "cpu" and T == Tk and SPLIT_MIN_T <= T <= SPLIT_MAX_T and not dropout_p


def causal_sdpa_in_halves(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float
) -> Tensor:
    """Causal SDPA of q, k, v (B, H, T, D) as two query halves, without the masked keys of the
    first half. mask: None for plain causal attention, or an additive (.., T, T) mask that
    already holds -inf above the diagonal (alibi)."""
    T = q.shape[2]
    h = T // 2
    if mask is None:  # the second half: query h + i sees keys 0 .. h + i
        pos = torch.arange(T, device=q.device)
        future = pos[None, :] > pos[h:, None]  # (T - h, T)
        bottom_mask = torch.zeros(future.shape, dtype=q.dtype, device=q.device)
        top_mask, bottom_mask = None, bottom_mask.masked_fill_(future, float("-inf"))
    else:
        top_mask, bottom_mask = mask[..., :h, :h], mask[..., h:, :]
    top = F.scaled_dot_product_attention(
        q[:, :, :h],
        k[:, :, :h],
        v[:, :, :h],
        attn_mask=top_mask,
        is_causal=mask is None,
        scale=scale,
    )
    bottom = F.scaled_dot_product_attention(q[:, :, h:], k, v, attn_mask=bottom_mask, scale=scale)
    return torch.cat([top, bottom], dim=2)  # (B, H, T, D)
