"""Hooks: TransformerLens's names and shapes; run_with_cache caches only what is asked, the same
numbers as the model, with an early stop that runs only the layers needed; run_with_hooks and
using_hooks replace activations on both attention paths and through the KV cache, checked
against weight edits that do the same; hooks are always removed."""

from __future__ import annotations

import copy

import pytest
import torch

from cfglab.errors import ConfigError
from cfglab.model import POSITIONS, gpt
from cfglab.model.hooks import (
    HookPoint,
    hook_names,
    hook_points,
    run_with_cache,
    run_with_hooks,
    using_hooks,
)

from .conftest import VOCAB, tiny


def x_batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))


def test_caches_only_the_requested_names():
    model = tiny("rot", n_layer=3)
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"]
    logits, cache = run_with_cache(model, x_batch(), names)
    assert set(cache) == set(names)
    assert cache["blocks.1.hook_resid_post"].shape == (2, 20, model.config.n_embd)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, model.config.n_head, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x_batch()))


def test_activations_are_the_model_s_own():
    """resid_post of the last block through ln_final and the unembedding gives the logits;
    resid_post of block i is resid_pre of block i+1; patterns are rows that sum to 1."""
    model = tiny("alibi", n_layer=3)
    names = [
        "blocks.1.hook_resid_post",
        "blocks.2.hook_resid_pre",
        "blocks.2.hook_resid_post",
        "blocks.2.attn.hook_pattern",
    ]
    logits, c = run_with_cache(model, x_batch(), names)
    torch.testing.assert_close(c["blocks.1.hook_resid_post"], c["blocks.2.hook_resid_pre"])
    with torch.no_grad():
        again = model.unembed(model.ln_final(c["blocks.2.hook_resid_post"]))
    torch.testing.assert_close(again, logits)
    p = c["blocks.2.attn.hook_pattern"]
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
    assert torch.all(p.triu(1) == 0)  # causal


def test_hooks_are_removed_even_after_an_error():
    model = tiny("abs")
    with pytest.raises(ConfigError, match="block_size"):
        run_with_cache(model, torch.zeros(1, 100, dtype=torch.long), ["blocks.0.hook_resid_post"])
    points = [m for m in model.modules() if isinstance(m, HookPoint)]
    assert points and not any(p.is_active for p in points)
    run_with_cache(model, x_batch(), ["blocks.0.attn.hook_pattern"])
    assert not any(p.is_active for p in points)


def test_stop_early_runs_only_the_needed_layers():
    model = tiny("rel", n_layer=4)
    calls = []
    model.blocks[2].register_forward_pre_hook(lambda m, a: calls.append(2))
    logits, cache = run_with_cache(model, x_batch(), ["blocks.1.hook_resid_post"], stop_early=True)
    assert logits is None and calls == []  # block 2 never ran
    _, full = run_with_cache(model, x_batch(), ["blocks.1.hook_resid_post"])
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"])
    assert calls == [2]


def test_unknown_name_lists_real_ones():
    model = tiny("nope")
    with pytest.raises(
        ConfigError, match="unknown hook name.*blocks.9.hook_resid_post.*hook_embed"
    ):
        run_with_cache(model, x_batch(), ["blocks.9.hook_resid_post"])
    assert hook_names(model)[0] == "hook_embed"


# TransformerLens's hook names for one GPT-2 block and for the top level of HookedTransformer,
# read from its source (TransformerLensOrg/TransformerLens): transformer_lens/components/
# transformer_block.py (block), abstract_attention.py (attn), mlps/mlp.py (mlp),
# layer_norm.py / layer_norm_pre.py (ln1, ln2, ln_final), HookedTransformer.py (top level).
TL_GPT2_BLOCK = [
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_in",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
]
TL_GPT2_TOP = ["hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized"]
# What cfglab lacks, and why:
CFGLAB_LACKS = {
    # the LayerNorms are torch's fused nn.LayerNorm (named ln_1, ln_2 for the checkpoints' and
    # Hugging Face export's parameter names): no separate scale, and no hooks on their outputs
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "ln_final.hook_scale",
    # per-head output projections (B, T, H, C): TransformerLens computes them only with
    # use_attn_result=True; attn.hook_z with c_proj's columns of one head gives them
    "attn.hook_result",
    # copies of the block input per head / for the MLP: in TransformerLens they run only with
    # use_attn_in / use_split_qkv_input / use_hook_mlp_in, all off by default
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "hook_mlp_in",
    # the position embedding is added inside the position variant (positions.py, abs), which
    # has no hook of its own: hook_resid_pre of block 0 minus hook_embed is it
    "hook_pos_embed",
}


def test_names_cover_transformerlens_gpt2_block():
    """cfglab's GPT (abs, the GPT-2 layout) has every TransformerLens GPT-2 name except the
    ones listed as lacking, and none of those (so the list stays true)."""
    model = tiny("abs", n_layer=2)
    names = hook_names(model)
    block = [n.removeprefix("blocks.1.") for n in names if n.startswith("blocks.1.")]
    top = [n for n in names if not n.startswith("blocks.")]
    tl = set(TL_GPT2_BLOCK) | set(TL_GPT2_TOP)
    assert tl - CFGLAB_LACKS <= set(block) | set(top)
    assert not CFGLAB_LACKS & (set(block) | set(top))
    # the order is the forward order, TransformerLens's where both have the name
    assert block == [n for n in TL_GPT2_BLOCK if n in block]
    assert top == [n for n in TL_GPT2_TOP if n in top]
    # and hook.name is the name, as in TransformerLens
    assert [m.name for m in model.modules() if isinstance(m, HookPoint)] == names


def per_head(model, layer: int = 0) -> list[str]:
    kinds = ["q", "k", "v", "z"] if POSITIONS[model.config.position].content else ["v", "z"]
    return [f"blocks.{layer}.attn.hook_{kind}" for kind in kinds]


@pytest.mark.parametrize("manual", [False, True])
def test_per_head_shapes_and_places(position, manual):
    """q, k, v are the projections of ln_1(resid_pre) (before rotation), (B, T, H, D); z is
    pattern @ v per head, and c_proj of z side by side is hook_attn_out."""
    model = tiny(position, n_layer=2)
    B, T, H, C = 2, 20, model.config.n_head, model.config.n_embd
    D = C // H
    names = [*per_head(model, 1), "blocks.1.hook_resid_pre", "blocks.1.hook_attn_out"]
    _, c = run_with_cache(model, x_batch(), names, manual=manual)
    attn = model.blocks[1].attn
    with torch.no_grad():
        proj = attn.c_attn(model.blocks[1].ln_1(c["blocks.1.hook_resid_pre"]))  # (B, T, nC)
        out = attn.c_proj(c["blocks.1.attn.hook_z"].reshape(B, T, C))
    kinds = [n.rsplit("_", 1)[1] for n in per_head(model, 1)][:-1]  # q, k, v or v
    for i, kind in enumerate(kinds):
        got = c[f"blocks.1.attn.hook_{kind}"]
        assert got.shape == (B, T, H, D)
        torch.testing.assert_close(got, proj[..., i * C : (i + 1) * C].view(B, T, H, D))
    assert c["blocks.1.attn.hook_z"].shape == (B, T, H, D)
    torch.testing.assert_close(out, c["blocks.1.hook_attn_out"])


def test_z_is_the_pattern_times_v(position):
    model = tiny(position)
    names = ["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_v", "blocks.0.attn.hook_z"]
    _, c = run_with_cache(model, x_batch(), names)
    v = c["blocks.0.attn.hook_v"].transpose(1, 2)  # (B, H, T, D)
    z = (c["blocks.0.attn.hook_pattern"] @ v).transpose(1, 2)  # (B, T, H, D)
    torch.testing.assert_close(c["blocks.0.attn.hook_z"], z)


def zero_head(h: int):
    def fn(act: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        assert hook.name.endswith(("hook_z", "hook_v"))
        out = act.clone()
        out[:, :, h] = 0.0  # (B, T, H, D): head h
        return out

    return fn


def without_head_output(model, layer: int, h: int):
    """A copy of the model whose layer `layer` ignores head h: c_proj's columns that read it
    are zero (the oracle for zeroing that head's z, or its v)."""
    other = copy.deepcopy(model)
    D = model.config.n_embd // model.config.n_head
    with torch.no_grad():
        other.blocks[layer].attn.c_proj.weight[:, h * D : (h + 1) * D] = 0.0
    return other


@pytest.mark.parametrize("manual", [False, True])
@pytest.mark.parametrize("kind", ["z", "v"])
def test_zeroing_a_head_is_removing_it(position, manual, kind):
    """Zeroing head 1's z (or v, so that z = pattern @ v is 0) of layer 0 gives the logits of
    the model whose output projection ignores head 1; on both attention paths."""
    model = tiny(position, n_layer=2)
    x = x_batch()
    with torch.no_grad():
        clean = model(x, manual=manual)
        want = without_head_output(model, 0, 1)(x, manual=manual)
        got = run_with_hooks(
            model, x, [(f"blocks.0.attn.hook_{kind}", zero_head(1))], manual=manual
        )
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, clean, atol=1e-3)


@pytest.mark.parametrize("manual", [False, True])
def test_replacing_q_or_k_is_editing_the_projection(position, manual):
    """Scaling head 2's q (or k) by 3 in the hook gives the logits of a model whose W_q (W_k)
    rows for head 2 are scaled by 3. Not for rel, whose relative table is projected by W_q, W_k
    too (the hooks hold only the tokens' q, k) nor for the position-only variants (no q, k)."""
    if not POSITIONS[position].content or POSITIONS[position].needs_projection:
        pytest.skip("no q, k, or q, k weights used beyond the tokens' q, k")
    model = tiny(position, n_layer=2)
    C, D = model.config.n_embd, model.config.n_embd // model.config.n_head
    x = x_batch()

    def triple_head_2(act, hook):
        out = act.clone()
        out[:, :, 2] *= 3  # (B, T, H, D): head 2
        return out

    for i, kind in enumerate(["q", "k"]):
        other = copy.deepcopy(model)
        rows = slice(i * C + 2 * D, i * C + 3 * D)
        with torch.no_grad():
            other.blocks[1].attn.c_attn.weight[rows] *= 3
            other.blocks[1].attn.c_attn.bias[rows] *= 3
            want = other(x, manual=manual)
            got = run_with_hooks(
                model, x, [(f"blocks.1.attn.hook_{kind}", triple_head_2)], manual=manual
            )
            clean = model(x, manual=manual)
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, clean, atol=1e-3)


def test_replacing_the_pattern_or_scores_flows_downstream(position):
    """A pattern replaced by the identity (each token attends to itself) makes z = v; scores
    replaced by zeros make the pattern uniform over all keys (the hook replaced the mask too)."""
    model = tiny(position)

    def eye(act, hook):  # (B, H, T, T)
        return torch.eye(act.shape[-1]).expand_as(act)

    def zeros(act, hook):
        return torch.zeros_like(act)

    names = ["blocks.0.attn.hook_v", "blocks.0.attn.hook_z"]
    logits, c = run_with_cache(
        model, x_batch(), names, fwd_hooks=[("blocks.0.attn.hook_pattern", eye)]
    )
    torch.testing.assert_close(c["blocks.0.attn.hook_z"], c["blocks.0.attn.hook_v"])
    with torch.no_grad():
        assert not torch.allclose(logits, model(x_batch()), atol=1e-3)
    _, c = run_with_cache(
        model,
        x_batch(),
        ["blocks.1.attn.hook_pattern"],
        fwd_hooks=[("blocks.1.attn.hook_attn_scores", zeros)],
    )
    p = c["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(p, torch.full_like(p, 1 / p.shape[-1]))


def test_hooks_that_return_their_input_change_nothing(position):
    """Identity hooks on every name but the scores and pattern keep the SDPA path: the logits
    are bitwise the plain forward's; on every name (manual path) bitwise the manual forward's."""
    model = tiny(position, n_layer=2)
    names = hook_names(model)

    def same(act, hook):
        return act

    fast = [(n, same) for n in names if not n.endswith(("hook_attn_scores", "hook_pattern"))]
    with torch.no_grad():
        torch.testing.assert_close(
            run_with_hooks(model, x_batch(), fast), model(x_batch()), rtol=0, atol=0
        )
        torch.testing.assert_close(
            run_with_hooks(model, x_batch(), [(n, same) for n in names]),
            model(x_batch(), manual=True),
            rtol=0,
            atol=0,
        )


def test_per_head_hooks_keep_the_sdpa_path(monkeypatch):
    """Hooks on q, k, v, z (read or replace) leave every layer on SDPA; a pattern hook moves
    its layer (only) to the manual path."""
    model = tiny("rot", n_layer=3)
    calls = []
    sdpa = gpt.Attention.sdpa

    def spy(self, *args):
        calls.append(self.layer)
        return sdpa(self, *args)

    monkeypatch.setattr(gpt.Attention, "sdpa", spy)
    names = [n for i in range(3) for n in per_head(model, i)]
    run_with_cache(model, x_batch(), names, fwd_hooks=[(names[0], lambda a, h: a * 2)])
    assert calls == [0, 1, 2]
    calls.clear()
    run_with_cache(model, x_batch(), ["blocks.1.attn.hook_pattern"])
    assert calls == [0, 2]


@pytest.mark.parametrize("manual", [False, True])
def test_patched_generation_equals_the_patched_full_forward(position, manual):
    """With the same patches (head 0's z in layer 0, head 1's v and q, k in layer 1, head 2's
    pattern in layer 1 with manual), prefill + token-by-token decoding through the KV cache gives
    the logits of one full forward pass: each call's new positions are patched and the cache
    keeps the patched keys and values."""
    model = tiny(position, n_layer=2)
    x = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(3))

    def scale_head(h: int, s: float):
        def fn(act, hook):
            out = act.clone()
            out[:, :, h] *= s  # (B, T, H, D) per-head hooks, (B, H, T, Tk) pattern: head h
            return out

        return fn

    patches = [("blocks.0.attn.hook_z", zero_head(0)), ("blocks.1.attn.hook_v", scale_head(1, 2))]
    if POSITIONS[position].content:
        patches += [
            ("blocks.1.attn.hook_q", scale_head(1, -1)),
            ("blocks.1.attn.hook_k", scale_head(3, 2)),
        ]
    if manual:  # an unnormalised pattern is fine for this test: the same in both runs
        patches += [("blocks.1.attn.hook_pattern", lambda act, hook: act.flip(1))]
    with torch.no_grad(), using_hooks(model, patches):
        full = model(x, manual=manual)
        cache = model.new_cache(2)
        parts = [model(x[:, :8], cache=cache, manual=manual)]
        parts += [model(x[:, t : t + 1], cache=cache, manual=manual) for t in range(8, 30)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(full, model(x), atol=1e-3)


def test_hooks_are_removed_after_an_error_in_a_hook():
    model = tiny("rot")

    def broken(act, hook):
        raise RuntimeError("boom")

    for run in (
        lambda: run_with_hooks(model, x_batch(), [("blocks.1.attn.hook_z", broken)]),
        lambda: run_with_cache(
            model,
            x_batch(),
            ["blocks.0.hook_resid_post"],
            fwd_hooks=[("blocks.0.attn.hook_q", broken)],
        ),
    ):
        with pytest.raises(RuntimeError, match="boom"):
            run()
        assert not any(p.is_active for p in hook_points(model).values())
    # an unknown name registers nothing, even after a good one
    with pytest.raises(ConfigError, match="unknown hook name.*blocks.0.attn.hook_nope"):
        run_with_hooks(
            model,
            x_batch(),
            [("blocks.0.attn.hook_z", broken), ("blocks.0.attn.hook_nope", broken)],
        )
    assert not any(p.is_active for p in hook_points(model).values())
    with torch.no_grad():  # and the model runs clean afterwards
        torch.testing.assert_close(run_with_hooks(model, x_batch(), []), model(x_batch()))


def test_position_only_variants_have_no_q_k_hooks():
    for name, cls in POSITIONS.items():
        names = set(hook_names(tiny(name)))
        assert ("blocks.0.attn.hook_q" in names) == cls.content
        if not cls.content:
            with pytest.raises(ConfigError, match="unknown hook name.*hook_q"):
                run_with_hooks(tiny(name), x_batch(), [("blocks.0.attn.hook_q", zero_head(0))])
