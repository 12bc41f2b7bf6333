"""The `lstm` family: a stacked LSTM with the GPT's token embedding, width and tied unembedding,
the recurrent baseline of the formal-language literature (e.g. FLaRe's LSTMs).

    token embedding -> n_layer LSTM layers of width n_embd -> LayerNorm -> tied unembedding

Each layer is its own single-layer `nn.LSTM` (torch's fused kernel), stacked without residuals
or dropout between them, which is what `nn.LSTM(num_layers=n_layer)` computes; one module per
layer gives every layer its hook, `blocks.{i}.hook_resid_post` (the layer's output sequence,
(B, T, C)), the name probes and the other analyses read in every family. Also `hook_embed` and
`ln_final.hook_normalized`. Weights: torch's LSTM init (uniform in +-1/sqrt(C)); the embedding
as the GPT's (normal, std 0.02). `dropout` applies to each layer's input, as the GPT's to its
embedding.

The model is causal by construction and has no positions (`position`, `canon` do not apply;
config validation refuses Canon and the encoder objective for it). `block_size` still bounds a
sequence, so every family is evaluated on the same windows. Decoding carries each layer's (h, c)
in an `LSTMState`, so generating with the state equals the full forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cfglab.model.gpt import FinalNorm, GPTConfig, check_room
from cfglab.model.hooks import HookPoint, hook_points


class LSTMState:
    """The recurrent state of every layer: h, c each (n_layer, B, C); `length` positions seen.
    The same interface as the GPT's KVCache (generate() calls select and reads max_len)."""

    def __init__(self, config: GPTConfig, batch: int, max_len: int, device=None, dtype=None):
        shape = (config.n_layer, batch, config.n_embd)
        self.h = torch.zeros(shape, device=device, dtype=dtype)
        self.c = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def select(self, rows: Tensor) -> None:
        """Keep only batch rows `rows`."""
        self.h, self.c = self.h[:, rows], self.c[:, rows]


class LSTMBlock(nn.Module):
    """One LSTM layer and the hook on its output."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C = config.n_embd
        self.lstm = nn.LSTM(C, C, num_layers=1, bias=config.bias, batch_first=True)
        self.hook_resid_post = HookPoint()

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple]:
        """x (B, T, C), state (h, c) each (1, B, C) or None (zeros) -> (B, T, C), new state."""
        y, new_state = self.lstm(x, state)
        return self.hook_resid_post(y), new_state


class LSTMModel(nn.Module):
    """Token embedding -> n_layer LSTM layers -> LayerNorm -> tied unembedding."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        nn.init.normal_(self.embed.weight, mean=0.0, std=0.02)
        self.hook_embed = HookPoint()
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(LSTMBlock(config) for _ in range(config.n_layer))
        self.ln_final = FinalNorm(config.n_embd, config.bias)
        self.unembed = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.unembed.weight = self.embed.weight  # tied, as the GPT's
        hook_points(self)

    def num_params(self) -> int:
        """Trainable parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, max_len: int | None = None) -> LSTMState:
        """An empty state for `batch` sequences of up to `max_len` (default block_size)."""
        p = self.embed.weight
        return LSTMState(self.config, batch, max_len or self.config.block_size, p.device, p.dtype)

    def forward(
        self,
        idx: Tensor,
        *,
        cache: LSTMState | None = None,
        pos_offset: int = 0,
        manual: bool = False,
    ) -> Tensor:
        """idx (B, T) -> logits (B, T, V). cache: continue the sequences it holds. pos_offset and
        manual are the GPT's arguments and change nothing here (no positions, no attention)."""
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        limit = min(self.config.block_size, cache.max_len) if cache else self.config.block_size
        check_room(self.config, past + T, limit)
        x = self.hook_embed(self.embed(idx))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = self.drop(x)
            if cache is None:
                x, _ = block(x, None)
                continue
            state = (cache.h[i : i + 1].to(x.dtype), cache.c[i : i + 1].to(x.dtype))
            x, (h, c) = block(x, state)
            cache.h[i], cache.c[i] = h[0], c[0]
        if cache is not None:
            cache.length += T
        return self.unembed(self.ln_final(x))  # (B, T, V)
