"""One readable Transformer: the paper's GPT variants (causal) and the masked-LM encoder.

GPT-2 style pre-LayerNorm blocks in nanoGPT's vocabulary (n_layer, n_head, n_embd, block_size,
vocab_size, dropout). How attention sees positions is the one thing that varies; it is a module
from `positions.POSITIONS`, called at three fixed seams (input embedding, q/k transform, logit
term). `causal=False` makes the same network a bidirectional encoder (the BERT/DeBERTa
comparison; the masked-LM loss lives in train/objectives.py).

Attention runs through `F.scaled_dot_product_attention` where the variant allows it, or through
a manual path that materialises the pattern (for the hook_attn_scores / hook_pattern hooks,
`manual=True`, and the position-only variants); a test keeps both equal. A `KVCache` makes
generation cost O(T) per token.

Activations pass through identity `HookPoint`s with TransformerLens's names and places (the
table is in hooks.py): hooks may read or replace them on either attention path and with a cache.
In attention, hook_q/k/v come right after the projection c_attn and before every position seam
that touches q, k (rot's rotation; rel's and alibi's logit terms are added to the scores, which
hook_attn_scores sees); abs's embedding is added before the blocks (in hook_resid_pre, after
hook_embed).

Canon layers (`canon`, a subset of "ABCD"; canon.py) sit at four seams of a block: A after ln_1,
B on c_attn's q, k, v (before hook_q/k/v and every position seam), C after ln_2, D on c_fc's
output (after mlp.hook_pre, before GELU); each output passes through blocks.{i}.hook_canon_{a,b,
c,d}. Without Canon the block runs exactly as before (no extra op). The KV cache keeps each
causal Canon layer's last K - 1 inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfglab.config.schema import ModelShape
from cfglab.config.sizes import canon_channels
from cfglab.config.validate import check_model_shape
from cfglab.errors import ConfigError
from cfglab.model.canon import Canon, ConvStates
from cfglab.model.causal_halves import causal_sdpa_in_halves, split_causal
from cfglab.model.hooks import HookPoint, hook_points
from cfglab.model.positions import POSITIONS, NoPosition, Span


@dataclass(kw_only=True)
class GPTConfig(ModelShape):
    """The network's shape, position variant and variant parameters (every field of
    `cfglab.config.ModelShape`, so the config and the model cannot drift), plus the vocabulary
    size, which comes from the grammar."""

    vocab_size: int  # BOS, terminals, EOS, MASK, PAD: cfglab.data.vocab.Vocab.size


def check_config(cfg: GPTConfig) -> None:
    """ConfigError naming the field and the fix; cheap, so it runs before anything is allocated.
    The shape rules are the config's own (cfglab.config.validate.check_model_shape)."""
    if cfg.position not in POSITIONS:
        raise ConfigError(
            f"unknown position variant {cfg.position!r}; choose one of {', '.join(POSITIONS)}"
        )
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "rel_max_distance"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"model {name} must be a positive integer, got {value!r}")
    check_model_shape(cfg, "model.")


class KVCache:
    """Keys and values of the positions seen so far, preallocated to `max_len`.

    k, v: (n_layer, B, H, max_len, D); k is None for position-only variants (no keys).
    Keys are stored after the q/k transform (rotated, for rot), and k, v after their hooks
    (hook_k, hook_v), so a patch applied at every call patches the cached positions once.
    conv: each Canon layer's last K - 1 inputs, (B, K-1, channels), by the layer's key.
    """

    def __init__(self, config: GPTConfig, batch: int, max_len: int, device=None, dtype=None):
        H, D = config.n_head, config.n_embd // config.n_head
        shape = (config.n_layer, batch, H, max_len, D)
        has_k = POSITIONS[config.position].content
        self.k = torch.zeros(shape, device=device, dtype=dtype) if has_k else None
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions filled (advanced by GPT.forward after all layers)
        self.conv: ConvStates = {}  # filled by the Canon layers on their first call

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
        self.conv = {key: state[rows] for key, state in self.conv.items()}


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
        # TransformerLens's names and places, in forward order (hooks.py has the table); the
        # position-only variants have no q, k and so no hook_q, hook_k
        if self.content:
            self.hook_q = HookPoint()  # (B, T, H, D) after W_q, before position.rotate
            self.hook_k = HookPoint()  # (B, T, H, D) after W_k, before position.rotate
        self.hook_v = HookPoint()  # (B, T, H, D) after W_v
        self.hook_attn_scores = HookPoint()  # (B, H, T, Tk) logits, -inf where masked
        self.hook_pattern = HookPoint()  # (B, H, T, Tk) softmax of the logits
        self.hook_z = HookPoint()  # (B, T, H, D) pattern @ v, what c_proj receives

    def split_heads(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)

    def project_qk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """This layer's W_q, W_k applied to rows x (N, C) -> q, k each (H, N, D): what a variant
        that declares `needs_projection` (rel) is given."""
        C = x.shape[-1]
        w, b = self.c_attn.weight, self.c_attn.bias
        q = F.linear(x, w[:C], None if b is None else b[:C])
        k = F.linear(x, w[C : 2 * C], None if b is None else b[C : 2 * C])
        return self.split_heads(q[None])[0], self.split_heads(k[None])[0]

    def forward(
        self,
        x: Tensor,
        span: Span,
        position: NoPosition,
        cache: KVCache | None = None,
        manual: bool = False,
        canon_b: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """x (B, T, C) at the query positions of `span` (its keys: every position, cached ones
        included). canon_b: the block's Canon layer B, applied to the projections."""
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        qkv = self.c_attn(x)  # (B, T, 3C), or (B, T, C): v only
        if canon_b is not None:
            qkv = canon_b(qkv)  # same shape, mixed over the last canon_kernel positions
        if self.content:
            # split as nanoGPT does: SDPA returns the gradients of q, k, v in (B, T, H, D) memory
            # order, so the backward of these views is a single cat into (B, T, 3C)
            q, k, v = (t.view(B, T, H, D) for t in qkv.split(C, dim=2))  # (B, T, H, D) each
            # the hooks see (and may replace) the projections; the position transform follows
            q = position.rotate(self.hook_q(q).transpose(1, 2), span.q)  # (B, H, T, D)
            k = position.rotate(self.hook_k(k).transpose(1, 2), span.q)  # (B, H, T, D)
        else:
            q, k, v = None, None, qkv.view(B, T, H, D)
        v = self.hook_v(v).transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, H, Tk, D)
        # causal: key j visible to query i iff pos_k[j] <= pos_q[i]; the last key is the last
        # query, so a single query (decoding) sees every key and needs no mask
        masked = self.causal and T > 1
        scale = position.scale(D)
        dropout_p = self.dropout if self.training else 0.0
        project = self.project_qk if position.needs_projection else None

        def bias() -> Tensor | None:  # (B or 1, H, T, Tk): the variant's logit term
            return position.bias(self.layer, span, q, k, v.dtype, project)

        # SDPA exposes neither logits nor pattern: hooking them takes the manual path
        if (
            self.use_sdpa
            and not manual
            and not self.hook_attn_scores.is_active
            and not self.hook_pattern.is_active
        ):
            y = self.sdpa(q, k, v, span, position, bias, masked, scale, dropout_p)
        else:
            logit_bias = position.shared(self.layer, "bias", span, v.dtype, bias)
            scores = (q @ k.transpose(-1, -2)) * scale if self.content else 0.0  # (B, H, T, Tk)
            if logit_bias is not None:
                scores = scores + logit_bias
            if masked:
                visible = span.k[None, :] <= span.q[:, None]  # (T, Tk)
                scores = scores.masked_fill(~visible, float("-inf"))
            if scores.shape[0] != B:  # position-only variants: one pattern for the whole batch
                scores = scores.expand(B, -1, -1, -1)
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(F.softmax(scores, dim=-1))  # (B, H, T, Tk)
            y = self.attn_dropout(pattern) @ v  # (B, H, T, D)
        z = self.hook_z(y.transpose(1, 2))  # (B, T, H, D)
        return self.c_proj(z.reshape(B, T, C))  # (B, T, C): heads side by side

    def sdpa(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        span: Span,
        position: NoPosition,
        bias: Callable[[], Tensor | None],
        masked: bool,
        scale: float,
        dropout_p: float,
    ) -> Tensor:
        """The fast path: q (B, H, T, D), k, v (B, H, Tk, D) -> (B, H, T, D) through
        F.scaled_dot_product_attention, with the variant's logit term (bias()) as its mask."""
        T = q.shape[2]

        def sdpa_mask() -> tuple[Tensor | None, bool]:
            mask = bias()
            is_causal = mask is None and masked and T == len(span.k)  # SDPA's fast causal
            if masked and not is_causal:
                visible = span.k[None, :] <= span.q[:, None]  # (T, Tk)
                # one float mask with -inf for the future (SDPA takes no causal flag
                # beside a mask). Measured for alibi, fwd + bwd per layer: this ~1.07x
                # plain causal SDPA; the CPU flash op called with both a causal flag and
                # the mask costs the same (the cost is adding the mask, not the blocks
                # after the diagonal); alibi folded into an extra q.k dim 1.17x; manual 1.2x
                mask = visible if mask is None else mask.masked_fill(~visible, float("-inf"))
            return mask, is_causal

        mask, is_causal = position.shared(self.layer, "sdpa", span, v.dtype, sdpa_mask)
        if masked and split_causal(q, T, len(span.k), dropout_p):
            return causal_sdpa_in_halves(q, k, v, mask, scale)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.hook_pre = HookPoint()  # (B, T, 4C) pre-activation
        self.gelu = nn.GELU()  # exact erf GELU (HF activation "gelu")
        self.hook_post = HookPoint()  # (B, T, 4C) the neurons, after GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: Tensor, canon_d: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """x (B, T, C); canon_d: the block's Canon layer D, applied before GELU."""
        h = self.hook_pre(self.c_fc(x))  # (B, T, C) -> (B, T, 4C)
        if canon_d is not None:
            h = canon_d(h)
        return self.c_proj(self.hook_post(self.gelu(h)))  # (B, T, C)


class Block(nn.Module):
    """Pre-LN: x + attn(ln(x)), then x + mlp(ln(x)); modules registered in forward order."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.add_canon(config, layer, "AB")
        self.attn = Attention(config, layer)
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.add_canon(config, layer, "CD")
        self.mlp = MLP(config)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        self.resid_dropout = nn.Dropout(config.dropout)

    def add_canon(self, config: GPTConfig, layer: int, sites: str) -> None:
        """Canon layers canon_{a..d} and their hooks hook_canon_{a..d} for the configured
        `sites` among these, registered in forward order (hook_points lists them so)."""
        channels = canon_channels(config)  # site -> channels (B: v only without q, k)
        for site in sites:
            if site in config.canon:
                kernel, causal, residual = config.canon_kernel, config.causal, config.canon_residual
                key, dense = f"{layer}.{site}", site in "AC"  # A, C feed a Linear
                canon = Canon(channels[site], kernel, causal, residual, key, dense)
                setattr(self, f"canon_{site.lower()}", canon)
                setattr(self, f"hook_canon_{site.lower()}", HookPoint())  # the Canon's output

    def canon(self, site: str, states: ConvStates | None) -> Callable[[Tensor], Tensor] | None:
        """Canon layer `site` followed by its hook, as a function of its input; None without."""
        layer = getattr(self, f"canon_{site}", None)
        if layer is None:
            return None
        hook = getattr(self, f"hook_canon_{site}")
        return lambda h: hook(layer(h, states))

    def forward(
        self, x: Tensor, span: Span, position: NoPosition, cache: KVCache | None, manual: bool
    ) -> Tensor:
        x = self.hook_resid_pre(x)
        states = cache.conv if cache is not None else None
        canon_a, canon_b, canon_c, canon_d = (self.canon(s, states) for s in "abcd")
        h = self.ln_1(x)
        h = canon_a(h) if canon_a else h
        a = self.attn(h, span, position, cache, manual, canon_b)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.resid_dropout(a)))
        h = self.ln_2(x)
        h = canon_c(h) if canon_c else h
        m = self.mlp(h, canon_d)
        return self.hook_resid_post(x + self.hook_mlp_out(self.resid_dropout(m)))


class FinalNorm(nn.LayerNorm):
    """The last LayerNorm. Its hook sees what TransformerLens's ln_final.hook_normalized sees:
    (x - mean) / std, before the LayerNorm's weight and bias are applied."""

    def __init__(self, n_embd: int, bias: bool) -> None:
        super().__init__(n_embd, bias=bias)
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        normalized = F.layer_norm(x, self.normalized_shape, None, None, self.eps)  # (B, T, C)
        out = self.hook_normalized(normalized) * self.weight
        return out + self.bias if self.bias is not None else out


def check_room(config: GPTConfig, end: int, limit: int | None) -> None:
    """ConfigError before a forward pass would reach position `end` past the block size or
    past `limit`, a cache's room (every family's forward checks the same way)."""
    if end > (limit or config.block_size):
        raise ConfigError(
            f"sequence reaches position {end} but the model's block_size is "
            f"{config.block_size} (cache room {limit}); shorten the input or build the model "
            "with a larger block_size"
        )


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
        hook_points(self)  # names each HookPoint (hook.name), as TransformerLens's setup() does

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
        """An empty KV cache for `batch` sequences of up to `max_len` (default block_size), in
        the dtype the layers will produce: the autocast dtype when autocast is on (an fp32 cache
        would be cast back to bf16 on every read: twice the memory and three times the
        attention's memory traffic, for the same values), else the weights' dtype."""
        p = self.embed.weight
        dtype = p.dtype
        if torch.is_autocast_enabled(p.device.type) and p.dtype == torch.float32:
            dtype = torch.get_autocast_dtype(p.device.type)
        return KVCache(self.config, batch, max_len or self.config.block_size, p.device, dtype)

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
        check_room(self.config, end, limit)
        pos_k = torch.arange(pos_offset, end, device=idx.device)  # (Tk,) every key position
        span = Span(q=pos_k[past:], k=pos_k, key=(pos_offset, past, T))
        x = self.position.embed(self.hook_embed(self.embed(idx)), span.q)  # (B, T, C)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, span, self.position, cache, manual)
        if cache is not None:
            cache.length += T
        return self.unembed(self.ln_final(x))  # (B, T, V)
