"""Each variant's attention against an independent, loop-by-loop statement of its definition
(SPEC.md "Models"), read through the hooks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cfglab.model import POSITIONS, PRESETS, GPTConfig, build_model
from cfglab.model.hooks import hook_names, run_with_cache
from cfglab.model.positions import alibi_slopes

from .conftest import VOCAB, tiny


def tokens(B: int = 2, T: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def patterns(model, x) -> list[torch.Tensor]:
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.config.n_layer)]
    return [run_with_cache(model, x, names)[1][n] for n in names]


@pytest.mark.parametrize("causal", [True, False])
def test_uni_pattern_is_the_window_average(causal):
    model = tiny("uni", causal=causal, n_head=4)
    x = tokens(T=40)
    T = x.shape[1]
    expected = np.zeros((4, T, T))
    for h in range(1, 5):  # head h averages w = 2^h - 1 tokens
        w = 2**h - 1
        for i in range(T):
            if causal:  # the w tokens ending at i, clipped at the start
                js = [j for j in range(i - w + 1, i + 1) if j >= 0]
            else:  # the w tokens centred on i, clipped at both ends
                js = [j for j in range(i - w // 2, i + w // 2 + 1) if 0 <= j < T]
            expected[h - 1, i, js] = 1.0 / len(js)
    for p in patterns(model, x):
        assert p.shape == (2, 4, T, T)
        for b in range(2):
            np.testing.assert_allclose(p[b].double().numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("causal", [True, False])
def test_pos_pattern_ignores_content_and_is_the_softmax_of_its_table(causal):
    model = tiny("pos", causal=causal)
    x1, x2 = tokens(seed=1), tokens(seed=2)
    assert not torch.equal(x1, x2)
    p1, p2 = patterns(model, x1), patterns(model, x2)
    T, bs = x1.shape[1], model.config.block_size
    table = model.position.table.detach()  # (n_layer, H, n_dist)
    for layer, (a, b) in enumerate(zip(p1, p2, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # identical, not merely close
        torch.testing.assert_close(a[0], a[1], rtol=0, atol=0)
        for h in range(model.config.n_head):
            for i in range(T):
                js = range(i + 1) if causal else range(T)
                logits = torch.tensor(
                    [float(table[layer, h, i - j if causal else i - j + bs - 1]) for j in js]
                )
                row = torch.zeros(T)
                row[list(js)] = torch.softmax(logits, 0)
                torch.testing.assert_close(a[0, h, i], row, rtol=1e-5, atol=1e-6)


def test_pos_and_uni_have_no_query_key_weights():
    for name, cls in POSITIONS.items():
        model = tiny(name)
        expected = 3 if cls.content else 1
        assert model.blocks[0].attn.c_attn.out_features == expected * model.config.n_embd


def qkv(model, x, layer: int = 0):
    """q, k, v (B, H, T, D) of a layer, recomputed from the cached block input."""
    _, cache = run_with_cache(model, x, [f"blocks.{layer}.hook_resid_pre"])
    block = model.blocks[layer]
    h = block.ln_1(cache[f"blocks.{layer}.hook_resid_pre"])
    C = h.shape[-1]
    q, k, v = (block.attn.split_heads(t) for t in block.attn.c_attn(h).split(C, dim=2))
    return q.detach(), k.detach(), v.detach()


def scores_of(model, x, layer: int = 0) -> torch.Tensor:
    name = f"blocks.{layer}.attn.hook_attn_scores"
    return run_with_cache(model, x, [name])[1][name]


@pytest.mark.parametrize("causal", [True, False])
def test_rel_scores_follow_the_deberta_formula(causal):
    """(q_i.k_j + q_i.Kr[d(i,j)] + k_j.Qr[d(j,i)]) / sqrt(3D), d clipped at M, with Kr, Qr the
    shared table projected by the layer's W_k, W_q; computed here entry by entry."""
    M = 5
    model = tiny("rel", causal=causal, rel_max_distance=M)
    x = tokens(B=1, T=12)
    layer = 1
    q, k, _ = qkv(model, x, layer)
    attn = model.blocks[layer].attn
    C, H = model.config.n_embd, model.config.n_head
    D = C // H
    P = model.position.table.weight.detach()  # (2M+1, C)
    w, b = attn.c_attn.weight.detach(), attn.c_attn.bias.detach()
    Qr = (P @ w[:C].T + b[:C]).view(-1, H, D)  # (2M+1, H, D)
    Kr = (P @ w[C : 2 * C].T + b[C : 2 * C]).view(-1, H, D)
    got = scores_of(model, x, layer)[0]  # (H, T, T)
    T = x.shape[1]
    for h in range(H):
        for i in range(T):
            for j in range(T):
                if causal and j > i:
                    assert got[h, i, j] == -math.inf
                    continue
                dij = max(-M, min(M, i - j)) + M
                dji = max(-M, min(M, j - i)) + M
                s = q[0, h, i] @ k[0, h, j] + q[0, h, i] @ Kr[dij, h] + k[0, h, j] @ Qr[dji, h]
                torch.testing.assert_close(got[h, i, j], s / math.sqrt(3 * D), rtol=1e-4, atol=1e-5)


def test_alibi_slopes_and_scores():
    # the ALiBi paper's slopes: 8 heads -> 1/2, 1/4, ..., 1/256; 6 heads -> 4's then 8's odd ones
    assert alibi_slopes(8) == pytest.approx([2.0**-k for k in range(1, 9)])
    assert alibi_slopes(6) == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    model = tiny("alibi")
    x = tokens(B=1, T=10)
    q, k, _ = qkv(model, x)
    D = q.shape[-1]
    got = scores_of(model, x)[0]
    slopes = alibi_slopes(model.config.n_head)
    for h in range(model.config.n_head):
        for i in range(10):
            for j in range(i + 1):
                want = q[0, h, i] @ k[0, h, j] / math.sqrt(D) - slopes[h] * (i - j)
                torch.testing.assert_close(got[h, i, j], want, rtol=1e-4, atol=1e-5)


def test_rot_scores_are_complex_rotations():
    """Rotary with the NeoX layout: dims (m, m + D/2) form the complex number rotated by
    angle pos * base^(-2m/D); the score is Re(q_i conj(k_j)) summed / sqrt(D)."""
    model = tiny("rot")
    x = tokens(B=1, T=10)
    q, k, _ = qkv(model, x)
    D = q.shape[-1]
    half = D // 2
    freq = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / D)
    got = scores_of(model, x)[0]
    for h in range(model.config.n_head):
        qc = torch.complex(q[0, h, :, :half].double(), q[0, h, :, half:].double())  # (T, D/2)
        kc = torch.complex(k[0, h, :, :half].double(), k[0, h, :, half:].double())
        pos = torch.arange(10, dtype=torch.float64)[:, None]
        qr, kr = qc * torch.exp(1j * pos * freq), kc * torch.exp(1j * pos * freq)
        want = (qr @ kr.conj().T).real / math.sqrt(D)  # (T, T)
        causal = torch.ones(10, 10, dtype=torch.bool).tril()
        torch.testing.assert_close(got[h][causal].double(), want[causal], rtol=1e-4, atol=1e-5)


def test_abs_adds_one_learned_vector_per_position():
    model = tiny("abs")
    x = tokens(B=1, T=10)
    _, cache = run_with_cache(model, x, ["hook_embed", "blocks.0.hook_resid_pre"])
    wpe = model.position.wpe.weight.detach()
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + wpe[:10])


def test_every_variant_has_the_transformerlens_names(position):
    """Every block has the residual, attention and MLP names; q and k only where the variant
    has W_q, W_k (`content`)."""
    names = set(hook_names(tiny(position)))
    has_qk = POSITIONS[position].content
    for i in range(2):
        for n in (
            "hook_resid_pre",
            "hook_resid_mid",
            "hook_resid_post",
            "hook_attn_out",
            "hook_mlp_out",
            "attn.hook_v",
            "attn.hook_z",
            "attn.hook_attn_scores",
            "attn.hook_pattern",
            "mlp.hook_pre",
            "mlp.hook_post",
        ):
            assert f"blocks.{i}.{n}" in names
        assert (f"blocks.{i}.attn.hook_q" in names) == has_qk
        assert (f"blocks.{i}.attn.hook_k" in names) == has_qk
        assert f"blocks.{i}.attn.hook_scores" not in names  # the pre-TransformerLens name
    assert "hook_embed" in names and "ln_final.hook_normalized" in names


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("init", ["uniform", "local"])
def test_pos_starts_uniform_or_local_by_model_pos_init(causal, init):
    """At initialisation, head h of every layer weighs key j by exp(-m_h |i - j|) (local, ALiBi's
    slopes m_h) or equally (uniform, the default), over the keys it may see."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=VOCAB, position="pos", causal=causal, block_size=64,
                    pos_init=init, **{**PRESETS["tiny"], "n_head": 4})  # fmt: skip
    model = build_model(cfg).eval()
    T = 20
    slopes = alibi_slopes(4) if init == "local" else [0.0] * 4
    for p in patterns(model, tokens(T=T)):
        for h, m in enumerate(slopes):
            for i in range(T):
                js = range(i + 1) if causal else range(T)
                w = torch.tensor([math.exp(-m * abs(i - j)) for j in js], dtype=torch.float64)
                row = torch.zeros(T, dtype=torch.float64)
                row[list(js)] = w / w.sum()
                torch.testing.assert_close(p[0, h, i].double(), row, rtol=1e-5, atol=1e-7)
