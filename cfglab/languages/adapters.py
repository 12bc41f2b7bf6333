"""A language's exact distribution as an evaluation model: the oracle of cfglab.evaluate.

`exact_logprob_fn(lang)` has the LogProbFn contract of cfglab.evaluate.adapters (a batch of
token sequences, each starting with BOS -> per sequence a (len, V) array of next-token
log-probabilities, V = T+4, columns 1..T the terminals, T+1 EOS, -inf on BOS/MASK/PAD), so
the evaluation code that takes a model (sampling_generate_fn, distribution_metrics,
sequence_log_probs) runs on the oracle of a language as on a grammar's: accuracy 1, KL 0.
NumPy only (the evaluate stage is not imported: languages sit to its left).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cfglab.languages.base import Language


def exact_logprob_fn(lang: Language) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """The oracle model of `lang`: its exact next-token distribution as log-probabilities over
    the vocabulary. Rows after a prefix of zero mass are NaN, as the language gives them."""
    t = lang.n_t
    cols = np.concatenate([[t + 1], np.arange(1, t + 1)])  # exact column c -> vocab id

    def model(batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        strings = [np.asarray(s[1:], dtype=np.int64) for s in batch]  # drop BOS
        out = []
        for p in lang.next_token_dist(strings):
            lq = np.full((p.shape[0], t + 4), -np.inf)  # (n+1, V)
            with np.errstate(divide="ignore"):
                lq[:, cols] = np.log(p)
            out.append(lq)
        return out

    return model
