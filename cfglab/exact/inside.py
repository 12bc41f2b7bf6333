"""String probabilities, prefix probabilities and the exact next-token distribution.

Stage 3 of the pipeline (no torch): the ground truth the KL metric compares a model against
(SPEC.md "KL"; RESEARCH.md §4.3). All three come from one scaled left-to-right sweep
(`sweep.py`): inside probabilities of the binarised grammar plus the pending left-corner
weights, each token's leaf divided by its conditional probability so nothing underflows::

    lp = log_prob(g, strings)             # (B,) log P(x), -inf outside the language
    lpp = log_prefix_prob(g, strings)     # per string (n+1,): log P(x_1..x_k is a prefix)
    dist = next_token_dist(g, strings)    # per string (n+1, T+1): row k = P(next | x_1..x_k)
    for lp_x, dist_x in log_prob_and_next(g, strings): ...  # both, one sweep and string at a time

Columns of `next_token_dist`: 0 = EOS, j = the terminal with token id j (so columns 1..T match
vocabulary ids). Row k sums to 1 for every viable prefix. Note: a sentence can also be a proper
prefix of a longer sentence (it happens in cfg3f), so row n need not be all EOS.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from cfglab.exact import sweep
from cfglab.exact.cyk import check_strings
from cfglab.exact.normal_form import NormalForm, normal_form
from cfglab.grammar.cfg import Grammar


def log_prob(grammar: Grammar, strings: Sequence[np.ndarray]) -> np.ndarray:
    """(B,) float64: natural-log probability of each string; -inf if it is not a sentence."""
    if not isinstance(grammar, Grammar):  # a language (cfglab.languages): its own closed form
        return grammar.log_prob(strings)
    return sweep.log_prob_many(normal_form(grammar), check_strings(grammar, strings))


def log_prefix_prob(grammar: Grammar, strings: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per string, (n+1,) float64: log P(a sentence starts with x_1..x_k), k = 0..n (k = 0 gives
    0); -inf from the first token no sentence can have there."""
    if not isinstance(grammar, Grammar):  # a language (cfglab.languages): its own closed form
        return grammar.log_prefix_prob(strings)
    return [lpp for lpp, _ in _prefix_and_rows(grammar, strings)]


def next_token_dist(grammar: Grammar, strings: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per string, (n+1, T+1) float64: row k = distribution of the next symbol after the first
    k tokens, column 0 = EOS, column j = token id j. Rows sum to 1. Rows after a prefix that no
    sentence starts with (k > first_error) are NaN."""
    if not isinstance(grammar, Grammar):  # a language (cfglab.languages): its own closed form
        return grammar.next_token_dist(strings)
    return [rows for _, rows in _prefix_and_rows(grammar, strings)]


def log_prob_and_next(
    grammar: Grammar, strings: Sequence[np.ndarray]
) -> Iterator[tuple[float, np.ndarray]]:
    """Per string, (log P(x), (n+1, T+1) next-token rows): the values of `log_prob` and
    `next_token_dist`, from one sweep per string instead of two, computed as the iteration
    reaches the string (one string's rows in memory at a time). Every string is checked, and
    the tables of the longest sized, before the first is swept."""
    if not isinstance(grammar, Grammar):  # a language (cfglab.languages): its own closed form
        yield from grammar.log_prob_and_next(strings)
        return
    nf = normal_form(grammar)
    xs = check_strings(grammar, strings)
    if xs:
        sweep.check_size(nf, max(len(x) for x in xs), want_rows=True)
    for s, x in enumerate(xs):
        log_p, _, rows = _sweep_rows(nf, x, s)
        yield log_p, rows


def _prefix_and_rows(grammar: Grammar, strings: Sequence[np.ndarray]):
    nf = normal_form(grammar)
    return [_sweep_rows(nf, x, s)[1:] for s, x in enumerate(check_strings(grammar, strings))]


def _sweep_rows(nf: NormalForm, x: np.ndarray, s: int) -> tuple[float, np.ndarray, np.ndarray]:
    """(log P(x), lpp (n+1,), rows (n+1, T+1)) of the string number s from one sweep."""
    n = len(x)
    log_c, eos, rows, err, *_ = sweep.run(
        nf, x, is_prob=True, want_rows=True, where=f"string {s}: "
    )
    last = n if err == -1 else err  # rows 0..last are defined
    # scaled rows sum to Z_k = P(prefix k) / prod_{m<k} c_m, which is 1 up to rounding
    z = rows[: last + 1].sum(axis=1)
    rows[: last + 1] /= z[:, None]
    rows[last + 1 :] = np.nan
    lpp = np.full(n + 1, -np.inf)
    lpp[: last + 1] = np.concatenate([[0.0], np.cumsum(log_c[:last])]) + np.log(z)
    # log P exactly as log_prob computes it (sweep.log_prob_many)
    log_p = -np.inf
    if err == -1 and eos[n] > 0:
        log_p = float(sweep.sum_log_c(log_c) + np.log(eos[n]))
    return log_p, lpp, rows
