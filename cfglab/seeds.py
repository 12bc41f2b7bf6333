"""The one seed scheme: every random stream is keyed by (seed, purpose, key...) (no torch).

A stream's seed is numpy's `SeedSequence([seed, purpose id, *key])` reduced to 63 bits, so two
streams that differ in any part of their key are independent, and no arithmetic on seeds
(`seed * 1000 + 7`, `seed + 1`) can make two purposes meet. Each purpose has a fixed number of
key parts (checked), because SeedSequence pads short keys with zeros: (s, p, 5) and (s, p, 5, 0)
would otherwise be one stream.

    sample(grammar, n, stream_seed(cfg.eval.seed, "eval_kl"))   # the KL's true strings
    rng(cfg.probe.seed, "probe_fit", window_index)               # a numpy Generator

The training and validation data keep the ids they had before this scheme (0 and 1), so the
training stream of a run is the one it always was.
"""

from __future__ import annotations

import numpy as np

# purpose -> (id, number of key parts). Ids are never reused: a new purpose takes a new id.
PURPOSES: dict[str, tuple[int, int]] = {
    "train": (0, 2),  # training windows: (step, draw) fresh, (step, window) saved dataset
    "val": (1, 2),  # validation windows, as "train"
    "objective": (2, 3),  # the objective's own randomness (masked-LM masks): (split, step, rank)
    "eval_kl": (10, 0),  # true strings whose exact next-token rows the model is compared to
    "eval_prompts": (11, 2),  # true strings whose first `cut` tokens are prompts: (cut, round)
    "eval_generate": (12, 2),  # sampling the model's completions: (temperature index, cut)
    "eval_fixed_prompt": (13, 0),  # completions of one fixed prompt (diversity)
    "eval_reference": (14, 0),  # true strings beside the generations (subtree diversity)
    "eval_floor": (15, 0),  # true strings behind the loss floor
    "robust_prompts": (16, 2),  # true strings of corrupted prompts: (cut, round)
    "robust_corrupt": (17, 2),  # which prompt tokens are corrupted: (gamma index, cut)
    "robust_generate": (18, 3),  # completions of corrupted prompts: (gamma i, temperature i, cut)
    "probe_train": (20, 0),  # strings the probes learn on
    "probe_test": (21, 0),  # strings the probes are scored on
    "probe_fit": (22, 1),  # probe initialisation and batches: (window index)
    "attention_strings": (23, 0),  # strings of the attention statistics
    # 24 was "random_init" (the twin is now the run's own initialisation, under train.seed);
    # the id is not reused, so no stream of an old run changes meaning
    "per_run": (25, 1),  # a section's seed `per_run`: (section index), keyed by data.seed
    "robust_control": (26, 2),  # completions of the uncorrupted prompts: (temperature i, cut)
    "robust_reference": (27, 2),  # exact completions of the references: (gamma index, cut)
    "emergence_bootstrap": (28, 0),  # resamples of the emergence step's interval (dynamics)
    # the interventions family (cfglab.analyze.interventions); ids from 40, clear of others'
    "intervene_fit": (40, 0),  # strings the erasers are fitted on (and head means taken over)
    "intervene_test": (41, 0),  # strings whose next-token KL is measured under an intervention
    "intervene_pairs": (42, 0),  # the pool of strings activation-patching pairs are drawn from
    "intervene_random": (43, 3),  # a random eraser of the control: (concept, layer, draw)
    "intervene_bootstrap": (44, 0),  # resamples of strings / pairs behind the intervals
    "intervene_pick": (45, 0),  # the order in which patching pairs are picked from the pool
    # the metadata family (cfglab.evaluate.metadata); ids from 60
    "eval_metadata": (60, 0),  # true strings whose metadata prompts the generations
    "eval_metadata_generate": (61, 1),  # completions of metadata prompts: (temperature index)
    "metadata_bootstrap": (62, 0),  # resamples of the strings behind the KL intervals
}


def stream_seed(seed: int, purpose: str, *key: int) -> int:
    """A 63-bit seed for the stream (seed, purpose, *key); see the module docstring."""
    if purpose not in PURPOSES:
        raise KeyError(f"unknown seed purpose {purpose!r}; add it to cfglab.seeds.PURPOSES")
    pid, arity = PURPOSES[purpose]
    if len(key) != arity:
        raise ValueError(f"seed purpose {purpose!r} takes {arity} key parts, got {len(key)}")
    parts = [int(seed), pid, *(int(k) for k in key)]
    if min(parts) < 0:
        raise ValueError(f"seed keys must be >= 0, got {parts}")
    return int(np.random.SeedSequence(parts).generate_state(2, np.uint64)[0] >> 1)


def rng(seed: int, purpose: str, *key: int) -> np.random.Generator:
    """A numpy Generator for the stream (seed, purpose, *key)."""
    return np.random.default_rng(stream_seed(seed, purpose, *key))


def key_seed(*key: int) -> int:
    """A 63-bit sampler seed from an integer key (SeedSequence mixes the parts): the data
    streams' (cfglab.data.dataset, cfglab.data.in_context) per-step and per-window seeds."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint64)[0] >> 1)
