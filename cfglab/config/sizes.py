"""Parameter counts of every model family from its shape, without torch, and the width that
matches a target count (`model.match_params_to`, resolved when a config loads).

A count is a closed form of the shape; a test holds it equal to the built model's
`num_params()` for every family, position variant, Canon set, causal flag and bias, so the two
cannot drift. The width search needs no model and no grammar: it matches the parameters
*besides the token embedding* (tied with the unembedding, V x C), the only part that depends on
the grammar's vocabulary. For the cfg vocabularies (V <= ~30) that part is under 1% of any
model worth training (V x C against ~12 C^2 per block), so the whole counts match as closely.

    matched_width(cfg.model, 450_000, max_width=65_536)   # -> n_embd
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from cfglab.config.schema import (
    FAMILY_NAMES,
    MODEL_FAMILIES,
    POSITION_NAMES,
    PRESETS,
    registry,
)

# The SSM block's fixed proportions (Mamba2's defaults, at CPU scale); cfglab.model.ssm reads them
SSM_EXPAND = 2  # inner width = SSM_EXPAND * n_embd, split into n_head heads
SSM_STATE = 32  # N: state size per head dim (Mamba2's d_state; 128 there, at GPU scale)
SSM_CONV = 4  # taps of the SSM's own short causal convolution (Mamba2's d_conv)
WIDTH_STEP = 8  # lstm and ssm widths are multiples of 8 (and of n_head)


def _norm(m: Any, C: int) -> int:
    return C + (C if m.bias else 0)  # LayerNorm weight (+ bias)


def _linear(m: Any, n_in: int, n_out: int) -> int:
    return n_in * n_out + (n_out if m.bias else 0)


# position variant -> (has q and k projections, its own parameters); cfglab.model.positions
_POSITIONS: dict[str, tuple[bool, Callable[[Any], int]]] = registry(
    POSITION_NAMES,
    {
        "abs": (True, lambda m: m.block_size * m.n_embd),  # wpe
        "rel": (True, lambda m: (2 * m.rel_max_distance + 1) * m.n_embd),  # the shared table
        "rot": (True, lambda m: 0),
        "pos": (False, lambda m: m.n_layer * m.n_head * _distances(m)),  # one logit per distance
        "uni": (False, lambda m: 0),
        "nope": (True, lambda m: 0),
        "alibi": (True, lambda m: 0),
    },
    "cfglab.config.sizes._POSITIONS",
)


def _distances(m: Any) -> int:
    """pos's table length: i - j in 0..T-1 (causal) or -(T-1)..T-1 (encoder)."""
    return m.block_size if m.causal else 2 * m.block_size - 1


def canon_channels(m: Any) -> dict[str, int]:
    """Channels of each Canon site in one block of a transformer: A and C the residual width,
    B the q, k, v projections (v only for the position-only variants), D the MLP's 4C."""
    C = m.n_embd
    qkv = 3 * C if _POSITIONS[m.position][0] else C
    return {"A": C, "B": qkv, "C": C, "D": 4 * C}


def canon_taps(kernel: int, causal: bool) -> int:
    """Weights per channel: the current and kernel - 1 previous positions (causal), or kernel - 1
    on each side and the current one (the encoder's two-sided kernel)."""
    return kernel if causal else 2 * kernel - 1


def _transformer(m: Any) -> int:
    C = m.n_embd
    has_qk, own = _POSITIONS[m.position]
    qkv = 3 * C if has_qk else C
    block = 2 * _norm(m, C) + _linear(m, C, qkv) + _linear(m, C, C)
    block += _linear(m, C, 4 * C) + _linear(m, 4 * C, C)
    channels = canon_channels(m)
    block += sum(channels[s] for s in m.canon) * canon_taps(m.canon_kernel, m.causal)
    return m.n_layer * block + own(m) + _norm(m, C)


def _lstm(m: Any) -> int:
    C = m.n_embd
    layer = 8 * C * C + (8 * C if m.bias else 0)  # W_ih, W_hh (4 gates each), b_ih, b_hh
    return m.n_layer * layer + _norm(m, C)


def _ssm(m: Any) -> int:
    C, H = m.n_embd, m.n_head
    inner, N = SSM_EXPAND * C, SSM_STATE
    conv = inner + 2 * N  # x, B, C go through the short convolution
    block = _norm(m, C) + C * (2 * inner + 2 * N + H)  # in_proj -> z, x, B, C, dt (no bias)
    block += conv * SSM_CONV + conv  # depthwise weights and bias
    block += 3 * H + inner + inner * C  # dt_bias, A_log, D; gated RMSNorm; out_proj (no bias)
    return m.n_layer * block + _norm(m, C)


# family -> parameters besides the token embedding, given a shape (preset sizes applied)
_BODY: dict[str, Callable[[Any], int]] = registry(
    FAMILY_NAMES,
    {"transformer": _transformer, "lstm": _lstm, "ssm": _ssm},
    "cfglab.config.sizes._BODY",
)


def count_params(m: Any, vocab_size: int) -> int:
    """Trainable parameters of the model of shape `m` (a ModelShape, or a GPTConfig, with
    n_layer/n_head/n_embd given, not a preset), the tied embedding counted once."""
    return _BODY[m.family](m) + vocab_size * m.n_embd


def width_step(m: Any) -> int:
    """n_embd is a multiple of this: n_head for the transformer, also of 8 for lstm and ssm."""
    return m.n_head if MODEL_FAMILIES[m.family] else math.lcm(WIDTH_STEP, m.n_head)


def target_params(m: Any) -> int:
    """model.match_params_to as a count besides the token embedding: a number as given, or the
    preset's plain transformer (no Canon) with this config's position, bias, window, objective."""
    target = m.match_params_to
    if isinstance(target, int):
        return target
    sizes = dict(PRESETS[target], family="transformer", canon="")
    return count_params(dataclasses.replace(m, **sizes), 0)


def matched_width(m: Any, target: int, max_width: int) -> int:
    """The n_embd (a multiple of width_step(m), at most max_width, and with a head wide enough
    for its rotary dims) whose count besides the token embedding is nearest `target`; the
    smaller one on a tie. Counts grow with the width, so this bisects."""
    step = width_step(m)
    lo = 1  # smallest multiple whose heads rotate >= 2 dims (the shape rule of validate.py)
    while int(lo * step // m.n_head * m.rotary_fraction) < 2:
        lo += 1
    hi = max(lo, max_width // step)

    def count(k: int) -> int:
        return count_params(dataclasses.replace(m, n_embd=k * step), 0)

    a, b = lo, hi  # the first k in lo..hi with count(k) >= target (hi if none)
    while a < b:
        mid = (a + b) // 2
        if count(mid) >= target:
            b = mid
        else:
            a = mid + 1
    if a > lo and target - count(a - 1) <= count(a) - target:
        a -= 1
    return a * step
