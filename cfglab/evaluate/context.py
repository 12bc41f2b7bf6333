"""What every metric family measures with: the grammar, the model, the settings, the seeded
streams of true strings, and the generations shared between families (stage 6a).

A family (cfglab.evaluate.families) is a function of an `EvalContext`, so the same family runs
on a trained GPT, the exact oracle or a uniform baseline (cfglab.evaluate.adapters). Every random
stream is keyed by (eval.seed, purpose, ...) through cfglab.seeds, so families draw what they
draw independently of each other and of the order they run in. Time is booked per kind of work
('model' = forward passes and generation, 'exact' = recognizer / inside, 'sample' = true
strings) in `clock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cfglab.config import EvalConfig
from cfglab.data.sampler import sample
from cfglab.data.vocab import BOS
from cfglab.errors import CfglabError
from cfglab.evaluate.adapters import GenerateFn, LogProbFn
from cfglab.grammar.cfg import Grammar
from cfglab.seeds import rng, stream_seed

PROMPT_ROUNDS = 20  # rounds of redrawing true strings too short for a cut, before giving up


class Clock:
    """Seconds spent per kind of work."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"model": 0.0, "exact": 0.0, "sample": 0.0}

    def wrap(self, kind: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[kind] += time.perf_counter() - t0

        return timed


@dataclass
class EvalContext:
    grammar: Grammar
    logprob: LogProbFn  # the model's next-token log-probabilities
    make_generate: Callable[[float], GenerateFn]  # temperature -> the model's sampler
    settings: EvalConfig
    max_len: int | None = None  # true strings longer than this are redrawn (block_size - 1)
    training: set[bytes] | None = None  # the saved training strings, for 'seen_in_training'
    run_dir: Path | None = None  # the run whose training stream memorisation replays (None: a
    # model without a run: the oracle, a baseline)
    step: int | None = None  # the checkpoint's training step: strings seen before it count
    # (None: the run's latest checkpoint)
    clock: Clock = field(default_factory=Clock)
    judged: dict = field(default_factory=dict)  # (cut, temperature index) -> generations,
    # judged once by the accuracy family and shared (diversity reads the cut0 ones)
    memo: dict = field(default_factory=dict)  # what does not depend on the model (true strings,
    # their exact distributions): the dynamics stage shares it between checkpoints

    @property
    def n(self) -> int:
        return self.settings.n_samples

    @property
    def n_kl(self) -> int:
        return self.settings.n_kl or self.settings.n_samples

    @property
    def eos(self) -> int:
        return self.grammar.n_t + 1

    @property
    def in_context(self):
        """The run's data.in_context as an InContextSpec (cfglab.data.in_context), read from its
        config.json once per memo; None without a run, or for a run of one fixed grammar."""
        if self.run_dir is None:
            return None
        key = ("in_context_spec", str(self.run_dir))
        if key not in self.memo:
            from cfglab import rundir
            from cfglab.data.in_context import InContextSpec

            cfg = rundir.read_run_config(self.run_dir)
            spec = None if cfg.data.in_context is None else InContextSpec.from_config(cfg)
            self.memo[key] = spec
        return self.memo[key]

    def seed(self, purpose: str, *key: int) -> int:
        return stream_seed(self.settings.seed, purpose, *key)

    def rng(self, purpose: str, *key: int) -> np.random.Generator:
        return rng(self.settings.seed, purpose, *key)

    def true_strings(self, n: int, purpose: str, *key: int) -> list[np.ndarray]:
        """n fresh true strings of the stream (eval.seed, purpose, *key)."""
        draw = self.clock.wrap("sample", sample)
        return draw(
            self.grammar, n, self.seed(purpose, *key), max_len=self.max_len, labels=False
        ).strings()

    def true_batch(self, n: int, purpose: str, *key: int):
        """The labelled SampleBatch of the same stream as `true_strings` (the same strings),
        drawn once per memo."""
        memo_key = ("true_batch", n, purpose, *key)
        if memo_key not in self.memo:
            draw = self.clock.wrap("sample", sample)
            self.memo[memo_key] = draw(
                self.grammar, n, self.seed(purpose, *key), max_len=self.max_len, labels=True
            )
        return self.memo[memo_key]

    def strings_longer_than(self, n: int, cut: int, purpose: str) -> list[np.ndarray]:
        """n true strings longer than `cut` (shorter ones are redrawn), stream (purpose, cut,
        round)."""
        got: list[np.ndarray] = []
        for round_ in range(PROMPT_ROUNDS):
            got += [s for s in self.true_strings(2 * n, purpose, cut, round_) if len(s) > cut]
            if len(got) >= n:
                return got[:n]
        raise CfglabError(
            f"too few true strings of {self.grammar.name or 'the grammar'} are longer than "
            f"cut={cut} (mean length {self.grammar.mean_length:.1f}): use smaller eval.cuts"
        )

    def prompts(self, n: int, cut: int) -> list[np.ndarray]:
        """n cutC prompts: BOS + the first `cut` tokens of true strings (BOS alone for cut 0)."""
        if cut == 0:
            return [np.array([BOS], dtype=np.int64)] * n
        pool = self.strings_longer_than(n, cut, "eval_prompts")
        return [np.concatenate([[BOS], s[:cut]]).astype(np.int64) for s in pool]

    def model(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The model's log-probability rows (timed as 'model')."""
        return self.clock.wrap("model", self.logprob)(batch)

    def exact(self, fn: Callable, *args, **kwargs):
        """An exact-stage call (recognizer, inside), timed as 'exact'."""
        return self.clock.wrap("exact", fn)(*args, **kwargs)

    def generate(
        self, temperature: float, prompts: list[np.ndarray], rng: np.random.Generator
    ) -> list[np.ndarray]:
        """One completion per prompt at `temperature`, in batches of eval.batch_size."""
        gen = self.clock.wrap("model", self.make_generate(temperature))
        b = self.settings.batch_size
        out: list[np.ndarray] = []
        for i in range(0, len(prompts), b):
            out.extend(gen(prompts[i : i + b], rng))
        return out
