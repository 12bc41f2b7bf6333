"""Canon layers: the convolution against a brute-force loop and autograd, the authors' init,
zero weights = the model without Canon, causality (a later token is never read), the encoder's
two-sided reach, hooks at each site, and the config's rules for `model.canon`."""

from __future__ import annotations

import pytest
import torch

import cfglab.model.canon as canon_mod
from cfglab.config import load_config
from cfglab.config.schema import CANON_SITES
from cfglab.errors import ConfigError
from cfglab.model import GPTConfig, build_model
from cfglab.model.canon import Canon, short_conv
from cfglab.model.hooks import run_with_cache, run_with_hooks

from .conftest import VOCAB, tiny


def loop_conv(x: torch.Tensor, w: torch.Tensor, causal: bool, residual: bool) -> torch.Tensor:
    """The definition, one position and tap at a time: out_t = x_t + sum_j w_j x_{t+offset_j}."""
    T, taps = x.shape[1], w.shape[1]
    centre = taps - 1 if causal else taps // 2
    out = x.clone() if residual else torch.zeros_like(x)
    for t in range(T):
        for j in range(taps):
            s = t - centre + j
            if 0 <= s < T:
                out[:, t] += x[:, s] * w[:, j]
    return out


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "two-sided"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("block", [canon_mod.BLOCK, 7, 40])  # the weight gradient's blocks
def test_conv_equals_the_loop_and_its_gradient_autograd(causal, residual, block, monkeypatch):
    monkeypatch.setattr(canon_mod, "BLOCK", block)
    g = torch.Generator().manual_seed(0)
    for T, K in ((1, 4), (3, 2), (11, 4), (6, 3)):
        taps = K if causal else 2 * K - 1
        x = torch.randn(3, T, 5, dtype=torch.float64, generator=g, requires_grad=True)
        w = torch.randn(5, taps, dtype=torch.float64, generator=g, requires_grad=True)
        y, _ = short_conv(x, w, causal, residual)
        torch.testing.assert_close(y, loop_conv(x, w, causal, residual))
        assert torch.autograd.gradcheck(lambda a, b: short_conv(a, b, causal, residual)[0], (x, w))


def test_state_continues_a_sequence():
    """Chunks with the state carried == one pass (the state is the last K - 1 inputs)."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 13, 6, generator=g), torch.randn(6, 4, generator=g)
    full, _ = short_conv(x, w, True, True)
    state, parts = torch.zeros(2, 3, 6), []
    for a, b in ((0, 1), (1, 3), (3, 4), (4, 13)):
        y, state = short_conv(x[:, a:b], w, True, True, state)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, dim=1), full)
    torch.testing.assert_close(state, x[:, -3:])


@pytest.mark.parametrize("causal", [True, False])
def test_init_is_the_authors_conv1d_init(causal):
    """nn.Conv1d's default: uniform in +-1/sqrt(fan-in), fan-in = the taps of one channel."""
    torch.manual_seed(0)
    layer = Canon(4096, 4, causal, True, "0.A", dense=True)
    taps = 4 if causal else 7
    bound = taps**-0.5
    w = layer.weight
    assert w.shape == (4096, taps)
    assert w.abs().max() <= bound and w.abs().max() > 0.98 * bound
    assert abs(w.var().item() - bound**2 / 3) < 0.05 * bound**2  # a uniform's variance


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
def test_zero_weights_equal_the_model_without_canon(position, causal):
    plain = tiny(position, causal=causal)
    with_canon = build_model(GPTConfig(**{**vars(plain.config), "canon": "ABCD"})).eval()
    missing, unexpected = with_canon.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".canon_" in k for k in missing)
    with torch.no_grad():
        for name, p in with_canon.named_parameters():
            if ".canon_" in name:
                p.zero_()
        x = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(with_canon(x), plain(x), rtol=1e-5, atol=1e-5)
        # and the trained-looking weights of `tiny` make Canon matter once they are not zero
        for name, p in with_canon.named_parameters():
            if ".canon_" in name:
                p.fill_(0.3)
        assert not torch.allclose(with_canon(x), plain(x), atol=1e-3)


@pytest.mark.parametrize("kernel", [2, 3, 4])
def test_causal_canon_never_reads_a_later_token(position, kernel):
    """Changing token t changes no logit before t (ABCD, weights far from zero)."""
    model = tiny(position, canon="ABCD", canon_kernel=kernel)
    x = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(4))
    y = x.clone()
    y[:, 20] = (y[:, 20] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, :20], b[:, :20]) and not torch.allclose(a[:, 20], b[:, 20])


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "two-sided"])
def test_a_layer_reads_exactly_its_window(causal):
    """Perturbing input t moves outputs t .. t+K-1 (causal) or t-(K-1) .. t+K-1 (two-sided),
    and no other, at every position of the sequence."""
    torch.manual_seed(0)
    K, T = 3, 12
    layer = Canon(5, K, causal, True, "0.A", dense=True)
    x = torch.randn(1, T, 5)
    with torch.no_grad():
        base = layer(x)
        for t in range(T):
            moved = x.clone()
            moved[0, t] += 1.0
            changed = (layer(moved) - base).abs().sum(-1)[0] > 0  # (T,)
            lo = t if causal else max(0, t - K + 1)
            expect = torch.zeros(T, dtype=torch.bool)
            expect[lo : min(T, t + K)] = True
            assert torch.equal(changed, expect), t


def test_hooks_at_each_site_see_and_replace_the_canon_output():
    model = tiny("rot", canon="ABCD")
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    names = [f"blocks.1.hook_canon_{s}" for s in "abcd"]
    _, acts = run_with_cache(model, x, [*names, "blocks.1.attn.hook_q", "blocks.1.attn.hook_v"])
    C = model.config.n_embd
    shapes = [acts[n].shape[-1] for n in names]
    assert shapes == [C, 3 * C, C, 4 * C]
    H = model.config.n_head
    q = acts["blocks.1.attn.hook_q"].reshape(2, 16, C)  # hook_q is Canon B's first third
    torch.testing.assert_close(q, acts["blocks.1.hook_canon_b"][..., :C])
    torch.testing.assert_close(
        acts["blocks.1.attn.hook_v"].reshape(2, 16, C), acts["blocks.1.hook_canon_b"][..., 2 * C :]
    )
    assert acts["blocks.1.attn.hook_q"].shape == (2, 16, H, C // H)
    with torch.no_grad():
        plain = model(x)
        patched = run_with_hooks(model, x, [("blocks.1.hook_canon_d", lambda a, h: a * 0)])
    assert not torch.allclose(plain, patched)
    only_ac = tiny("rot", canon="AC")
    names = {n for n, _ in only_ac.named_modules() if "hook_canon" in n}
    assert names == {f"blocks.{i}.hook_canon_{s}" for i in range(2) for s in "ac"}


@pytest.mark.parametrize("position", ["pos", "uni"])
def test_canon_b_of_position_only_variants_mixes_v_alone(position):
    model = tiny(position, canon="B")
    assert model.blocks[0].canon_b.weight.shape[0] == model.config.n_embd


def test_config_rules_for_canon():
    for good in ("", "A", "AC", "BD", CANON_SITES):
        assert load_config(None, [f"model.canon={good}"]).model.canon == good
    for bad in ("BA", "AA", "E", "abcd", "A C"):
        with pytest.raises(ConfigError, match="subset of ABCD in that order"):
            load_config(None, [f"model.canon={bad}"])
    for family in ("lstm", "ssm"):
        with pytest.raises(ConfigError, match="Canon layers sit in the transformer"):
            load_config(None, [f"model.family={family}", "model.canon=A"])
        with pytest.raises(ConfigError, match="causal model"):
            load_config(None, [f"model.family={family}", "train.objective=mlm"])
    with pytest.raises(ConfigError, match="canon_kernel"):
        build_model(GPTConfig(vocab_size=VOCAB, canon="A", canon_kernel=5))
