"""Exact next-token distributions at every prefix: cfglab vs genlm-grammar's `EarleyLM.p_next`.

`python -m benchmarks nexttoken`: time per string for the (n+1, T+1) distributions of 50
cfg3f and 20 cfg3k sampled strings, and the largest absolute difference between the two.
genlm-grammar is a benchmark-only dependency (`pip install genlm-grammar`); without it the
benchmark says so and times cfglab alone. genlm recurses per token, so each genlm string runs
with a raised recursion limit and a per-grammar time budget (strings it did not reach are
reported, not hidden).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from cfglab.data.sampler import sample
from cfglab.exact import inside
from cfglab.grammar.builtin import load
from cfglab.grammar.cfg import Grammar

SETUP = {"cfg3f": 50, "cfg3k": 20}
GENLM_BUDGET_S = 90.0  # per grammar


def genlm_model(g: Grammar):
    """The grammar as a genlm EarleyLM, or the reason it cannot be built."""
    try:
        from genlm.grammar import CFG, EarleyLM, Float
    except ImportError as exc:
        return None, f"genlm-grammar not installed ({exc}); pip install genlm-grammar"
    lines = []
    for r in g.rules:
        rhs = " ".join(f"t{s - g.n_nt + 1}" if g.is_terminal(s) else f"N{s}" for s in r.rhs)
        lines.append(f"{r.prob!r}: N{r.lhs} -> {rhs}")
    return EarleyLM(CFG.from_string("\n".join(lines), Float, start="N0")), ""


def genlm_rows(lm, x: np.ndarray, n_t: int) -> np.ndarray:
    from genlm.grammar import EOS

    toks = [f"t{t}" for t in x]
    rows = np.zeros((len(x) + 1, n_t + 1))
    for k in range(len(x) + 1):
        p = lm.p_next(toks[:k])
        rows[k, 0] = p[EOS] if EOS in p else 0.0
        for t in range(1, n_t + 1):
            rows[k, t] = p[f"t{t}"] if f"t{t}" in p else 0.0
    lm.clear_cache()
    return rows


def main() -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
    print(
        f"{'grammar':8} {'strings':>7} {'mean len':>8} {'cfglab ms/str':>13} "
        f"{'genlm s/str':>11} {'genlm done':>10} {'speedup':>8} {'max |diff|':>10}"
    )
    for name, n in SETUP.items():
        g = load(name)
        strings = sample(g, n, seed=0, labels=False).strings()
        inside.next_token_dist(g, strings[:1])  # compile / load the cache outside the timing
        ours, t_each = [], []  # per string, so ratios compare the same strings
        for x in strings:
            t0 = time.perf_counter()
            ours.extend(inside.next_token_dist(g, [x]))
            t_each.append(time.perf_counter() - t0)
        t_ours = float(np.mean(t_each))
        lm, why = genlm_model(g)
        done, t_genlm, t_ours_done, diff, failed = 0, 0.0, 0.0, 0.0, []
        if lm is not None:
            t_start = time.perf_counter()
            for x, rows, t_x in zip(strings, ours, t_each, strict=True):
                if time.perf_counter() - t_start > GENLM_BUDGET_S:
                    break
                t0 = time.perf_counter()
                try:
                    theirs = genlm_rows(lm, x, g.n_t)
                except RecursionError:
                    failed.append(len(x))
                    continue
                t_genlm += time.perf_counter() - t0
                t_ours_done += t_x
                diff = max(diff, float(np.abs(theirs - rows).max()))
                done += 1
        if done:
            print(
                f"{name:8} {n:>7} {np.mean([len(s) for s in strings]):>8.0f} "
                f"{t_ours * 1e3:>13.3f} {t_genlm / done:>11.3f} {done:>10} "
                f"{t_genlm / t_ours_done:>7.0f}x {diff:>10.1e}"
            )
        else:
            print(
                f"{name:8} {n:>7} {np.mean([len(s) for s in strings]):>8.0f} "
                f"{t_ours * 1e3:>13.3f} {'-':>11} {0:>10} {'-':>8} {'-':>10}  {why}"
            )
        if failed:
            print(f"         genlm RecursionError on {len(failed)} strings (lengths {failed})")
    print("goal: faster than genlm, max |diff| <= 1e-9")
