"""One readable Transformer: the paper's GPT variants (causal) and the masked-LM encoder.

GPT-2 style pre-LayerNorm blocks in nanoGPT's vocabulary (n_layer, n_head, n_embd, block_size,
vocab_size, dropout). How attention sees positions is the one thing that varies; it is a module
from `positions.POSITIONS`, called at three fixed seams (input embedding, q/k transform, logit
term). `causal=False` makes the same network a bidirectional encoder (the BERT/DeBERTa
comparison; the masked-LM loss lives in train/objectives.py).

Attention runs through `F.scaled_dot_product_attention` where the variant allows it, or through
a manual path that materialises the pattern (for hooks, `manual=True`, and the position-only
variants); a test keeps both equal. A `KVCache` makes generation cost O(T) per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfglab.errors import ConfigError
from cfglab.model.hooks import HookPoint
from cfglab.model.positions import POSITIONS, NoPosition


@dataclass(kw_only=True)
class GPTConfig:
    vocab_size: int  # BOS, terminals, EOS, MASK, PAD: cfglab.data.vocab.Vocab.size
    block_size: int = 512  # longest sequence (positions 0..block_size-1)
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    position: str = "rot"  # a key of cfglab.model.positions.POSITIONS
    causal: bool = True  # False: bidirectional encoder
    bias: bool = True  # biases in Linear and LayerNorm (GPT-2 has them)
    # variant parameters (ignored by the other variants)
    rel_max_distance: int = 512  # rel: |i - j| clipped here (DeBERTa's max_relative_positions)
    rotary_fraction: float = 1.0  # rot: share of each head's dims rotated (HF GPT-NeoX: 0.25)
    rotary_base: float = 10000.0  # rot: frequency base


def check_config(cfg: GPTConfig) -> None:
    """ConfigError naming the field and the fix; cheap, so it runs before anything is allocated."""
    if cfg.position not in POSITIONS:
        raise ConfigError(
            f"unknown position variant {cfg.position!r}; choose one of {', '.join(POSITIONS)}"
        )
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "rel_max_distance"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"model {name} must be a positive integer, got {value!r}")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(
            f"n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}; choose "
            f"n_embd a multiple of n_head (e.g. {cfg.n_head * 64})"
        )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout!r}")
    if (
        not 0.0 < cfg.rotary_fraction <= 1.0
        or int(cfg.n_embd // cfg.n_head * cfg.rotary_fraction) < 2
    ):
        raise ConfigError(
            f"rotary_fraction={cfg.rotary_fraction!r} must be in (0, 1] and rotate "
            f"at least 2 of the {cfg.n_embd // cfg.n_head} dims per head"
        )


class KVCache:
    """Keys and values of the positions seen so far, preallocated to `max_len`.

    k, v: (n_layer, B, H, max_len, D); k is None for position-only variants (no keys).
    Keys are stored after the q/k transform (rotated, for rot).
    """

    def __init__(self, config: GPTConfig, batch: int, max_len: int, device=None, dtype=None):
        H, D = config.n_head, config.n_embd // config.n_head
        shape = (config.n_layer, batch, H, max_len, D)
        has_k = POSITIONS[config.position].content
        self.k = torch.zeros(shape, device=device, dtype=dtype) if has_k else None
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions filled (advanced by GPT.forward after all layers)

    def update(self, layer: int, k: Tensor | None, v: Tensor) -> tuple[Tensor | None, Tensor]:
        """Store the new k, v (B, H, Tn, D) after the cached ones; return all (B, H, Tk, D)."""
        start, end = self.length, self.length + v.shape[2]
        self.v[layer, :, :, start:end] = v
        if k is None:
            return None, self.v[layer, :, :, :end]
        self.k[layer, :, :, start:end] = k
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def select(self, rows: Tensor) -> None:
        """Keep only batch rows `rows` (e.g. the sequences that have not produced EOS)."""
        self.v = self.v[:, rows]
        if self.k is not None:
            self.k = self.k[:, rows]


class Attention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_head, self.causal = layer, config.n_head, config.causal
        self.content = POSITIONS[config.position].content
        self.use_sdpa = POSITIONS[config.position].sdpa
        C = config.n_embd
        # q, k, v (or only v for position-only variants) in one matmul
        self.c_attn = nn.Linear(C, (3 if self.content else 1) * C, bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)
        self.dropout = config.dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.hook_scores = HookPoint()
        self.hook_pattern = HookPoint()

    def split_heads(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)

    def project_qk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """This layer's W_q, W_k applied to rows x (N, C) -> q, k each (H, N, D) (rel's seam)."""
        C = x.shape[-1]
        w, b = self.c_attn.weight, self.c_attn.bias
        q = F.linear(x, w[:C], None if b is None else b[:C])
        k = F.linear(x, w[C : 2 * C], None if b is None else b[C : 2 * C])
        return self.split_heads(q[None])[0], self.split_heads(k[None])[0]

    def shared(self, position: NoPosition, memo: dict | None, kind: str, build):
        """build() for this layer, or, for a shared_bias variant (a fixed function of the
        positions, the same in every layer), the value built by the first layer that asked:
        kept on the position module across passes while the span, dtype, device and
        inference mode stay the same (training at one length builds alibi's mask once)."""
        if not position.shared_bias or memo is None or "span" not in memo:
            return build()
        w = self.c_proj.weight
        key = (memo["span"], w.dtype, w.device, torch.is_inference_mode_enabled())
        hit = position.mask_cache.get(kind)
        if hit is None or hit[0] != key:
            hit = position.mask_cache[kind] = (key, build())
        return hit[1]

    def forward(
        self,
        x: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        position: NoPosition,
        cache: KVCache | None = None,
        manual: bool = False,
        memo: dict | None = None,
    ) -> Tensor:
        """x (B, T, C) at positions pos_q (T,); pos_k (Tk,): positions of all keys, cached ones
        included. memo: a dict shared by the layers of one forward pass; its "span" (pos_offset,
        past, T) identifies the positions, so a shared_bias variant's mask is built once."""
        B, T, C = x.shape
        qkv = self.c_attn(x)  # (B, T, 3C), or (B, T, C): v only
        if self.content:
            # split as nanoGPT does: SDPA returns the gradients of q, k, v in (B, T, H, D) memory
            # order, so the backward of these views is a single cat into (B, T, 3C)
            q, k, v = (self.split_heads(t) for t in qkv.split(C, dim=2))  # (B, H, T, D) each
            q, k = position.rotate(q, pos_q), position.rotate(k, pos_q)
        else:
            q, k, v = None, None, self.split_heads(qkv)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, H, Tk, D)
        # causal: key j visible to query i iff pos_k[j] <= pos_q[i]; the last key is the last
        # query, so a single query (decoding) sees every key and needs no mask
        masked = self.causal and T > 1
        scale = position.scale(v.shape[-1])
        dropout_p = self.dropout if self.training else 0.0
        if (
            self.use_sdpa
            and not manual
            and not self.hook_scores.is_active
            and not self.hook_pattern.is_active
        ):

            def sdpa_mask() -> tuple[Tensor | None, bool]:
                mask = position.bias(self.layer, pos_q, pos_k, q, k, self)  # (B|1, H, T, Tk)
                is_causal = mask is None and masked and T == len(pos_k)  # SDPA's fast causal
                if masked and not is_causal:
                    visible = pos_k[None, :] <= pos_q[:, None]  # (T, Tk)
                    # one float mask with -inf for the future (SDPA takes no causal flag
                    # beside a mask). Measured for alibi, fwd + bwd per layer: this ~1.07x
                    # plain causal SDPA; the CPU flash op called with both a causal flag and
                    # the mask costs the same (the cost is adding the mask, not the blocks
                    # after the diagonal); alibi folded into an extra q.k dim 1.17x; manual 1.2x
                    mask = visible if mask is None else mask.masked_fill(~visible, float("-inf"))
                return mask, is_causal

            mask, is_causal = self.shared(position, memo, "sdpa", sdpa_mask)
            if masked and split_causal(q, T, len(pos_k), dropout_p):
                y = causal_sdpa_in_halves(q, k, v, mask, scale, {} if memo is None else memo)
            else:
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
                )
        else:
            bias = self.shared(  # (B or 1, H, T, Tk)
                position, memo, "bias", lambda: position.bias(self.layer, pos_q, pos_k, q, k, self)
            )
            scores = (q @ k.transpose(-1, -2)) * scale if self.content else 0.0  # (B, H, T, Tk)
            if bias is not None:
                scores = scores + bias
            if masked:
                visible = pos_k[None, :] <= pos_q[:, None]  # (T, Tk)
                scores = scores.masked_fill(~visible, float("-inf"))
            if scores.shape[0] != B:  # position-only variants: one pattern for the whole batch
                scores = scores.expand(B, -1, -1, -1)
            scores = self.hook_scores(scores)
            pattern = self.hook_pattern(F.softmax(scores, dim=-1))  # (B, H, T, Tk)
            y = self.attn_dropout(pattern) @ v  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.c_proj(y)


# CPU flash attention computes keys in 512-wide blocks: up to T = 512 a causal call does the whole
# T x T square and masks half of it. Two half-length query blocks (the first half causal over the
# first half of the keys, the second over all keys with a mask) compute 3/4 of the square.
# `python -m benchmarks model` times both forms, fwd + bwd, B=4 H=4 D=32, 2 threads: 1.15x at
# T=384, 448 and 512, 1.05x at 576, 1.02x at 640; 0.96x at 256 and 320 (the halves' smaller
# query blocks cost more than the skipped work), 0.93x at 768 (the kernel skips key blocks).
SPLIT_MIN_T, SPLIT_MAX_T = 384, 640


def split_causal(q: Tensor, T: int, Tk: int, dropout_p: float) -> bool:
    """Whether causal self-attention of T queries over T keys runs faster in two query halves:
    on CPU only (GPU flash kernels skip the masked blocks themselves), without attention
    dropout (kept to one SDPA call, whose dropout is the tested one)."""
    return q.device.type == "cpu" and T == Tk and SPLIT_MIN_T <= T <= SPLIT_MAX_T and not dropout_p


def causal_sdpa_in_halves(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, memo: dict
) -> Tensor:
    """Causal SDPA of q, k, v (B, H, T, D) as two query halves, without the masked keys of the
    first half. mask: None for plain causal attention, or an additive (.., T, T) mask that
    already holds -inf above the diagonal (alibi). memo: the forward pass's dict, which keeps
    the second half's causal mask for the other layers."""
    T = q.shape[2]
    h = T // 2
    if mask is None:  # the second half: query h + i sees keys 0 .. h + i
        key = ("lower_right", T, q.dtype, q.device)  # built once per forward pass
        if key not in memo:
            pos = torch.arange(T, device=q.device)
            future = pos[None, :] > pos[h:, None]  # (T - h, T)
            memo[key] = torch.zeros(future.shape, dtype=q.dtype, device=q.device).masked_fill_(
                future, float("-inf")
            )
        top_mask, bottom_mask = None, memo[key]
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


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # exact erf GELU (HF activation "gelu")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    """Pre-LN: x + attn(ln(x)), then x + mlp(ln(x)); modules registered in forward order."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = Attention(config, layer)
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        position: NoPosition,
        cache: KVCache | None,
        manual: bool,
        memo: dict,
    ) -> Tensor:
        x = self.hook_resid_pre(x)
        a = self.attn(self.ln_1(x), pos_q, pos_k, position, cache, manual, memo)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.resid_dropout(a)))
        m = self.mlp(self.ln_2(x))
        return self.hook_resid_post(x + self.hook_mlp_out(self.resid_dropout(m)))


class FinalNorm(nn.LayerNorm):
    """The last LayerNorm, with a hook on its output (TransformerLens' ln_final.hook_normalized)."""

    def __init__(self, n_embd: int, bias: bool) -> None:
        super().__init__(n_embd, bias=bias)
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_normalized(super().forward(x))


class GPT(nn.Module):
    """Token embedding -> position variant -> n_layer blocks -> LayerNorm -> tied unembedding."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.hook_embed = HookPoint()
        self.position = POSITIONS[config.position](config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_final = FinalNorm(config.n_embd, config.bias)
        self.unembed = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.unembed.weight = self.embed.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * config.n_layer) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Trainable parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch` sequences of up to `max_len` (default block_size)."""
        p = self.embed.weight
        return KVCache(self.config, batch, max_len or self.config.block_size, p.device, p.dtype)

    def forward(
        self,
        idx: Tensor,
        *,
        cache: KVCache | None = None,
        pos_offset: int = 0,
        manual: bool = False,
    ) -> Tensor:
        """idx (B, T) token ids -> logits (B, T, V).

        cache: continue the sequences it holds (idx are the next T tokens) and store their keys.
        pos_offset: the first position is pos_offset (same value on every call for one cache;
        shift-invariance tests use it). manual: force the manual attention path.
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        end = pos_offset + past + T
        limit = min(self.config.block_size, pos_offset + cache.max_len) if cache else None
        if end > (limit or self.config.block_size):
            raise ConfigError(
                f"sequence reaches position {end} but the model's block_size is "
                f"{self.config.block_size} (cache room {limit}); shorten the input "
                "or build the model with a larger block_size"
            )
        pos_k = torch.arange(pos_offset, end, device=idx.device)  # (Tk,) every key position
        pos_q = pos_k[past:]  # (T,) positions of idx
        x = self.position.embed(self.hook_embed(self.embed(idx)), pos_q)  # (B, T, C)
        x = self.drop(x)
        memo = {"span": (pos_offset, past, T)}  # what the layers' shared masks depend on
        for block in self.blocks:
            x = block(x, pos_q, pos_k, self.position, cache, manual, memo)
        if cache is not None:
            cache.length += T
        return self.unembed(self.ln_final(x))  # (B, T, V)
