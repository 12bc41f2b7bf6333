"""Canon layers (Physics of LMs Part 4.1; SPEC.md "Canon layers"): a short depthwise convolution
over positions, added to its input, at up to four sites of each Transformer block.

    out_t = h_t + sum_{k < K} w_k * h_{t-k}        (elementwise per channel; K = canon_kernel)

No bias and no activation (the authors' recommendation for Transformers); the residual is on by
default (`canon_residual`). The sites (gpt.py places them): A the normalised input of attention,
B the q, k, v projections before any position transform, C the normalised input of the MLP, D the
MLP's up-projection before GELU. The SSM reuses `short_conv` for its own convolution.

Encoder (causal=False): a two-sided kernel, taps at offsets -(K-1) .. K-1 (2K - 1 weights per
channel), not a centred K-tap one. A bidirectional model has no preferred side, so it sees the
same reach, K - 1 positions, on both sides as the causal layer sees on its left, and an even K
needs no arbitrary choice of which side gets the extra tap; zero weights are still the identity.

Initialisation: as the authors (PhysicsLM4 `huggingface/`: the layer is an nn.Conv1d that the
model's _init_weights resets with Conv1d's own init): uniform in +-1/sqrt(taps), the taps being
each channel's fan-in. With the residual the layer then starts as the identity plus a local mix of
the same size as its input, not near the model without Canon; training starts from where the
authors' runs start.

Decoding: the state of a causal layer is its last K - 1 inputs, (B, K-1, channels), kept in the
model's cache under the layer's key; zeros before the first token equal the zero padding of a
full pass, so cached decoding equals the full forward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# a cache's convolution states: key (e.g. "3.B": layer 3, site B) -> (B, K-1, channels)
ConvStates = dict[str, Tensor]


BLOCK = 2**17  # elements of one operand per step of the weight gradient (512 KB in fp32)


def _depthwise(x: Tensor, weight: Tensor, centre: int) -> Tensor:
    """y[t] = sum_j x[t - centre + j] * weight[:, j], zeros outside x: x (B, T, C), weight (C,
    taps) -> (B, T, C).

    One depthwise conv2d over the (B, C, 1, T) view of x's (B, T, C) memory: the channels-last
    layout, for which oneDNN's CPU kernel reads x once and writes (B, T, C) memory (measured, B=4
    T=512 C=128..512: 3-5x faster than shifted multiply-adds, 2-4x faster than conv1d on
    transposed copies). The kernel pads both sides alike (no padded copy of x); a one-sided
    kernel then keeps T of its outputs: a view, whose rows are (B, T, C) but whose sequences
    are K - 1 rows apart (Canon.dense makes it contiguous where a Linear reads it)."""
    B, T, C = x.shape
    taps = weight.shape[1]
    pad = max(centre, taps - 1 - centre)
    x4, w4 = x.transpose(1, 2)[:, :, None], weight[:, None, None, :]  # (B, C, 1, T), (C, 1, 1, K)
    y = F.conv2d(x4, w4, padding=(0, pad), groups=C)  # (B, C, 1, T + 2 pad - taps + 1)
    start = pad - centre  # output start + t reads x from t - centre on
    return y[:, :, 0, start : start + T].transpose(1, 2)  # (B, T, C)


def _weight_grad(grad: Tensor, x: Tensor, centre: int, taps: int) -> Tensor:
    """gw[:, j] = sum over b, t of grad[b, t] * x[b, t - centre + j] -> (C, taps), float32.

    Runs over blocks of at most BLOCK elements, every tap of a block while it is in cache, the
    products written into one preallocated block (a fresh 512 KB temporary per product costs a
    page-faulting allocation: measured 4x the product itself). 4-5x faster than whole-tensor
    products from C = 384 on."""
    B, T, C = grad.shape
    gw = torch.zeros(taps, C, dtype=torch.float32, device=grad.device)
    rows = max(1, BLOCK // C)  # positions per block
    seqs, span = min(B, max(1, rows // T)), min(T, rows)  # whole sequences, or a span of one
    buffer = torch.empty(seqs * span * C, dtype=grad.dtype, device=grad.device)
    for b0 in range(0, B, seqs):
        b1 = min(B, b0 + seqs)
        for t0 in range(0, T, span):
            for j in range(taps):
                o = j - centre  # tap j reads x at t + o, for t in lo..hi of this block
                lo, hi = max(t0, -o), min(t0 + span, T, T - o)
                if lo < hi:
                    # contiguous, so the sum is one (b * n, C) reduction (a strided one: 10x)
                    product = buffer[: (b1 - b0) * (hi - lo) * C].view(b1 - b0, hi - lo, C)
                    torch.mul(grad[b0:b1, lo:hi], x[b0:b1, lo + o : hi + o], out=product)
                    gw[j] += product.view(-1, C).sum(0, dtype=torch.float32)
    return gw.T  # (C, taps)


class _ShortConv(torch.autograd.Function):
    """y (B, T, C) = sum_j x[t - centre + j] * weight[:, j], plus x itself when residual (folded
    into the centre tap). Forward and input gradient are depthwise convolutions (the gradient's
    with the kernel flipped); the weight gradient a blocked sum. Autograd through shifted
    products would save one product per tap and run ~3x longer."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, centre: int, residual: bool) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.centre, ctx.residual = centre, residual
        w = weight.to(x.dtype)
        if residual:
            w = w.clone()
            w[:, centre] += 1
        return _depthwise(x, w, centre)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
        x, weight = ctx.saved_tensors
        centre, taps = ctx.centre, weight.shape[1]
        w = weight.to(grad.dtype)
        if ctx.residual:
            w = w.clone()
            w[:, centre] += 1
        gx = _depthwise(grad, w.flip(1), taps - 1 - centre)  # the transposed shift
        gw = _weight_grad(grad, x, centre, taps)
        return gx, gw.to(weight.dtype), None, None


def short_conv(
    x: Tensor, weight: Tensor, causal: bool, residual: bool, state: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Depthwise convolution of x (B, T, C) over positions with weight (C, taps) -> (y (B, T, C),
    the new state or None).

    Causal: taps = K, weight[:, j] multiplies x_{t - (K-1) + j} (the last column the current
    position). Two-sided: taps = 2K - 1, centred. `state` (B, K-1, C), causal only: the K - 1
    inputs before x (a cache); the new state is the last K - 1 inputs including x."""
    taps = weight.shape[1]
    centre = taps - 1 if causal else taps // 2
    if state is None:
        return _ShortConv.apply(x, weight, centre, residual), None
    T = x.shape[1]
    padded = torch.cat([state.to(x.dtype), x], dim=1)  # (B, K-1+T, C)
    y = _ShortConv.apply(padded, weight, centre, residual)[:, -T:]
    return y, padded[:, -(taps - 1) :]


class Canon(nn.Module):
    """One Canon layer over `channels` channels; `key` names its state in a cache. `dense`: the
    output is made contiguous, for a Linear that reads it (sites A, C: a strided input costs the
    Linear the same copy and a slower matmul path); sites B and D leave the view to ops that
    read strides (the q, k, v split, GELU), which saves a copy of 3C or 4C channels."""

    def __init__(
        self, channels: int, kernel: int, causal: bool, residual: bool, key: str, dense: bool
    ):
        super().__init__()
        self.causal, self.residual, self.key, self.dense = causal, residual, key, dense
        self.kernel = kernel
        taps = kernel if causal else 2 * kernel - 1
        self.weight = nn.Parameter(torch.empty(channels, taps))  # (channels, taps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv1d's init for a depthwise kernel, as the authors: U(+-1/sqrt(fan-in))."""
        bound = 1 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor, states: ConvStates | None = None) -> Tensor:
        """x (B, T, channels) -> same shape. `states`: a cache's convolution states (decoding);
        this layer's entry is read (zeros before the first call) and replaced."""
        if states is None:
            y = short_conv(x, self.weight, self.causal, self.residual)[0]
        else:
            state = states.get(self.key)
            if state is None:
                state = x.new_zeros(x.shape[0], self.kernel - 1, x.shape[2])  # (B, K-1, C)
            y, states[self.key] = short_conv(x, self.weight, self.causal, self.residual, state)
        return y.contiguous() if self.dense else y

    def extra_repr(self) -> str:
        channels, taps = self.weight.shape
        return f"{channels}, taps={taps}, causal={self.causal}, residual={self.residual}"
