"""What every analysis family measures with: the model, its random-init twin, the grammar, the
run's settings, and the labelled strings shared between families (stage 6b).

An analysis family (cfglab.analyze.families) is a function of an `AnalysisContext`, so the same
family runs on a run's final model (the analyze stage), on each kept checkpoint (the dynamics
stage) or on a hand-built model in a test. Strings are drawn once per (purpose, n, seed) and
shared: the probe family's test strings are the embedding family's too. What does not change
from one checkpoint to the next (the random-init twin's numbers) is kept in `memo`, which the
dynamics stage passes from one checkpoint's context to the next, so the twin is measured once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from cfglab.config import ExperimentConfig
from cfglab.grammar.cfg import Grammar
from cfglab.seeds import stream_seed


def _quiet(message: str) -> None:
    pass


@dataclass
class AnalysisContext:
    model: nn.Module  # in eval mode, on the device the analyses run on
    grammar: Grammar
    cfg: ExperimentConfig  # the run's config (the probe / attention sections are the settings)
    twin: Callable[[], nn.Module] | None = None  # builds the random-init twin (None: no baseline)
    log: Callable[[str], None] = _quiet
    memo: dict[str, Any] = field(default_factory=dict)  # results that do not depend on the model
    strings: dict[tuple, Any] = field(default_factory=dict)  # (purpose, n, seed) -> SampleBatch
    # (model, n, seed) -> n cut0 generations at temperature 1 (BOS + completion, EOS included
    # when produced), the eval accuracy family's sampler (cfglab.stages.common builds it from
    # cfglab.evaluate, which analyze may not import); None: families skip what needs it
    generate: Callable[[nn.Module, int, int], list[np.ndarray]] | None = None

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)

    @property
    def max_len(self) -> int:
        """The longest string the analyses feed: BOS + string + EOS fill the model's window."""
        return self.model.config.block_size - 2

    def labelled(self, purpose: str, n: int, seed: int):
        """n labelled strings of the stream (seed, purpose), drawn once per context."""
        from cfglab.data.sampler import sample

        key = (purpose, n, seed)
        if key not in self.strings:
            self.strings[key] = sample(
                self.grammar, n, stream_seed(seed, purpose), max_len=self.max_len
            )
        return self.strings[key]

    def baseline(self, family: str, settings: Any, measure: Callable[[nn.Module], Any]):
        """`measure(twin)` for this family and settings, computed once per memo (None without a
        twin). The twin's numbers depend on the run's initialisation and the settings only, so
        the dynamics stage measures it once for every checkpoint."""
        if self.twin is None:
            return None
        key = f"{family}:{json.dumps(settings, sort_keys=True, default=str)}"
        if key not in self.memo:
            self.memo[key] = measure(self.twin())
        return self.memo[key]
