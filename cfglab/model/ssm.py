"""The `ssm` family: a Mamba2-style selective state-space model in pure PyTorch (no custom
kernels, so it runs on a CPU), in the GPT's residual pre-norm frame:

    token embedding -> n_layer x [x + mixer(LayerNorm(x))] -> LayerNorm -> tied unembedding

The mixer (Mamba2's, with its default proportions; sizes in cfglab/config/sizes.py): in_proj maps
u (B, T, C) to z, x (each the inner width E = 2C, split into H = n_head heads of P = E/H dims), B,
C (each N = SSM_STATE dims, shared by the heads) and dt (one per head). x, B, C go through a
short causal depthwise convolution (SSM_CONV taps, with bias; Mamba2's own "Canon-like"
convolution, canon.short_conv) and SiLU; dt = softplus(dt + dt_bias); the decay per head is
A = -exp(A_log). Per head, with state S (P, N):

    S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T        y_t = S_t C_t + D x_t

then y * SiLU(z), an RMSNorm (Mamba2's gated norm) and out_proj. Training runs the chunked
"state-space duality" form (`ssd_chunked`): inside a chunk of Q positions the output is a masked
(Q x Q) matrix product, as attention with a decaying causal mask; chunk states carry the rest in a
scan over T/Q chunks. Decoding one token runs the recurrence itself (`ssd_step`). A test holds
the chunked form equal to the step-by-step recurrence in float64.

Init as Mamba2: dt log-uniform in [1e-3, 0.1] (through dt_bias), A in U[1, 16], D = 1, the
convolution as nn.Conv1d; linear layers as the GPT's (normal 0.02, out_proj scaled by depth).
Hooks: hook_embed, blocks.{i}.hook_resid_pre, blocks.{i}.hook_mixer_out,
blocks.{i}.hook_resid_post, ln_final.hook_normalized. Causal only (config validation refuses the
encoder objective); `position` and `canon` do not apply.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfglab.config.sizes import SSM_CONV, SSM_EXPAND, SSM_STATE
from cfglab.model.canon import short_conv
from cfglab.model.gpt import FinalNorm, GPTConfig, check_room
from cfglab.model.hooks import HookPoint, hook_points

CHUNK = 64  # Q: positions per chunk of the training form (a Q x Q product per chunk and head)


def ssd_chunked(
    x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, chunk: int, state: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The SSM over a sequence in chunks: x (B, T, H, P), dt (B, T, H) > 0, A (H,) < 0, Bm, Cm
    (B, T, N), state (B, H, P, N) before the first position (None: zeros) -> (y (B, T, H, P)
    without the D x term, the state after the last position)."""
    b, T, H, P = x.shape
    N = Bm.shape[-1]
    pad = -T % chunk  # zeros at the end: dt = 0 leaves the state as it is
    if pad:
        x, dt, Bm, Cm = (F.pad(t, (0,) * (2 * t.dim() - 4) + (0, pad)) for t in (x, dt, Bm, Cm))
    n = (T + pad) // chunk
    x = x.view(b, n, chunk, H, P).permute(0, 1, 3, 2, 4)  # (B, n, H, Q, P)
    dt = dt.view(b, n, chunk, H).transpose(2, 3)  # (B, n, H, Q)
    Bm, Cm = Bm.view(b, n, chunk, N), Cm.view(b, n, chunk, N)  # (B, n, Q, N)
    cs = (dt * A[:, None]).cumsum(dim=-1)  # (B, n, H, Q): log of the decay from chunk start
    # decay from position s to t (s <= t) inside a chunk: exp(cs_t - cs_s); -inf above it
    seg = cs[..., :, None] - cs[..., None, :]  # (B, n, H, Q, Q) [t, s]
    later = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).triu(1)
    decay = torch.exp(seg.masked_fill(later, float("-inf")))
    xdt = x * dt[..., None]  # (B, n, H, Q, P): the input each step writes
    scores = (Cm @ Bm.transpose(-1, -2))[:, :, None] * decay  # (B, n, H, Q, Q)
    y = scores @ xdt  # (B, n, H, Q, P): the part written inside the chunk
    # what each chunk adds to the state by its end, then the scan over chunks
    to_end = torch.exp(cs[..., -1:] - cs)[..., None]  # (B, n, H, Q, 1)
    written = (xdt * to_end).transpose(-1, -2) @ Bm[:, :, None]  # (B, n, H, P, N)
    whole = torch.exp(cs[..., -1])[..., None, None]  # (B, n, H, 1, 1): decay over a chunk
    if state is None:
        state = x.new_zeros(b, H, P, N)
    before = []  # the state entering each chunk
    for c in range(n):
        before.append(state)
        state = state * whole[:, c] + written[:, c]
    entering = torch.stack(before, dim=1)  # (B, n, H, P, N)
    carried = Cm[:, :, None] @ entering.transpose(-1, -2)  # (B, n, H, Q, P)
    y = y + carried * torch.exp(cs)[..., None]
    y = y.permute(0, 1, 3, 2, 4).reshape(b, n * chunk, H, P)[:, :T]  # (B, T, H, P)
    return y, state


def ssd_step(
    x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One position of the recurrence: x (B, H, P), dt (B, H), Bm, Cm (B, N), state (B, H, P,
    N) -> (y (B, H, P) without the D x term, the new state)."""
    a = torch.exp(dt * A)[..., None, None]  # (B, H, 1, 1)
    write = (x * dt[..., None])[..., None] * Bm[:, None, None, :]  # (B, H, P, N)
    state = state * a + write
    return (state @ Cm[:, None, :, None])[..., 0], state  # (B, H, P)


class SSMState:
    """Decoding state of every layer: conv, the short convolution's last SSM_CONV - 1 inputs
    (B, K-1, E + 2N), and ssm, the state (B, H, P, N), by layer; `length` positions seen."""

    def __init__(self, batch: int, max_len: int) -> None:
        self.conv: dict[str, Tensor] = {}  # filled on the first call, as the Canon states
        self.ssm: dict[int, Tensor] = {}
        self.max_len, self.length, self.batch = max_len, 0, batch

    def select(self, rows: Tensor) -> None:
        """Keep only batch rows `rows`."""
        self.conv = {k: v[rows] for k, v in self.conv.items()}
        self.ssm = {k: v[rows] for k, v in self.ssm.items()}


class Mixer(nn.Module):
    """Mamba2's mixer: (B, T, C) -> (B, T, C) (see the module docstring)."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        C, H = config.n_embd, config.n_head
        self.layer, self.n_head = layer, H
        self.inner, N = SSM_EXPAND * C, SSM_STATE
        self.in_proj = nn.Linear(C, 2 * self.inner + 2 * N + H, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(self.inner + 2 * N, SSM_CONV))
        self.conv_bias = nn.Parameter(torch.empty(self.inner + 2 * N))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = nn.RMSNorm(self.inner, eps=1e-5)
        self.out_proj = nn.Linear(self.inner, C, bias=False)
        self.reset_ssm()

    @torch.no_grad()
    def reset_ssm(self) -> None:
        """Mamba2's init of the convolution and the SSM's own parameters."""
        bound = 1 / math.sqrt(SSM_CONV)  # nn.Conv1d's, fan-in = taps
        nn.init.uniform_(self.conv_weight, -bound, bound)
        nn.init.uniform_(self.conv_bias, -bound, bound)
        H = self.n_head
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        dt = dt.clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        self.A_log.copy_(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D.fill_(1.0)

    def forward(self, u: Tensor, cache: SSMState | None) -> Tensor:
        B, T, _ = u.shape
        E, N, H = self.inner, SSM_STATE, self.n_head
        z, xbc, dt = self.in_proj(u).split([E, E + 2 * N, H], dim=-1)
        states = cache.conv if cache is not None else None
        key = f"{self.layer}.ssm"
        conv_state = None
        if states is not None:
            conv_state = states.get(key, u.new_zeros(B, SSM_CONV - 1, E + 2 * N))
        xbc, new_conv = short_conv(xbc, self.conv_weight, True, False, conv_state)
        if states is not None:
            states[key] = new_conv
        x, Bm, Cm = F.silu(xbc + self.conv_bias.to(xbc.dtype)).split([E, N, N], dim=-1)
        x = x.reshape(B, T, H, E // H)  # (B, T, H, P)
        dt = F.softplus(dt + self.dt_bias.to(dt.dtype))  # (B, T, H)
        # the scan in float32 at least, autocast or not: decays compound over the sequence
        wide = torch.promote_types(x.dtype, torch.float32)
        xs, dts, Bs, Cs = (t.to(wide) for t in (x, dt, Bm, Cm))
        A = -torch.exp(self.A_log.to(wide))  # (H,)
        state = cache.ssm.get(self.layer) if cache is not None else None
        with torch.autocast(u.device.type, enabled=False):
            if T == 1 and state is not None:  # decoding: the recurrence itself
                y, state = ssd_step(xs[:, 0], dts[:, 0], A, Bs[:, 0], Cs[:, 0], state)
                y = y[:, None]  # (B, 1, H, P)
            else:
                y, state = ssd_chunked(xs, dts, A, Bs, Cs, CHUNK, state)
        if cache is not None:
            cache.ssm[self.layer] = state
        y = y.to(x.dtype)
        y = y + x * self.D.to(x.dtype)[:, None]  # (B, T, H, P)
        y = self.norm(y.reshape(B, T, E) * F.silu(z))  # Mamba2's gated RMSNorm
        return self.out_proj(y)  # (B, T, C)


class SSMBlock(nn.Module):
    """Pre-norm residual: x + mixer(LayerNorm(x))."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.ln = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mixer = Mixer(config, layer)
        self.hook_mixer_out = HookPoint()
        self.resid_dropout = nn.Dropout(config.dropout)
        self.hook_resid_post = HookPoint()

    def forward(self, x: Tensor, cache: SSMState | None) -> Tensor:
        x = self.hook_resid_pre(x)
        m = self.hook_mixer_out(self.resid_dropout(self.mixer(self.ln(x), cache)))
        return self.hook_resid_post(x + m)


class SSMModel(nn.Module):
    """Token embedding -> n_layer Mamba2-style blocks -> LayerNorm -> tied unembedding."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.hook_embed = HookPoint()
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SSMBlock(config, i) for i in range(config.n_layer))
        self.ln_final = FinalNorm(config.n_embd, config.bias)
        self.unembed = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.unembed.weight = self.embed.weight  # tied, as the GPT's
        for name, p in self.named_parameters():  # the GPT's init for projections
            if name.endswith(("in_proj.weight", "embed.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.endswith("out_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * config.n_layer) ** 0.5)
        hook_points(self)

    def num_params(self) -> int:
        """Trainable parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, max_len: int | None = None) -> SSMState:
        """An empty state for `batch` sequences of up to `max_len` (default block_size)."""
        return SSMState(batch, max_len or self.config.block_size)

    def forward(
        self,
        idx: Tensor,
        *,
        cache: SSMState | None = None,
        pos_offset: int = 0,
        manual: bool = False,
    ) -> Tensor:
        """idx (B, T) -> logits (B, T, V). cache: continue the sequences it holds. pos_offset and
        manual are the GPT's arguments and change nothing here (no positions, no attention)."""
        T = idx.shape[1]
        past = cache.length if cache is not None else 0
        limit = min(self.config.block_size, cache.max_len) if cache else self.config.block_size
        check_room(self.config, past + T, limit)
        x = self.drop(self.hook_embed(self.embed(idx)))  # (B, T, C)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += T
        return self.unembed(self.ln_final(x))  # (B, T, V)
