"""Export trained weights to Hugging Face `transformers` (optional extra: `pip install cfglab[hf]`).

`abs` becomes a GPT-2 (`GPT2LMHeadModel`, the same architecture); `rot` becomes a GPT-NeoX
(`GPTNeoXForCausalLM`, sequential residual, rotary on the same share of dims). The other variants
have no standard Hugging Face architecture, and neither have Canon layers and the lstm and ssm
families. A test checks that the exported model's logits equal ours.

The model's config carries cfglab's special-token ids (BOS 0, EOS, MASK and PAD after the
terminals: cfglab.data.vocab), not the architectures' defaults (GPT-2's 50256 lies outside a
grammar's vocabulary), so `generate()` stops at EOS with no extra argument. `export_folder`
writes a folder `from_pretrained` reads: the model, a word-level tokenizer of the grammar's
terminals (a string is its terminals separated by spaces; BOS is prepended), the grammar and a
model card (cfglab.stages.export: `cfglab export RUN -o DIR`). The tokenizer has no unknown
token: the model has no id for one, so a word that is not a terminal is refused (tokenizers
raises "Missing [UNK] token") rather than read as another token.

TransformerLens (the `interp` extra) is export_tl.py: `to_transformer_lens(model)`, and
`export_tl_folder` here writes its weights and config (`cfglab export RUN --to
transformer-lens -o DIR`).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from cfglab.data.vocab import Vocab
from cfglab.errors import ConfigError
from cfglab.model.export_tl import tl_config, to_transformer_lens
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
    """The same network as a `transformers` model (eval mode, float32, on the CPU), with
    cfglab's special-token ids in its config and generation config."""
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
    hf = EXPORTERS[cfg.position](model).eval()  # copy_ converts dtype and device
    ids = Vocab.special_ids(cfg.vocab_size)
    for target in (hf.config, hf.generation_config):
        target.bos_token_id, target.eos_token_id = ids["bos"], ids["eos"]
        target.pad_token_id = ids["pad"]
    return hf


def hf_tokenizer(vocab: Vocab):
    """A `transformers` fast tokenizer for the grammar's tokens: one id per terminal name, the
    names separated by whitespace, BOS prepended (cfglab's strings start with it)."""
    tf = _require_transformers()
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    except ImportError:
        raise ConfigError(
            "exporting a tokenizer needs the tokenizers package: pip install 'cfglab[hf]'"
        ) from None
    names = vocab.token_names()
    # no unk_token: a word that is not a terminal is an error, never silently another id
    tok = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab.bos)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins the names with spaces
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        mask_token="<mask>",
        pad_token="<pad>",
    )


def export_hf(model: GPT, out_dir: str | Path) -> Path:
    """Write the exported model to `out_dir` (`save_pretrained`: config.json + safetensors)."""
    out = Path(out_dir)
    to_hf(model).save_pretrained(out)
    return out


def export_folder(model: GPT, grammar, out_dir: str | Path, card: str) -> Path:
    """The exported model, its tokenizer, the grammar (grammar.cfg) and a model card
    (README.md) as a folder `from_pretrained` reads. Refused before any write: a variant
    without an export, or an `out_dir` that exists and is not an empty folder; a failed write
    (a full disk) leaves nothing (one PathError)."""
    from cfglab import rundir
    from cfglab.data.lines import new_output_folder

    out = _new_folder(out_dir)
    hf = to_hf(model)  # refuses the variants without an export
    tokenizer = hf_tokenizer(Vocab.from_grammar(grammar))
    bars = _require_transformers().utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # a bar per one-shard write is noise (and breaks one-line errors)
    try:
        with new_output_folder(out) as tmp:  # out appears whole or not at all
            try:
                hf.save_pretrained(tmp)
            except SafetensorError as exc:  # safetensors' I/O errors are not OSErrors
                raise _as_os_error(exc) from None
            tokenizer.save_pretrained(tmp)
            rundir.write_text_atomic(tmp / "grammar.cfg", grammar.to_text())
            rundir.write_text_atomic(tmp / "README.md", card)
    finally:
        if shown:
            bars.enable_progress_bar()
    return out


def export_tl_folder(model: GPT, grammar, out_dir: str | Path, card: str) -> Path:
    """The TransformerLens export as a folder: model.safetensors (the HookedTransformer's state
    dict), config.json (its HookedTransformerConfig arguments), grammar.cfg and README.md (the
    card). No pickle: `HookedTransformer(HookedTransformerConfig(**json.load(config)))` and
    `load_state_dict(safetensors.torch.load_file(...))` read it back (README "From Python").
    Refused before any write as export_folder is; a failed write leaves nothing."""
    from cfglab import rundir
    from cfglab.data.lines import new_output_folder

    out = _new_folder(out_dir)
    ht = to_transformer_lens(model)  # refuses what TransformerLens cannot express
    state = {k: v.contiguous() for k, v in ht.state_dict().items()}
    with new_output_folder(out) as tmp:
        try:
            safetensors.torch.save_file(state, tmp / "model.safetensors")
        except SafetensorError as exc:
            raise _as_os_error(exc) from None
        rundir.write_json_atomic(tmp / "config.json", tl_config(model))
        rundir.write_text_atomic(tmp / "grammar.cfg", grammar.to_text())
        rundir.write_text_atomic(tmp / "README.md", card)
    return out


def _new_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; give a new one")
    return out


def _as_os_error(exc: Exception) -> OSError:
    """safetensors' "I/O error: File too large (os error 27)" as the OSError it reports."""
    found = re.search(r"os error (\d+)", str(exc))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code))
