"""run_with_cache: only what is asked, the same numbers as the model, hooks always removed, and
an early stop that runs only the layers needed."""

from __future__ import annotations

import pytest
import torch

from cfglab.errors import ConfigError
from cfglab.model.hooks import HookPoint, hook_names, run_with_cache

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
