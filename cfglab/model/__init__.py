"""Networks: the GPT variants and the encoder, presets by name, and `build_model`.

from cfglab.model import GPTConfig, build_model, PRESETS
model = build_model(GPTConfig(vocab_size=7, position="rot", **PRESETS["small"]))
"""

from __future__ import annotations

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


def build_model(cfg: GPTConfig) -> GPT:
    """Validate `cfg` (ConfigError on an unknown variant or an inconsistent shape, before any
    allocation) and build the model on the CPU in float32."""
    check_config(cfg)
    return GPT(cfg)


__all__ = ["GPT", "GPTConfig", "KVCache", "POSITIONS", "PRESETS", "build_model"]
