"""Hidden states of a model on labelled strings: the input every analysis reads (stage 6b).

`string_windows` places each string at positions 1..n of a model input (`BOS x EOS`, padded for
a GPT, packed with the next strings for an encoder, as in training); `resid_names` names the
probed activations (TransformerLens hook names); `HiddenStore` runs the model once per batch
with every probed layer cached and spills each layer to a temporary folder, so an analysis holds
one layer of one split in memory, not all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cfglab.errors import ConfigError


def string_windows(
    strings: Sequence[np.ndarray], *, eos: int, pad: int, block_size: int, causal: bool
) -> Tensor:
    """Model inputs (B, T) int64 in which string j's tokens sit at positions 1..n_j.

    Row j is `BOS x_j EOS` as in training. A causal model cannot see what follows, so the rows
    are padded with PAD to the longest; an encoder would see the padding, so its row continues
    with the next strings of the batch packed as in training (`BOS x EOS BOS x EOS ...`, the
    batch read cyclically) up to block_size: the context it was trained on."""
    from cfglab.data.vocab import BOS

    rows = []
    for j, x in enumerate(strings):
        if len(x) + 2 > block_size:
            raise ConfigError(
                f"a string of {len(x)} tokens does not fit the model's block_size "
                f"{block_size} with BOS and EOS; sample with max_len <= "
                f"{block_size - 2}"
            )
        parts, have, k = [], 0, j
        while True:
            y = strings[k % len(strings)]
            parts.append(np.concatenate([[BOS], y, [eos]]))
            have += len(y) + 2
            k += 1
            if causal or have >= block_size:
                break
        rows.append(np.concatenate(parts)[:block_size])
    t = max(len(r) for r in rows)
    out = np.full((len(rows), t), pad, dtype=np.int64)
    for j, r in enumerate(rows):
        out[j, : len(r)] = r
    return torch.from_numpy(out)


def resid_names(n_layer: int) -> list[str]:
    """The probed activations: the residual stream after each block."""
    return [f"blocks.{i}.hook_resid_post" for i in range(n_layer)]


class HiddenStore:
    """Hidden states of a set of strings for several layers, spilled to a temporary folder.

    `collect` runs the model once per batch with every layer cached and appends each layer's
    real-token rows (fp16) to that layer's file; `load` reads one layer back as (N, C). So the
    probes hold one layer of one split in memory, and the model runs once, not once per layer.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.n_embd: int | None = None

    def collect(
        self,
        model: nn.Module,
        split: str,
        strings: Sequence[np.ndarray],
        names: Sequence[str],
        *,
        eos: int,
        pad: int,
        batch_size: int = 16,
    ) -> None:
        from cfglab.model.hooks import run_with_cache

        cfg = model.config
        files = {n: open(self.dir / f"{split}.{n}.bin", "wb") for n in names}
        try:
            for start in range(0, len(strings), batch_size):
                chunk = strings[start : start + batch_size]
                tokens = string_windows(
                    chunk, eos=eos, pad=pad, block_size=cfg.block_size, causal=cfg.causal
                )
                device = next(model.parameters()).device
                _, cache = run_with_cache(model, tokens.to(device), names, stop_early=cfg.causal)
                for n in names:
                    h = cache[n]  # (B, T, C) on the model's device
                    self.n_embd = h.shape[-1]
                    # gather and halve on the device: half the bytes cross to the host
                    rows = torch.cat([h[j, 1 : len(x) + 1] for j, x in enumerate(chunk)])
                    files[n].write(rows.to(torch.float16).cpu().numpy().tobytes())
        finally:
            for f in files.values():
                f.close()

    def load(self, split: str, name: str) -> np.ndarray:
        """(N, C) float16 states of one layer for one split, strings concatenated."""
        return np.fromfile(self.dir / f"{split}.{name}.bin", dtype=np.float16).reshape(
            -1, self.n_embd
        )
