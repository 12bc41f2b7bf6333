"""Shared helpers for the model tests: tiny models of every variant, causal or encoder."""

from __future__ import annotations

import pytest
import torch

from cfglab.model import POSITIONS, PRESETS, GPTConfig, build_model

VOCAB = 7  # cfg3b / cfg3f: BOS, 3 terminals, EOS, MASK, PAD


def tiny(position: str, causal: bool = True, seed: int = 0, **kw):
    """A tiny model in eval mode with weights made larger than GPT-2's init, so attention
    patterns are far from uniform and position effects are visible in the logits."""
    torch.manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=VOCAB,
        position=position,
        causal=causal,
        **{"block_size": 64, **PRESETS["tiny"], **kw},
    )
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.fixture(params=list(POSITIONS))
def position(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two
    threads make every small op wait for a core (10x slower); restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
