"""Training objectives: what a model reads and what it must predict, from a packed window.

Every objective takes windows of `block_size + 1` tokens (B, T+1) from the data stream and
returns model inputs x (B, T), targets y (B, T) and the loss; targets of -100 are ignored.

- next_token (GPT): x = window[:, :-1], y = window[:, 1:], loss on every position (the paper)
  but those whose target is a metadata token (an id after PAD: cfglab.data.metadata).
- mlm (encoder, BERT/DeBERTa style): x = window[:, :-1] with 15% of positions chosen; of those
  80% become MASK, 10% a random terminal, 10% stay; y = the original token at chosen positions,
  -100 elsewhere. The choice is drawn from a generator the loop seeds by (seed, step, rank),
  so resumed runs mask identically.

Worked example (terminals 1..3, BOS=0, EOS=4, MASK=5), window [0 2 1 4 0 3 3]::

    next_token: x = 0 2 1 4 0 3    y = 2 1 4 0 3 3
    mlm:        x = 0 5 1 4 0 3    y = . 2 . . . .    (position 1 chosen; '.' = -100, ignored)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cfglab.config import OBJECTIVES as CAUSAL
from cfglab.config.schema import registry
from cfglab.errors import ConfigError

IGNORE = -100  # target value that F.cross_entropy skips


@dataclass(frozen=True)
class NextToken:
    causal = True

    def make_batch(
        self,
        window: torch.Tensor,
        eos_id: int,
        mask_id: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # window (B, T+1) -> x (B, T), y (B, T); ids after PAD (mask_id + 1) are metadata
        # tokens (cfglab.data.metadata): read, never predicted
        y = window[:, 1:]
        return window[:, :-1], y.masked_fill(y > mask_id + 1, IGNORE)


@dataclass(frozen=True)
class MaskedLM:
    prob: float = 0.15
    causal = False

    def make_batch(
        self,
        window: torch.Tensor,
        eos_id: int,
        mask_id: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random replacements are terminals 1..eos_id-1."""
        tokens = window[:, :-1]  # (B, T)
        u = torch.rand(tokens.shape, generator=generator, device=tokens.device)
        chosen = u < self.prob  # (B, T) bool
        y = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE))
        kind = torch.rand(tokens.shape, generator=generator, device=tokens.device)
        rand_tok = torch.randint(1, eos_id, tokens.shape, generator=generator, device=tokens.device)
        x = torch.where(chosen & (kind < 0.8), torch.full_like(tokens, mask_id), tokens)
        x = torch.where(chosen & (kind >= 0.8) & (kind < 0.9), rand_tok, x)
        return x, y


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over non-ignored targets. logits (B, T, V), y (B, T)."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE
    )


def get_objective(name: str, mlm_prob: float = 0.15):
    """The objective named in the config (ConfigError listing the choices if unknown)."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](mlm_prob)


# name -> builder(mlm_prob); cfglab.config.OBJECTIVES lists the same names without torch
OBJECTIVES = registry(
    tuple(CAUSAL), {"next_token": lambda mlm_prob: NextToken(), "mlm": MaskedLM}, "OBJECTIVES"
)
