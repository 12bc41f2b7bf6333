"""Every model family x position variant x Canon set, from the registries (a new family, variant
or site is tested by being added): it trains through the real loop, its checkpoint loads back
through load_model into the same class and weights, it generates the same strings with and
without its cache/state, and it exposes the hooks every analysis reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cfglab.config import load_config
from cfglab.config.schema import MODEL_FAMILIES
from cfglab.evaluate.generate import generate
from cfglab.model import FAMILIES, POSITIONS, GPTConfig, build_model
from cfglab.model.hooks import hook_names, run_with_cache
from cfglab.train import checkpoint as ckpt
from cfglab.train.loop import train

from .conftest import VOCAB

# (family, position, canon): every position and Canon set where the family has attention; one
# model otherwise (position and Canon do not apply)
COMBOS = [
    (family, position, canon)
    for family in FAMILIES
    for position in (POSITIONS if MODEL_FAMILIES[family] else ["rot"])
    for canon in (["", "ABCD"] if MODEL_FAMILIES[family] else [""])
]
IDS = [f"{f}-{p}-{c or 'none'}" if MODEL_FAMILIES[f] else f for f, p, c in COMBOS]
TINY = [
    "grammar.name=cfg3b",
    "model.preset=tiny",
    "model.block_size=32",
    "train.batch_size=4",
    "train.max_steps=3",
    "train.lr=3e-3",
    "train.log_every=1",
    "train.eval_every=0",
    "train.ckpt_every=100",
    "train.threads=1",
    "train.tensorboard=false",
    "data.prefetch=0",
]
EOS = VOCAB - 3  # cfg3b: BOS, 3 terminals, EOS, MASK, PAD


def documented_hooks(cfg: GPTConfig) -> set[str]:
    """The hook names every family documents (hooks.py), Canon's where it has the sites."""
    names = {"hook_embed", "ln_final.hook_normalized"}
    for i in range(cfg.n_layer):
        names.add(f"blocks.{i}.hook_resid_post")
        names |= {f"blocks.{i}.hook_canon_{site.lower()}" for site in cfg.canon}
    return names


@pytest.mark.parametrize("family, position, canon", COMBOS, ids=IDS)
def test_trains_round_trips_generates_and_hooks(family, position, canon, tmp_path: Path):
    extra = [f"model.family={family}", f"model.position={position}", f"model.canon={canon}"]
    cfg = load_config(None, [*TINY, f"out_dir={tmp_path}", "name=run", *extra])
    run = train(cfg, progress=False)
    model, back = ckpt.load_model(run)  # built from config.json: the family's own class
    assert back == cfg and type(model) is FAMILIES[family]
    saved = load_file(str(ckpt.latest_checkpoint(run) / "model.safetensors"))
    for name, p in model.state_dict().items():
        if name in saved:  # the tied unembedding is stored once
            assert torch.equal(p, saved[name]), name
    twin = build_model(model.config, seed=cfg.train.seed)  # what training started from
    pairs = zip(twin.parameters(), model.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)  # training moved the weights

    assert documented_hooks(model.config) <= set(hook_names(model))
    x = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    _, acts = run_with_cache(model, x, sorted(documented_hooks(model.config)))
    assert acts[f"blocks.{cfg.model.n_layer - 1}.hook_resid_post"].shape == (2, 20, 32)

    prompts = [torch.tensor([0, 1, 2]), torch.tensor([0]), torch.tensor([0, 3, 1])]
    for kw in ({"top_k": 3}, {"greedy": True}):
        outs = [
            generate(model, prompts, 25, eos_id=EOS, use_cache=use_cache, **kw,
                     generator=torch.Generator().manual_seed(3))
            for use_cache in (True, False)
        ]  # fmt: skip
        for a, b in zip(*outs, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("family, position, canon", COMBOS, ids=IDS)
def test_cached_logits_equal_the_full_pass(family, position, canon):
    """Prefill, then one and three tokens at a time, against one full forward pass; with
    weights larger than the init, so every layer's state matters."""
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=VOCAB, family=family, position=position, canon=canon, block_size=80,
        n_layer=2, n_head=4, n_embd=32,
    )  # fmt: skip
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
        x = torch.randint(0, VOCAB, (3, 75), generator=torch.Generator().manual_seed(1))
        full = model(x)  # (B, T, V)
        cache = model.new_cache(3)
        parts, t = [model(x[:, :7], cache=cache)], 7
        while t < 75:
            n = 1 if t < 40 else 3
            parts.append(model(x[:, t : t + n], cache=cache))
            t += n
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", [f for f in FAMILIES if not MODEL_FAMILIES[f]])
def test_no_attention_family_never_reads_later_tokens(family):
    """A recurrent family is causal by construction: changing token t leaves logits < t."""
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=VOCAB, family=family, block_size=64)).eval()
    x = torch.randint(0, VOCAB, (2, 50), generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[:, 30] = (y[:, 30] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, :30], b[:, :30]) and not torch.equal(a[:, 30:], b[:, 30:])
