"""Export trained weights to Hugging Face `transformers` (optional extra: `pip install cfglab[hf]`).

`abs` becomes a GPT-2 (`GPT2LMHeadModel`, the same architecture); `rot` becomes a GPT-NeoX
(`GPTNeoXForCausalLM`, sequential residual, rotary on the same share of dims). The other variants
have no standard Hugging Face architecture, and neither have Canon layers and the lstm and ssm
families. A test checks that the exported model's logits equal
ours.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cfglab.errors import ConfigError
from cfglab.model.gpt import GPT


def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "exporting needs the transformers package: pip install 'cfglab[hf]' "
            "(or pip install transformers)"
        ) from None
    return transformers


def _copy(dst: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    dst.weight.copy_(weight)
    if bias is not None:
        dst.bias.copy_(bias)


def _to_gpt2(model: GPT) -> nn.Module:
    tf = _require_transformers()
    cfg = model.config
    hf = tf.GPT2LMHeadModel(
        tf.GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.block_size,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            activation_function="gelu",
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            layer_norm_epsilon=1e-5,
            tie_word_embeddings=True,
        )
    )
    t = hf.transformer
    _copy(t.wte, model.embed.weight)
    _copy(t.wpe, model.position.wpe.weight)
    for ours, theirs in zip(model.blocks, t.h, strict=True):
        _copy(theirs.ln_1, ours.ln_1.weight, ours.ln_1.bias)
        _copy(theirs.ln_2, ours.ln_2.weight, ours.ln_2.bias)
        # GPT-2's Conv1D stores (in, out): the transpose of nn.Linear
        _copy(theirs.attn.c_attn, ours.attn.c_attn.weight.T, ours.attn.c_attn.bias)
        _copy(theirs.attn.c_proj, ours.attn.c_proj.weight.T, ours.attn.c_proj.bias)
        _copy(theirs.mlp.c_fc, ours.mlp.c_fc.weight.T, ours.mlp.c_fc.bias)
        _copy(theirs.mlp.c_proj, ours.mlp.c_proj.weight.T, ours.mlp.c_proj.bias)
    _copy(t.ln_f, model.ln_final.weight, model.ln_final.bias)
    return hf


def _to_neox(model: GPT) -> nn.Module:
    tf = _require_transformers()
    cfg = model.config
    C, H = cfg.n_embd, cfg.n_head
    D = C // H
    if int(D * cfg.rotary_fraction) % 2:
        raise ConfigError(
            f"GPT-NeoX rotates int(head_dim * fraction) = "
            f"{int(D * cfg.rotary_fraction)} dims, an odd number; cfglab rounds down "
            "to even: choose a rotary_fraction giving an even count"
        )
    hf = tf.GPTNeoXForCausalLM(
        tf.GPTNeoXConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=C,
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=H,
            intermediate_size=4 * C,
            hidden_act="gelu",
            max_position_embeddings=cfg.block_size,
            use_parallel_residual=False,
            layer_norm_eps=1e-5,
            attention_bias=True,
            tie_word_embeddings=False,
            hidden_dropout=cfg.dropout,
            attention_dropout=cfg.dropout,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": cfg.rotary_base,
                "partial_rotary_factor": cfg.rotary_fraction,
            },
        )
    )
    g = hf.gpt_neox
    _copy(g.embed_in, model.embed.weight)
    for ours, theirs in zip(model.blocks, g.layers, strict=True):
        _copy(theirs.input_layernorm, ours.ln_1.weight, ours.ln_1.bias)
        _copy(theirs.post_attention_layernorm, ours.ln_2.weight, ours.ln_2.bias)
        # ours: rows [q heads | k heads | v heads]; NeoX: per head [q_h | k_h | v_h]
        w = ours.attn.c_attn.weight.view(3, H, D, C).transpose(0, 1).reshape(3 * C, C)
        b = ours.attn.c_attn.bias.view(3, H, D).transpose(0, 1).reshape(3 * C)
        _copy(theirs.attention.query_key_value, w, b)
        _copy(theirs.attention.dense, ours.attn.c_proj.weight, ours.attn.c_proj.bias)
        _copy(theirs.mlp.dense_h_to_4h, ours.mlp.c_fc.weight, ours.mlp.c_fc.bias)
        _copy(theirs.mlp.dense_4h_to_h, ours.mlp.c_proj.weight, ours.mlp.c_proj.bias)
    _copy(g.final_layer_norm, model.ln_final.weight, model.ln_final.bias)
    _copy(hf.embed_out if hasattr(hf, "embed_out") else hf.lm_head, model.unembed.weight)
    return hf


# variant -> exporter; the variants Hugging Face has an architecture for
EXPORTERS: dict[str, Callable[[GPT], nn.Module]] = {"abs": _to_gpt2, "rot": _to_neox}


@torch.no_grad()
def to_hf(model: GPT) -> nn.Module:
    """The same network as a `transformers` model (eval mode, float32, on the CPU)."""
    cfg = model.config
    if not isinstance(model, GPT) or cfg.canon:
        raise ConfigError(
            f"no Hugging Face export for family {cfg.family!r} with canon {cfg.canon!r}; "
            'exportable: the transformer without Canon layers (canon "")'
        )
    if cfg.position not in EXPORTERS:
        raise ConfigError(
            f"no Hugging Face export for position {cfg.position!r}; exportable: "
            f"{', '.join(EXPORTERS)}"
        )
    if not cfg.causal or not cfg.bias:
        raise ConfigError(
            "Hugging Face export needs a causal model with biases (causal=True, bias=True)"
        )
    return EXPORTERS[cfg.position](model).eval()  # copy_ converts dtype and device


def export_hf(model: GPT, out_dir: str | Path) -> Path:
    """Write the exported model to `out_dir` (`save_pretrained`: config.json + safetensors)."""
    out = Path(out_dir)
    to_hf(model).save_pretrained(out)
    return out
