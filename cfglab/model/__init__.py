"""Networks: the GPT variants and the encoder, presets by name, and `build_model`.

from cfglab.model import GPTConfig, build_model, PRESETS
model = build_model(GPTConfig(vocab_size=7, position="rot", **PRESETS["small"]))
"""

from __future__ import annotations

import dataclasses

from cfglab.config import ModelConfig, ModelShape
from cfglab.errors import ConfigError, did_you_mean
from cfglab.model.gpt import GPT, GPTConfig, KVCache, check_config
from cfglab.model.positions import POSITIONS

# name -> shape. "gpt2-small" is the paper's model (12/12/768, ~86M parameters with the cfg3
# vocabulary). The paper's Part 1 text gives no other sizes for these experiments (RESEARCH.md
# "Other model sizes: [UNVERIFIED]"), so the smaller ones are ours, for CPU work.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 32},  # unit tests (~30k parameters)
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 128},  # CPU quickstart (~0.8M)
    "medium": {"n_layer": 6, "n_head": 6, "n_embd": 384},  # a few CPU hours / one GPU (~11M)
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # the paper's (~86M)
}


def gpt_config(model: ModelConfig, vocab_size: int) -> GPTConfig:
    """The GPTConfig of a config's model section: every ModelShape field, with the preset's sizes
    applied when model.preset is set; vocab_size from the grammar (cfglab.data.vocab.Vocab)."""
    shape = {f.name: getattr(model, f.name) for f in dataclasses.fields(ModelShape)}
    if model.preset is not None:
        if model.preset not in PRESETS:
            raise ConfigError(
                f"model.preset: unknown preset {model.preset!r}"
                f"{did_you_mean(model.preset, PRESETS)}; choose from {', '.join(PRESETS)}, or "
                "set it to null and give n_layer, n_head, n_embd"
            )
        shape.update(PRESETS[model.preset])
    return GPTConfig(vocab_size=vocab_size, **shape)


def build_model(cfg: GPTConfig, seed: int | None = None) -> GPT:
    """Validate `cfg` (ConfigError on an unknown variant or an inconsistent shape, before any
    allocation) and build the model on the CPU in float32. With `seed` (a run's train.seed):
    torch's generator is seeded first, so this is the model that run starts from, the same
    draw for training and for the analyses' random-init twin."""
    check_config(cfg)
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    return GPT(cfg)


__all__ = ["GPT", "GPTConfig", "KVCache", "POSITIONS", "PRESETS", "build_model", "gpt_config"]
