"""Position variants: how attention sees where tokens are; `POSITIONS` maps a config string to one.

The paper compares GPTs that differ only here (SPEC.md "Models"). Every variant is one class that
plugs into the model at three fixed seams, and nowhere else:

    embed(x, pos)                                added to the input embedding        (abs)
    rotate(x, pos)                               transforms q and k before q.k       (rot)
    bias(layer, span, q, k, dtype, project)      a term added to the attention logits (rel,
                                                 pos, uni, alibi); -inf hides keys (uni's window)

A variant is given what it needs as arguments: the positions of the pass (`Span`: absolute
indices of the queries, (Tq,), and of the keys, (Tk,)), q and k, the dtype of the logits, and,
only where it declares `needs_projection` (rel), the layer's W_q, W_k as a callable. A KV cache
(decoding one query against all cached keys) needs nothing special: every relative term is a
function of the query position minus the key position. The causal mask (keys after the query)
is applied by the attention, not here.

Facts about each variant live beside its class as data, so tests parametrize over POSITIONS:
    shift_invariant  logits do not change when every position is offset by the same k
    sdpa             the attention may run through F.scaled_dot_product_attention
    content          the logits contain q.k (False: the pattern depends on positions only,
                     and the layer has no q/k projections)
    shared_bias      bias() is a fixed function of the positions, the same in every layer:
                     built once per forward pass and kept (`shared`) while the positions
                     stay the same, so training at one length builds it once
    needs_projection bias() reads the layer's W_q, W_k (given as `project`)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from cfglab.config import POSITION_NAMES, ModelShape
from cfglab.config.schema import registry

Projection = Callable[[Tensor], tuple[Tensor, Tensor]]  # rows (N, C) -> q, k each (H, N, D)


@dataclass(frozen=True)
class Span:
    """The positions of one forward pass: q (Tq,) of the queries, k (Tk,) of every key (cached
    ones included), and `key` = (offset, past, Tq) as plain ints, which identify them without
    reading the tensors (no device synchronisation)."""

    q: Tensor
    k: Tensor
    key: tuple[int, int, int]


class NoPosition(nn.Module):
    """`nope`: no positional information at all; the base class of every variant.

    A causal model still infers order from the causal mask (e.g. by counting through averages);
    an encoder with `nope` is permutation-equivariant.
    """

    shift_invariant: ClassVar[bool] = True
    sdpa: ClassVar[bool] = True
    content: ClassVar[bool] = True
    shared_bias: ClassVar[bool] = False
    needs_projection: ClassVar[bool] = False

    def __init__(self, config: ModelShape) -> None:
        super().__init__()
        self.causal = config.causal
        self.block_size = config.block_size
        self.n_head = config.n_head
        # shared_bias variants: kind -> (key, value) of the last pass (see `shared`)
        self.mask_cache: dict[str, tuple] = {}

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        """Seam 1: the input embedding x (B, T, C) of tokens at positions pos (T,)."""
        return x

    def rotate(self, x: Tensor, pos: Tensor) -> Tensor:
        """Seam 2: q or k (B, H, T, D) of tokens at positions pos (T,), before q.k."""
        return x

    def scale(self, head_dim: int) -> float:
        """The factor on q.k (and on nothing else: bias() returns logits already scaled)."""
        return head_dim**-0.5

    def bias(
        self,
        layer: int,
        span: Span,
        q: Tensor | None,
        k: Tensor | None,
        dtype: torch.dtype,
        project: Projection | None = None,
    ) -> Tensor | None:
        """Seam 3: an additive logit term broadcastable to (B, H, Tq, Tk) of `dtype`, or None."""
        return None

    def shared(self, layer: int, kind: str, span: Span, dtype: torch.dtype, build: Callable):
        """build() for this layer, or, for a shared_bias variant (the same bias in every
        layer), the value built by the first layer that asked: kept across passes while the
        span, dtype, device and inference mode stay the same (training at one length builds
        alibi's mask once). `kind` names what the attention builds from the bias (its SDPA mask
        or its manual-path bias)."""
        if not self.shared_bias:
            return build()
        key = (span.key, dtype, span.k.device, torch.is_inference_mode_enabled())
        hit = self.mask_cache.get(kind)
        if hit is None or hit[0] != key:
            hit = self.mask_cache[kind] = (key, build())
        return hit[1]


class AbsolutePosition(NoPosition):
    """`abs` (the paper's GPT): a learned vector per absolute position added to the input."""

    shift_invariant = False

    def __init__(self, config: ModelShape) -> None:
        super().__init__(config)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        return x + self.wpe(pos)  # (B, T, C) + (T, C)


class RotaryPosition(NoPosition):
    """`rot` (GPT_rot): rotary embeddings, GPT-NeoX layout (rotate_half over the first
    `rotary_fraction` of each head's dims; SPEC [ours]: 1.0 = every dim, where Hugging Face's
    GPT-NeoX defaults to 0.25). q.k then depends on positions only through i - j."""

    def __init__(self, config: ModelShape) -> None:
        super().__init__(config)
        head_dim = config.n_embd // config.n_head
        self.rot_dim = r = int(head_dim * config.rotary_fraction) // 2 * 2
        inv_freq = 1.0 / config.rotary_base ** (torch.arange(0, r, 2, dtype=torch.float64) / r)
        angles = torch.outer(torch.arange(config.block_size, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # (block_size, r)
        # Tables over all head_dim dims: the dims past r get cos 1 and sin 0 (left as they are),
        # so one elementwise pass covers a partial rotation too (no slice-and-cat of x).
        cos = torch.ones(config.block_size, head_dim, dtype=torch.float64)
        sin = torch.zeros(config.block_size, head_dim, dtype=torch.float64)
        cos[:, :r] = angles.cos()
        # rotate_half(x) * sin == swap_halves(x) * (sin with the first half negated)
        sin[:, :r] = angles.sin() * torch.cat([-torch.ones(r // 2), torch.ones(r // 2)])
        # buffers, not parameters: rebuilt from the config, never saved with the weights
        self.register_buffer("cos", cos.float(), persistent=False)  # (block_size, head_dim)
        self.register_buffer("sin", sin.float(), persistent=False)  # (block_size, head_dim)

    def rotate(self, x: Tensor, pos: Tensor) -> Tensor:
        cos, sin = self.cos[pos].to(x.dtype), self.sin[pos].to(x.dtype)  # (T, D)
        if torch.compiler.is_compiling():
            # Under torch.compile the plain formula is fused into one kernel forward and one
            # backward; the hand-written backward below pays off in eager mode only (measured on
            # an H200, GPT-2 small, bf16: the Function cost 14% of a compiled step).
            r, h = self.rot_dim, self.rot_dim // 2
            swapped = torch.cat([x[..., h:r], x[..., :h], x[..., r:]], dim=-1)
            return x * cos + swapped * sin
        return _Rotary.apply(x, cos, sin, self.rot_dim)


class _Rotary(torch.autograd.Function):
    """y = x * cos + swap(x) * sin, swap exchanging the halves of the first r dims of x (..., T,
    D); sin carries rotate_half's sign. The map is linear and swap is its own transpose, so the
    backward is the same map on the gradient with the two halves of sin exchanged: it saves only
    the (T, D) tables, where autograd through the formula would save swap(x) and run a cat and
    two slice-backwards per call (profile: ~2x the time of this form, fwd + bwd)."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor, r: int) -> Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.r = r
        return _rotate_halves(x, cos, sin[:, : r // 2], sin[:, r // 2 : r], r)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        cos, sin = ctx.saved_tensors
        r = ctx.r
        return _rotate_halves(grad, cos, sin[:, r // 2 : r], sin[:, : r // 2], r), None, None, None


def _rotate_halves(x: Tensor, cos: Tensor, sin_a: Tensor, sin_b: Tensor, r: int) -> Tensor:
    """x (..., T, D) -> x * cos, then first half += second half * sin_a and second half +=
    first half * sin_b (halves of the first r dims; cos (T, D), sin_a, sin_b (T, r/2))."""
    h = r // 2
    out = x * cos
    out[..., :h].addcmul_(x[..., h:r], sin_a)
    out[..., h:r].addcmul_(x[..., :h], sin_b)
    return out


class RelativePosition(NoPosition):
    """`rel` (GPT_rel): DeBERTa disentangled attention (SPEC [ours]).

    logit(i, j) = (q_i.k_j + q_i.Kr[d(i,j)] + k_j.Qr[d(j,i)]) / sqrt(3 D), d(i,j) = clip(i - j,
    -M, M), M = `rel_max_distance`. One relative-embedding table (2M+1, C) is shared by all
    layers and projected per layer with that layer's own W_q, W_k (DeBERTa-v2's
    `share_att_key`), so GPT_rel has the same parameters as GPT plus the table.
    """

    def __init__(self, config: ModelShape) -> None:
        super().__init__(config)
        self.max_distance = config.rel_max_distance
        self.table = nn.Embedding(2 * self.max_distance + 1, config.n_embd)

    def scale(self, head_dim: int) -> float:
        return (3 * head_dim) ** -0.5

    needs_projection = True

    def bias(self, layer, span, q, k, dtype, project=None):
        # The queries are the last Tq of the Tk keys (positions are consecutive), so distances
        # span -(Tk-1)..Tk-1 and each term is a skewed (Toeplitz) read of a small product:
        # no (B, H, Tq, Tk) index tensors, and the backward pass is a plain copy.
        M = self.max_distance
        Tq, Tk = q.shape[2], k.shape[2]
        lo = -min(Tk - 1, M)  # table rows that can occur: distances lo..-lo, clipped at M
        qr, kr = project(self.table.weight[lo + M : M - lo + 1])  # (H, R, D) each
        dev = span.q.device
        # c2p[i, j] = q_i . Kr[d(i, j)]: rows = queries, d = i - j from Tk-1 down to -(Tq-1)
        d = torch.arange(Tk - 1, -Tq, -1, device=dev).clamp(-M, M) - lo  # (Tq + Tk - 1,)
        c2p = _skew(q @ kr[:, d].transpose(-1, -2), Tk)  # (B, H, Tq, Tk)
        # p2c[i, j] = k_j . Qr[d(j, i)]: rows = keys, d = j - i from Tq-1 down to -(Tk-1)
        d = torch.arange(Tq - 1, -Tk, -1, device=dev).clamp(-M, M) - lo  # (Tk + Tq - 1,)
        p2c = _skew(k @ qr[:, d].transpose(-1, -2), Tq)  # (B, H, Tk, Tq)
        return (c2p + p2c.transpose(-1, -2)) * self.scale(q.shape[-1])


def _skew(g: Tensor, n_cols: int) -> Tensor:
    """(..., A, A + n_cols - 1) -> (..., A, n_cols), out[a, b] = g[a, (A - 1 - a) + b].

    Row a of the result starts one column further left than row a-1: reading the flattened
    rows with a stride of (row length - 1) does exactly that (Transformer-XL's relative shift).
    """
    *lead, A, R = g.shape
    if A == 1:
        return g[..., :n_cols]
    flat = g.reshape(*lead, A * R)[..., A - 1 : A - 1 + A * (R - 1)]
    return flat.reshape(*lead, A, R - 1)[..., :n_cols]


class PositionOnlyAttention(NoPosition):
    """`pos` (GPT_pos): attention weights depend only on positions and are learned (SPEC [ours]).

    logit(i, j) = b[layer, h][i - j], one learned scalar per layer, head and distance; no q, k
    (softmax over the allowed j; values and output projection as usual). The paper says only
    that the weights are trainable; `model.pos_init` chooses where they start: `uniform` (0: a
    uniform average over the prefix) or `local` (b[h][d] = -m_h |d| with ALiBi's head slopes
    m_h: head 1 nearly attends to the last token or two, the last head almost uniformly, like
    uni's windows 1, 3, 7, ... but every weight still learnable), so that an optimiser that
    cannot find the local pattern from 0 is not mistaken for a model that cannot express it.
    Encoder (causal=False): the table covers i - j in [-(block_size-1), block_size-1], so it may
    treat left and right differently.
    """

    sdpa = False
    content = False

    def __init__(self, config: ModelShape) -> None:
        super().__init__(config)
        n_dist = config.block_size if config.causal else 2 * config.block_size - 1
        table = torch.zeros(config.n_layer, config.n_head, n_dist)
        if config.pos_init == "local":
            d = torch.arange(n_dist) if config.causal else torch.arange(n_dist) - (n_dist // 2)
            slopes = torch.tensor(alibi_slopes(config.n_head))  # (H,)
            table[:] = -slopes[:, None] * d.abs().float()  # (H, n_dist), every layer alike
        self.table = nn.Parameter(table)

    def bias(self, layer, span, q, k, dtype, project=None):
        d = span.q[:, None] - span.k[None, :]  # (Tq, Tk)
        # causal: d < 0 entries are masked by the attention; clamp only keeps the index valid
        idx = d.clamp(min=0) if self.causal else d + self.block_size - 1
        return self.table[layer][:, idx][None]  # (1, H, Tq, Tk)


class UniformAttention(NoPosition):
    """`uni` (GPT_uni): fixed uniform attention; head h = 1..H averages a window of
    w_h = 2^h - 1 tokens (SPEC [ours]).

    Causal: the window ends at the query, itself included: j in [i - w_h + 1, i], renormalised
    near the start (the average is over the j >= 0 that exist). Encoder (causal=False, our
    choice): the window of the same size w_h centred on the query, |i - j| <= 2^(h-1) - 1,
    clipped at both ends. No q, k; values and output projection are trained. Implemented as a
    logit term 0 inside the window and -inf outside, so softmax gives exactly 1/(window size).
    """

    sdpa = False
    content = False
    shared_bias = True

    def __init__(self, config: ModelShape) -> None:
        super().__init__(config)
        cap = 2 * config.block_size + 1  # any larger window is the whole sequence anyway
        w = [min(2**h - 1, cap) for h in range(1, config.n_head + 1)]
        self.register_buffer("window", torch.tensor(w), persistent=False)  # (H,)

    def bias(self, layer, span, q, k, dtype, project=None):
        d = (span.q[:, None] - span.k[None, :])[None]  # (1, Tq, Tk)
        w = self.window[:, None, None]  # (H, 1, 1)
        inside = (d < w) & (d >= 0) if self.causal else d.abs() <= (w - 1) // 2  # (H, Tq, Tk)
        out = torch.zeros(inside.shape, dtype=dtype, device=d.device)
        return out.masked_fill(~inside, float("-inf"))[None]  # (1, H, Tq, Tk)


class ALiBiPosition(NoPosition):
    """`alibi` (Press et al. 2022): logit(i, j) = q_i.k_j / sqrt(D) - m_h |i - j|, with the
    paper's head slopes m_h (geometric, 2^(-8h/H) for H a power of two, interleaved otherwise).
    Encoder: the symmetric |i - j| (the causal form's distance on both sides)."""

    shared_bias = True

    def __init__(self, config: ModelShape) -> None:
        super().__init__(config)
        self.register_buffer(
            "slopes", torch.tensor(alibi_slopes(config.n_head)), persistent=False
        )  # (H,)

    def bias(self, layer, span, q, k, dtype, project=None):
        d = (span.q[:, None] - span.k[None, :]).abs()  # (Tq, Tk)
        return (-self.slopes[:, None, None] * d).to(dtype)[None]  # (1, H, Tq, Tk)


def alibi_slopes(n_head: int) -> list[float]:
    """ALiBi's head slopes: 2^(-8/n) ... for n a power of two; otherwise those of the nearest
    lower power of two followed by every other slope of the next one (the ALiBi reference)."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** math.floor(math.log2(n_head))
    if p == n_head:
        return power_of_two(n_head)
    return power_of_two(p) + power_of_two(2 * p)[0::2][: n_head - p]


# The one place variant names live (DESIGN.md): config string -> class.
POSITIONS: dict[str, type[NoPosition]] = registry(
    POSITION_NAMES,
    {
        "abs": AbsolutePosition,
        "rel": RelativePosition,
        "rot": RotaryPosition,
        "pos": PositionOnlyAttention,
        "uni": UniformAttention,
        "nope": NoPosition,
        "alibi": ALiBiPosition,
    },
    "model.positions.POSITIONS",
)
