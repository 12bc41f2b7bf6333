"""nnsight traces a cfglab model as it is (nnsight.NNsight wraps the torch module; the HookPoints
are modules it can read and write): activation patching through nnsight equals the same patch
through cfglab's own writable hooks (run_with_hooks), for every model family. Needs the
`interp` extra; skipped without it."""

from __future__ import annotations

import pytest
import torch

from cfglab.model import FAMILIES, GPTConfig, build_model
from cfglab.model.hooks import run_with_cache, run_with_hooks

from .conftest import VOCAB

nnsight = pytest.importorskip("nnsight")

SITE, POS = "blocks.0.hook_resid_post", 5  # patched: layer 0's residual stream at position 5


def model_of(family: str):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=VOCAB, family=family, position="rot", block_size=32, n_layer=2)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)  # larger than the init, so a patch shows in the logits
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_nnsight_patch_equals_cfglabs_writable_hook(family):
    model = model_of(family)
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (2, 16), generator=g)
    corrupt = clean.clone()
    corrupt[:, 3] = (clean[:, 3] + 1) % VOCAB  # one token differs, before the patched position
    traced = nnsight.NNsight(model)

    with torch.no_grad(), traced.trace(clean):  # read: the activation run_with_cache reads
        saved = traced.blocks[0].hook_resid_post.output.save()
    _, cache = run_with_cache(model, clean, [SITE])
    torch.testing.assert_close(saved, cache[SITE], rtol=0, atol=0)

    with torch.no_grad(), traced.trace(corrupt):  # write: the clean run's value at one position
        traced.blocks[0].hook_resid_post.output[:, POS] = saved[:, POS]
        patched = traced.output.save()

    def patch(h, hook):  # the same patch as a cfglab hook that returns the replacement
        h = h.clone()
        h[:, POS] = cache[SITE][:, POS]
        return h

    with torch.no_grad():
        ours = run_with_hooks(model, corrupt, [(SITE, patch)])
        plain = model(corrupt)
    torch.testing.assert_close(patched, ours, rtol=0, atol=1e-6)
    # the patch acts from POS on (the model is causal) and not before it
    torch.testing.assert_close(patched[:, :POS], plain[:, :POS], rtol=0, atol=1e-6)
    assert (patched[:, POS] - plain[:, POS]).abs().max() > 1e-3
