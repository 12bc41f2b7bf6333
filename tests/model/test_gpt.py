"""The Transformer over every position variant: config checks, causality, shift invariance,
SDPA path == manual path, and the paper preset's parameter count."""

from __future__ import annotations

import pytest
import torch

from cfglab.errors import ConfigError
from cfglab.model import POSITIONS, PRESETS, GPTConfig, build_model
from cfglab.model.gpt import GPT

from .conftest import VOCAB, tiny


def test_unknown_position_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown position variant 'rope'.*abs, rel, rot"):
        build_model(GPTConfig(vocab_size=7, n_layer=2, n_head=2, n_embd=32, position="rope"))


def test_bad_shapes_fail_before_allocation():
    # these shapes would need terabytes: an error proves nothing was allocated first
    huge = {"vocab_size": 7, "n_layer": 10_000, "n_embd": 1_000_000}
    with pytest.raises(ConfigError, match="not divisible by model.n_head 7"):
        build_model(GPTConfig(n_head=7, **huge))
    with pytest.raises(ConfigError, match="unknown position variant"):
        build_model(GPTConfig(n_head=8, position="bogus", **huge))
    with pytest.raises(ConfigError, match="n_layer must be a positive integer"):
        build_model(GPTConfig(vocab_size=7, n_layer=0, n_head=2, n_embd=32))
    with pytest.raises(ConfigError, match="dropout"):
        build_model(GPTConfig(vocab_size=7, n_layer=1, n_head=2, n_embd=32, dropout=1.0))
    with pytest.raises(ConfigError, match="rotary_fraction"):
        build_model(GPTConfig(vocab_size=7, n_layer=1, n_head=2, n_embd=32, rotary_fraction=0))


def test_too_long_input_is_a_clear_error():
    model = tiny("nope", block_size=16)
    with pytest.raises(ConfigError, match="block_size is 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_declared_facts_are_data():
    for name, cls in POSITIONS.items():
        for fact in ("shift_invariant", "sdpa", "content", "shared_bias"):
            assert isinstance(getattr(cls, fact), bool), (name, fact)


def test_causal_logits_ignore_the_future(position):
    model = tiny(position)
    x = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    t = 25
    y = x.clone()
    y[:, t + 1 :] = (y[:, t + 1 :] + 1 + torch.randint(0, VOCAB - 1, y[:, t + 1 :].shape)) % VOCAB
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=1e-5, atol=1e-5)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-3  # the future itself does change


def test_encoder_logits_see_the_future(position):
    model = tiny(position, causal=False)
    x = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    t = 25
    y = x.clone()
    y[:, t + 1] = (y[:, t + 1] + 1) % VOCAB  # one token right of t
    with torch.no_grad():
        a, b = model(x), model(y)
    assert (a[:, t] - b[:, t]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [True, False])
def test_shift_invariance_as_declared(position, causal):
    """Offsetting every position by k leaves the logits unchanged iff the variant says so."""
    model = tiny(position, causal=causal)
    x = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = model(x), model(x, pos_offset=17)
    if POSITIONS[position].shift_invariant:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    else:
        assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_path_equals_manual_path(position, causal):
    model = tiny(position, causal=causal)
    x = torch.randint(0, VOCAB, (3, 50), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast, slow = model(x), model(x, manual=True)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_sdpa_path_equals_manual_path_in_training_gradients(position):
    """Same gradients too (dropout 0), so training on either path is the same."""
    model = tiny(position).train()
    x = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(4))
    grads = []
    for manual in (False, True):
        model.zero_grad()
        model(x, manual=manual).logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for g1, g2 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-4)


def gpt2_param_formula(n_layer: int, C: int, V: int, n_pos: int) -> int:
    """GPT-2 parameter count by hand: per block 2 LayerNorms (4C), qkv (3C^2 + 3C), attention
    output (C^2 + C), MLP (8C^2 + 5C); plus final LayerNorm, tied token and position tables."""
    per_block = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (8 * C * C + 5 * C)
    return n_layer * per_block + 2 * C + V * C + n_pos * C


def test_paper_preset_parameter_count():
    """The paper's GPT-2 small: ~86M parameters (RESEARCH.md: S5 says 86M; the slide '100M')."""
    cfg = GPTConfig(vocab_size=VOCAB, position="abs", **PRESETS["gpt2-small"])
    with torch.device("meta"):  # count without allocating 340 MB
        model = GPT(cfg)
    n = model.num_params()
    assert n == gpt2_param_formula(12, 768, VOCAB, 512)
    assert abs(n - 86e6) / 86e6 < 0.01, n
    # rot and nope have no position table; rel adds only its shared table
    for name, extra in (("rot", 0), ("nope", 0), ("rel", (2 * 512 + 1) * 768)):
        with torch.device("meta"):
            m = GPT(GPTConfig(vocab_size=VOCAB, position=name, **PRESETS["gpt2-small"]))
        assert m.num_params() == n - 512 * 768 + extra, name
