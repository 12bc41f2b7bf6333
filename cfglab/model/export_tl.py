"""Export trained weights to TransformerLens (optional extra: `pip install cfglab[interp]`).

`to_transformer_lens(model)` builds a `HookedTransformer` (TransformerLens 3.x: 4.0 removed the
class; see README "From Python") that computes the same function with the same hook names:
cfglab's names are TransformerLens's (model/hooks.py), so `blocks.1.hook_resid_post`,
`blocks.0.attn.hook_pattern`, ... hold equal activations in both (a test checks every shared
name). TransformerLens has more names (ln1.hook_scale, attn.hook_rot_q, hook_pos_embed, ...).

Which variants it can express, through HookedTransformerConfig.positional_embedding_type:
    abs    'standard': learned W_pos added to the embedding (cfglab's position.wpe)
    nope   'standard' with W_pos = 0 (TransformerLens has no "none"; adding zeros is exact)
    rot    'rotary', GPT-NeoX pairing (rotary_adjacent_pairs=False: dim i with i + r/2 in the
           first r = rotary_dim dims), cfglab's rotary_base; the sin/cos tables are cfglab's
           own (float64 angles, cast; TransformerLens's float32 angles differ by ~3e-6)
    alibi  'alibi', causal, n_head a power of two: TransformerLens's slopes 2^(-8h/H) and bias
           -m (i - j) are then cfglab's (cfglab interleaves slopes for other head counts, and
           its encoder uses |i - j| on both sides, where TransformerLens's bias is one-sided)
Not expressible, refused with a ConfigError: rel (DeBERTa's disentangled terms), pos and uni
(attention without q.k), Canon layers (convolutions inside the block), and the lstm and ssm
families. Encoders of abs, rot and nope are exported with attention_dir='bidirectional'.

The export is float32 on the CPU in eval mode. cfglab without biases (bias=False) gets zero
biases; the unembedding (tied to the embedding in cfglab) is copied into W_U with b_U = 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cfglab.errors import ConfigError
from cfglab.model.gpt import GPT
from cfglab.model.positions import POSITIONS


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _standard(model: GPT) -> dict[str, Any]:
    return {"positional_embedding_type": "standard"}


def _rotary(model: GPT) -> dict[str, Any]:
    cfg = model.config
    return {
        "positional_embedding_type": "rotary",
        "rotary_dim": model.position.rot_dim,  # int(D * fraction) rounded down to even
        "rotary_base": cfg.rotary_base,
        "rotary_adjacent_pairs": False,  # GPT-NeoX's rotate_half, as positions.RotaryPosition
    }


def _alibi(model: GPT) -> dict[str, Any]:
    cfg = model.config
    if not cfg.causal or not _is_power_of_two(cfg.n_head):
        raise ConfigError(
            f"no TransformerLens export for this alibi model (causal={cfg.causal}, "
            f"n_head={cfg.n_head}): TransformerLens's ALiBi is causal and its head slopes "
            "equal cfglab's only for a power-of-two n_head; exportable: a causal alibi model "
            "with 1, 2, 4, 8, ... heads"
        )
    return {"positional_embedding_type": "alibi"}


# variant -> its HookedTransformerConfig position fields; the variants TransformerLens expresses
TL_POSITIONS: dict[str, Callable[[GPT], dict[str, Any]]] = {
    "abs": _standard,
    "nope": _standard,
    "rot": _rotary,
    "alibi": _alibi,
}
NOT_EXPRESSIBLE = {
    "rel": "DeBERTa's disentangled position terms",
    "pos": "attention that depends on positions only (no q.k)",
    "uni": "uniform attention over a window (no q.k)",
}


def _require_transformer_lens():
    try:
        import transformer_lens
    except ImportError:
        raise ConfigError(
            "exporting to TransformerLens needs the transformer-lens package: "
            "pip install 'cfglab[interp]'"
        ) from None
    try:  # 4.x's module raises ImportError for the names it removed (hasattr would too)
        transformer_lens.HookedTransformerConfig  # noqa: B018
    except (ImportError, AttributeError):
        raise ConfigError(
            f"transformer-lens {transformer_lens.__version__} has no HookedTransformer (removed "
            "in 4.0); install the version the interp extra names: pip install 'cfglab[interp]'"
        ) from None
    return transformer_lens


def check_exportable(model: nn.Module) -> None:
    """ConfigError naming what TransformerLens cannot express, before anything is built."""
    cfg = model.config
    if not isinstance(model, GPT) or cfg.canon:
        raise ConfigError(
            f"no TransformerLens export for family {cfg.family!r} with canon {cfg.canon!r}: "
            "a HookedTransformer has no recurrent or state-space layers and no convolutions "
            'inside its blocks; exportable: the transformer without Canon layers (canon "")'
        )
    if cfg.position not in TL_POSITIONS:
        what = NOT_EXPRESSIBLE.get(cfg.position, "this position variant")
        raise ConfigError(
            f"no TransformerLens export for position {cfg.position!r}: TransformerLens has no "
            f"{what}; exportable: {', '.join(TL_POSITIONS)}"
        )
    assert set(TL_POSITIONS) | set(NOT_EXPRESSIBLE) == set(POSITIONS)  # a new variant: decide


def tl_config(model: GPT) -> dict[str, Any]:
    """The HookedTransformerConfig arguments of `model`, as plain JSON values (what the export
    folder's config.json holds: `HookedTransformerConfig(**config)` rebuilds it)."""
    check_exportable(model)
    cfg = model.config
    return {
        "model_name": f"cfglab-{cfg.position}",
        "d_model": cfg.n_embd,
        "d_head": cfg.n_embd // cfg.n_head,
        "n_heads": cfg.n_head,
        "n_layers": cfg.n_layer,
        "n_ctx": cfg.block_size,
        "d_mlp": 4 * cfg.n_embd,
        "d_vocab": cfg.vocab_size,
        "act_fn": "gelu",  # exact erf GELU, as cfglab's nn.GELU()
        "eps": 1e-5,  # torch's LayerNorm default, which cfglab uses
        "normalization_type": "LN",
        "attention_dir": "causal" if cfg.causal else "bidirectional",
        "default_prepend_bos": False,  # cfglab's token ids already start with BOS (id 0)
        **TL_POSITIONS[cfg.position](model),
    }


def _heads(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """A q, k or v block of c_attn's weight (H*D, C) -> TransformerLens's (H, C, D)."""
    HD, C = w.shape
    return w.view(n_head, HD // n_head, C).transpose(1, 2)


def _zeros_if_none(bias: torch.Tensor | None, size: int) -> torch.Tensor:
    return torch.zeros(size) if bias is None else bias


def tl_state_dict(
    model: GPT, config: dict[str, Any], rotary_rows: int | None = None
) -> dict[str, torch.Tensor]:
    """cfglab's weights under HookedTransformer's parameter names and shapes (float32, CPU).
    rotary_rows: the positions of TransformerLens's rotary tables (it builds min(n_ctx, 2048)
    and extends them itself past that)."""
    cfg = model.config
    C, H = cfg.n_embd, cfg.n_head
    D = C // H
    sd = {"embed.W_E": model.embed.weight}
    if config["positional_embedding_type"] != "rotary":  # TransformerLens has W_pos but there
        wpe = getattr(model.position, "wpe", None)  # abs's; nope and alibi: 0 (alibi: unread)
        sd["pos_embed.W_pos"] = wpe.weight if wpe is not None else torch.zeros(cfg.block_size, C)
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}."
        for ln, ours in (("ln1", block.ln_1), ("ln2", block.ln_2)):
            sd[p + ln + ".w"], sd[p + ln + ".b"] = ours.weight, _zeros_if_none(ours.bias, C)
        w, b = block.attn.c_attn.weight, _zeros_if_none(block.attn.c_attn.bias, 3 * C)
        for j, name in enumerate("QKV"):  # rows [q heads | k heads | v heads]
            sd[p + f"attn.W_{name}"] = _heads(w[j * C : (j + 1) * C], H)  # (H, C, D)
            sd[p + f"attn.b_{name}"] = b[j * C : (j + 1) * C].view(H, D)  # (H, D)
        # c_proj (C_out, H*D): z (B, T, H, D) flattened -> W_O (H, D, C_out)
        sd[p + "attn.W_O"] = block.attn.c_proj.weight.T.reshape(H, D, C)
        sd[p + "attn.b_O"] = _zeros_if_none(block.attn.c_proj.bias, C)
        sd[p + "mlp.W_in"] = block.mlp.c_fc.weight.T  # (C, 4C)
        sd[p + "mlp.b_in"] = _zeros_if_none(block.mlp.c_fc.bias, 4 * C)
        sd[p + "mlp.W_out"] = block.mlp.c_proj.weight.T  # (4C, C)
        sd[p + "mlp.b_out"] = _zeros_if_none(block.mlp.c_proj.bias, C)
        if config["positional_embedding_type"] == "rotary":
            # cfglab's tables (block_size, D) with rotate_half's sign folded into sin's first
            # half; TransformerLens's are (rows, r) with the plain sin
            r = config["rotary_dim"]
            sign = torch.cat([-torch.ones(r // 2), torch.ones(r // 2)])
            sd[p + "attn.rotary_cos"] = model.position.cos[:rotary_rows, :r]
            sd[p + "attn.rotary_sin"] = model.position.sin[:rotary_rows, :r] * sign
    sd["ln_final.w"] = model.ln_final.weight
    sd["ln_final.b"] = _zeros_if_none(model.ln_final.bias, C)
    sd["unembed.W_U"] = model.unembed.weight.T  # (C, V)
    sd["unembed.b_U"] = torch.zeros(cfg.vocab_size)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}


@torch.no_grad()
def to_transformer_lens(model: GPT):
    """The same network as a TransformerLens `HookedTransformer` (eval mode, float32, CPU):
    equal logits and equal activations under every hook name the two share. ConfigError for
    a variant or family TransformerLens cannot express (see the module docstring)."""
    config = tl_config(model)  # refuses first, before TransformerLens is imported
    tl = _require_transformer_lens()
    with warnings.catch_warnings():  # 3.x's notice that 4.0 removes the class (module docstring)
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
        tl_cfg = tl.HookedTransformerConfig(init_weights=False, device="cpu", **config)
        ht = tl.HookedTransformer(tl_cfg)
    rows = getattr(ht.blocks[0].attn, "rotary_cos", torch.empty(0)).shape[0]
    missing, unexpected = ht.load_state_dict(tl_state_dict(model, config, rows), strict=False)
    # what the export does not set: TransformerLens's own masks and constants (buffers)
    assert not unexpected and all(k.endswith(("attn.mask", "attn.IGNORE")) for k in missing)
    return ht.eval()
