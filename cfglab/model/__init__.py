"""Networks: the GPT variants and the encoder, the other model families (lstm, ssm), presets by
name, and `build_model`, which builds the family a config names.

from cfglab.model import GPTConfig, build_model, PRESETS
model = build_model(GPTConfig(vocab_size=7, position="rot", **PRESETS["small"]))
model = build_model(GPTConfig(vocab_size=7, family="ssm", **PRESETS["small"]))
"""

from __future__ import annotations

import dataclasses

from cfglab.config import ModelConfig, ModelShape
from cfglab.config.schema import PRESETS  # the presets' one home: config validates them too
from cfglab.errors import ConfigError, did_you_mean
from cfglab.model.families import FAMILIES, build_family
from cfglab.model.gpt import GPT, GPTConfig, KVCache, check_config
from cfglab.model.positions import POSITIONS


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
    """Validate `cfg` (ConfigError on an unknown variant or family or an inconsistent shape,
    before any allocation) and build the model of its family (FAMILIES: the GPT, or another
    class with the same interface) on the CPU in float32. With `seed` (a run's train.seed):
    torch's generator is seeded first, so this is the model that run starts from, the same
    draw for training and for the analyses' random-init twin."""
    check_config(cfg)
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    return build_family(cfg)


__all__ = [
    "FAMILIES",
    "GPT",
    "GPTConfig",
    "KVCache",
    "POSITIONS",
    "PRESETS",
    "build_model",
    "gpt_config",
]
