"""Model families: `FAMILIES` maps `model.family` to the network class that builds it.

Every family takes a `GPTConfig` (the config's model shape plus the vocabulary size) and has the
same interface, so training, generation, checkpoints and every analysis run on all of them:

    model(idx, cache=..., pos_offset=..., manual=...) -> logits (B, T, V)
    model.new_cache(batch, max_len) -> a cache/state with .select(rows), .length, .max_len
    model.embed (the token embedding, tied to the unembedding), model.config, model.num_params()
    hooks: hook_embed, blocks.{i}.hook_resid_post, ln_final.hook_normalized (and more per family)

Whether a family has attention (so position variants, Canon layers and the encoder apply) is the
torch-free fact `cfglab.config.schema.MODEL_FAMILIES`, which config validation reads; the
parameter count of each is `cfglab.config.sizes.count_params`.
"""

from __future__ import annotations

from torch import nn

from cfglab.config.schema import FAMILY_NAMES, registry
from cfglab.model.gpt import GPT, GPTConfig
from cfglab.model.lstm import LSTMModel
from cfglab.model.ssm import SSMModel

# The one place family names live (DESIGN.md): config string -> class.
FAMILIES: dict[str, type[nn.Module]] = registry(
    FAMILY_NAMES,
    {"transformer": GPT, "lstm": LSTMModel, "ssm": SSMModel},
    "model.families.FAMILIES",
)


def build_family(cfg: GPTConfig) -> nn.Module:
    """The network `cfg.family` names (its shape checked by the caller)."""
    return FAMILIES[cfg.family](cfg)
