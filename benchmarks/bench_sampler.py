"""Sampler throughput: cfglab's vectorised labelled sampler against plain recursive Python.

The reference draws each string by pre-order recursion with `random.Random` and records the
same labels as `sample(..., labels=True)` for layered grammars: per token and level the
ancestor's index within its level and the subtree ordinal, then the boundaries. Both are timed
in the same run on the same grammar; the target is a ratio >= 10x in tokens per second.
Times are process CPU time (`time.process_time`; both sides single-threaded), so the ratio
holds on a machine shared with other jobs, where wall-clock time mostly measures the others.
"""

from __future__ import annotations

import bisect
import random
import sys
import time

import numpy as np

from cfglab.data.sampler import sample
from cfglab.grammar import load
from cfglab.grammar.cfg import Grammar


def sample_recursive_labelled(grammar: Grammar, rng: random.Random):
    """One string with labels by plain recursion: (tokens, ancestors, subtree, is_boundary),
    the label arrays (L, n) as in SampleBatch."""
    levels = grammar.levels
    n_lev = len(levels)
    index_in_level = {a: k for lev in levels for k, a in enumerate(lev)}
    n_nt = grammar.n_nt
    tokens: list[int] = []
    rows: list[tuple[int, ...]] = []  # per token: (ancestor index, subtree ordinal) per level
    path = [0] * (2 * n_lev)
    count = [-1] * n_lev
    # per nonterminal: its rules and their cumulative probabilities, for bisect on rng.random()
    choice = [
        (rs, np.cumsum([grammar.rules[r].prob for r in rs]).tolist()) for rs in grammar.rules_of
    ]
    rhs = [r.rhs for r in grammar.rules]

    def expand(sym: int, lev: int) -> None:
        if sym >= n_nt:
            tokens.append(sym - n_nt + 1)
            rows.append(tuple(path))
            return
        count[lev] += 1
        path[2 * lev] = index_in_level[sym]
        path[2 * lev + 1] = count[lev]
        rules, cum = choice[sym]
        k = min(bisect.bisect_right(cum, rng.random()), len(rules) - 1)
        for s in rhs[rules[k]]:
            expand(s, lev + 1)

    expand(0, 0)
    table = np.array(rows, dtype=np.int64).T  # (2L, n)
    ancestors, subtree = table[0::2], table[1::2]
    is_boundary = np.ones_like(subtree, dtype=bool)
    is_boundary[:, :-1] = subtree[:, 1:] != subtree[:, :-1]
    return tokens, ancestors, subtree, is_boundary


def time_reference(grammar: Grammar, seconds: float) -> tuple[int, float]:
    rng = random.Random(0)
    n_tok, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        n_tok += len(sample_recursive_labelled(grammar, rng)[0])
    return n_tok, time.process_time() - t0


def time_cfglab(grammar: Grammar, n: int, labels: bool, repeats: int = 3) -> tuple[int, float]:
    best = float("inf")
    for r in range(repeats):
        t0 = time.process_time()
        batch = sample(grammar, n, seed=r, labels=labels)
        best = min(best, time.process_time() - t0)
    return batch.ids.size, best


def main() -> None:
    sys.setrecursionlimit(10_000)
    print(
        f"{'grammar':8} {'reference tok/s':>16} {'cfglab tok/s':>13} {'ratio':>7} "
        f"{'cfglab, no labels':>18}"
    )
    for name in ("cfg3f", "cfg3k"):
        g = load(name)
        ref_tok, ref_s = time_reference(g, seconds=2.0)
        tok, secs = time_cfglab(g, 4000, labels=True)
        tok_nl, secs_nl = time_cfglab(g, 4000, labels=False)
        ref_rate, rate = ref_tok / ref_s, tok / secs
        print(
            f"{name:8} {ref_rate:>16,.0f} {rate:>13,.0f} {rate / ref_rate:>6.1f}x "
            f"{tok_nl / secs_nl:>18,.0f}"
        )
    print("tokens per CPU second; target: ratio >= 10x (labelled sampling, same run)")


if __name__ == "__main__":
    main()
