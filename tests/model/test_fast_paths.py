"""The speed paths of the attention give the numbers of their plain statements: the rotary
autograd function, the shared mask kept across passes (rebuilt whenever what it depends on
changes), and causal attention in two query halves on CPU."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from cfglab.model import POSITIONS, causal_halves, gpt
from cfglab.model.positions import _Rotary

from .conftest import VOCAB, tiny


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25])
def test_rotary_equals_the_rotate_half_formula(fraction):
    """GPT-NeoX's statement: x[:r] * cos + rotate_half(x[:r]) * sin, x[r:] unchanged,
    angle(t, m) = t * base^(-2m/r) for the pairs (m, m + r/2); in float64 from scratch."""
    model = tiny("rot", n_embd=64, rotary_fraction=fraction)  # head_dim 16
    D, r = 16, int(16 * fraction)
    x = torch.randn(2, 3, 12, D, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(5, 17)
    got = model.position.rotate(x, pos)
    freq = 10000.0 ** (-torch.arange(r // 2, dtype=torch.float64) * 2 / r)
    ang = pos.double()[:, None] * freq  # (T, r/2)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)  # (T, r)
    xr = x[..., :r].double()
    half = torch.cat([-xr[..., r // 2 :], xr[..., : r // 2]], -1)  # rotate_half
    want = torch.cat([xr * cos + half * sin, x[..., r:].double()], -1)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("r", [8, 4])
def test_rotary_backward_is_the_adjoint(r):
    """The hand-written backward against finite differences (float64, full and partial)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    ang = torch.rand(5, 8, dtype=torch.float64, generator=g) * 6
    cos, sin = ang.cos(), ang.sin()
    cos[:, r:], sin[:, r:] = 1.0, 0.0
    assert torch.autograd.gradcheck(lambda t: _Rotary.apply(t, cos, sin, r), (x,))


@pytest.mark.parametrize("name", ["alibi", "uni"])
def test_shared_mask_follows_span_dtype_and_mode(name):
    """Each pass equals a fresh copy of the model (empty mask cache) as lengths, offsets,
    dtype and inference mode change; an unchanged span reuses the very same mask."""
    model = tiny(name)
    fresh = copy.deepcopy(model)
    x = tokens(2, 40)
    for T, offset in [(20, 0), (40, 0), (40, 3), (20, 0), (40, 3)]:
        clean = copy.deepcopy(fresh)
        with torch.no_grad():
            torch.testing.assert_close(
                model(x[:, :T], pos_offset=offset),
                clean(x[:, :T], pos_offset=offset),
                rtol=0,
                atol=0,
            )
    cached = dict(model.position.mask_cache)
    with torch.no_grad():
        model(x[:, :40], pos_offset=3)
    assert all(model.position.mask_cache[k][1] is v[1] for k, v in cached.items())
    with torch.inference_mode():
        model(x)
    model.train()
    model(x).sum().backward()  # a mask made under inference_mode would fail here
    double = copy.deepcopy(fresh).double()
    with torch.no_grad():
        model.double()
        torch.testing.assert_close(model(x), double(x), rtol=0, atol=0)


def test_rot_step_matches_the_formula_through_the_training_path():
    """Gradients through the rotary function equal those of the autograd formula (manual
    rotate_half with cat) for a whole tiny model: the backward is right in context too."""
    model = tiny("rot").train()
    x = tokens(2, 25)
    model(x).logsumexp(-1).sum().backward()
    fast = [p.grad.clone() for p in model.parameters()]
    pos_mod = model.position

    def formula(t, pos):
        r = pos_mod.rot_dim
        cos, sin = pos_mod.cos[pos, :r], pos_mod.sin[pos, :r]  # sin holds rotate_half's sign
        swapped = torch.cat([t[..., r // 2 : r], t[..., : r // 2]], -1)
        return torch.cat([t[..., :r] * cos + swapped * sin, t[..., r:]], -1)

    model.zero_grad()
    pos_mod.rotate = formula
    model(x).logsumexp(-1).sum().backward()
    for a, p in zip(fast, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
    assert math.isfinite(sum(float(g.abs().sum()) for g in fast))


@pytest.mark.parametrize("T", [causal_halves.SPLIT_MIN_T, 401, causal_halves.SPLIT_MAX_T])
@pytest.mark.parametrize("with_mask", [False, True])
def test_causal_attention_in_halves_equals_one_call(T, with_mask):
    """Output and q/k/v gradients of the two-halves form equal one causal SDPA call, for plain
    causal attention and for an additive per-head mask holding -inf above the diagonal (alibi's
    form), at even and odd T."""
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, 3, T, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = None
    if with_mask:
        pos = torch.arange(T)
        mask = torch.randn(1, 3, T, T, generator=g).masked_fill(
            pos[None, :] > pos[:, None], float("-inf")
        )
    grad_out = torch.randn(2, 3, T, 8, generator=g)
    outs = []
    for halves in (False, True):
        if halves:
            y = causal_halves.causal_sdpa_in_halves(q, k, v, mask, 8**-0.5)
        else:
            y = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None
            )
        grads = torch.autograd.grad(y, (q, k, v), grad_out)
        outs.append((y.detach(), *grads))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("position", [p for p in POSITIONS if POSITIONS[p].sdpa])
def test_model_takes_the_halves_path_at_its_lengths_with_manual_numbers(position, monkeypatch):
    """At a length inside the split range the model's SDPA path runs the two halves (counted)
    and gives the manual path's logits and gradients; outside the range it does not split."""
    calls = []
    halves = gpt.causal_sdpa_in_halves
    monkeypatch.setattr(gpt, "causal_sdpa_in_halves", lambda *a: calls.append(1) or halves(*a))
    model = tiny(position, block_size=causal_halves.SPLIT_MAX_T, n_layer=1).train()
    x = tokens(1, causal_halves.SPLIT_MIN_T + 1, seed=5)
    results = []
    for manual in (False, True):
        model.zero_grad()
        logits = model(x, manual=manual)
        logits.logsumexp(-1).sum().backward()
        results.append([logits.detach()] + [p.grad.clone() for p in model.parameters()])
    assert len(calls) == 1  # one layer, one fast pass
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    with torch.no_grad():
        model(x[:, : causal_halves.SPLIT_MIN_T - 1])
    assert len(calls) == 1


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rotary_under_compile_equals_the_eager_function(fraction):
    """Under torch.compile rot uses the plain formula (inductor fuses it); eager mode uses the
    hand-written autograd Function: same values and gradients."""
    from cfglab.model.positions import RotaryPosition

    cfg = model_gpt_config(rotary_fraction=fraction)
    rot = RotaryPosition(cfg)
    x = torch.randn(2, 2, 10, cfg.n_embd // cfg.n_head, requires_grad=True)
    pos = torch.arange(3, 13)
    eager = rot.rotate(x, pos)
    compiled = torch.compile(lambda x: rot.rotate(x, pos), backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager)
    (g_eager,) = torch.autograd.grad((eager**2).sum(), x)
    (g_compiled,) = torch.autograd.grad((compiled**2).sum(), x)
    torch.testing.assert_close(g_compiled, g_eager)


def model_gpt_config(**kw):
    from cfglab.model import GPTConfig

    return GPTConfig(vocab_size=7, n_layer=1, n_head=2, n_embd=32, block_size=16, **kw)
