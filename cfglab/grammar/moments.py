"""Moments of string length: how long a grammar's strings are, before sampling any.

`length_moments(g)` gives the mean and the variance of the length of the string each
nonterminal derives. They decide whether a grammar can be sampled at all without a length cap
(`data/sampler.py` refuses when even a generous quantile is astronomically long) and what
`cfglab grammar check` reports. Solved one strongly connected component of the nonterminal
graph at a time, children first, so layered grammars hundreds of levels deep and grammars with
100k rules cost linear time; only recursive components need a dense solve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cfglab.errors import GrammarError

if TYPE_CHECKING:
    from cfglab.grammar.cfg import Grammar

# nonterminals in one recursive cycle (strongly connected component) whose moments are solved
# densely, O(size^3): beyond it a grammar is refused rather than left to hang
MAX_RECURSIVE_COMPONENT = 2000


def length_moments(
    g: Grammar, roots: set[int] | None = None
) -> tuple[np.ndarray, np.ndarray, float, list[int]]:
    """(mean (n_nt,), variance (n_nt,), radius, component) of the length of the string each
    nonterminal derives.

    Solved one strongly connected component of the graph "a has b on a right-hand side" at a
    time, children first: a component without recursion is a sum over its rules; a recursive
    one solves (I - M) e = r densely (M = expected counts of its own nonterminals per
    expansion). Variances come from the law of total variance, Var_a = sum_r p_r sum_i Var_si +
    sum_r p_r (m_r - E_a)^2 (m_r = the rule's expected length), which has no cancellation.
    `radius` is the largest spectral radius of M over the recursive components reachable from
    `roots` (default: all), `component` that component's nonterminals; radius >= 1 means an
    infinite expected length (the moments of those nonterminals are then inf). Values past
    float64 (a thousand-level grammar) are inf too.
    """
    n = g.n_nt
    kids = [sorted({s for ri in g.rules_of[a] for s in g.rules[ri].rhs if s < n}) for a in range(n)]
    # Python floats for the (usual) components of one non-recursive nonterminal: NumPy's
    # per-call cost would dominate on grammars of 100k nonterminals. x * x, not x ** 2: a
    # product past float64 is inf, a power raises.
    mean, var = [0.0] * n, [0.0] * n
    worst, worst_comp = 0.0, []
    for comp in _components(kids):
        a = comp[0]
        if len(comp) == 1 and a not in kids[a]:
            rules = [g.rules[ri] for ri in g.rules_of[a]]
            sums = [sum(1.0 if sym >= n else mean[sym] for sym in r.rhs) for r in rules]
            e = sum(r.prob * m_r for r, m_r in zip(rules, sums, strict=True))
            v = 0.0
            for r, m_r in zip(rules, sums, strict=True):
                d = m_r - e if e != float("inf") else 0.0
                v += r.prob * (d * d + sum(var[sym] for sym in r.rhs if sym < n))
            # (rounding leaves ~1e-12 where every rule has the same length: that is 0)
            mean[a], var[a] = e, (v if v > 1e-18 * e * e else 0.0) if e != float("inf") else e
            continue
        radius = _recursive_component(g, comp, mean, var)
        if (roots is None or any(b in roots for b in comp)) and radius > worst:
            worst, worst_comp = radius, list(comp)
    return np.array(mean), np.array(var), worst, worst_comp


def _recursive_component(g: Grammar, comp: list[int], mean: list, var: list) -> float:
    """Fill mean and var for the nonterminals of one recursive component; return its
    spectral radius (>= 1: infinite expected length, moments inf)."""
    n, m = g.n_nt, len(comp)
    if m > MAX_RECURSIVE_COMPONENT:
        raise GrammarError(
            f"{g.name or 'the grammar'}: {m} nonterminals recurse through each other "
            f"(more than {MAX_RECURSIVE_COMPONENT}, whose length moments cost O(n^3)); "
            "split the recursion"
        )
    where = {a: k for k, a in enumerate(comp)}
    inner = np.zeros((m, m))  # M: expected own-component children per expansion
    rest = np.zeros(m)  # expected length from terminals and finished children
    for a in comp:
        for ri in g.rules_of[a]:
            rule = g.rules[ri]
            for sym in rule.rhs:
                if sym in where:
                    inner[where[a], where[sym]] += rule.prob
                else:
                    rest[where[a]] += rule.prob * (1.0 if sym >= n else mean[sym])
    radius = float(max(abs(np.linalg.eigvals(inner))))
    if radius >= 1.0 - 1e-9:
        for a in comp:
            mean[a] = var[a] = float("inf")
        return radius
    eye = np.eye(m)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.linalg.solve(eye - inner, rest)
        for a in comp:
            mean[a] = float(e[where[a]])
        spread = np.zeros(m)  # sum_r p_r (m_r - E_a)^2 + variance from other components
        for a in comp:
            for ri in g.rules_of[a]:
                rule = g.rules[ri]
                m_r = sum(1.0 if sym >= n else mean[sym] for sym in rule.rhs)
                outside = sum(var[sym] for sym in rule.rhs if sym < n and sym not in where)
                d = m_r - mean[a]
                spread[where[a]] += rule.prob * (d * d + outside)
        v = np.linalg.solve(eye - inner, spread)
    for a in comp:
        var[a] = float(v[where[a]]) if np.isfinite(mean[a]) else float("inf")
    return radius


def _components(kids: list[list[int]]) -> list[list[int]]:
    """Strongly connected components of the graph a -> kids[a], children before parents
    (Tarjan's algorithm, iterative: grammars a thousand levels deep do not hit the recursion
    limit)."""
    n = len(kids)
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    comps: list[list[int]] = []
    counter = 0
    for root in range(n):
        if index[root] != -1:
            continue
        work = [(root, 0)]
        while work:
            a, i = work[-1]
            if i == 0:
                index[a] = low[a] = counter
                counter += 1
                stack.append(a)
                on_stack[a] = True
            if i < len(kids[a]):
                work[-1] = (a, i + 1)
                b = kids[a][i]
                if index[b] == -1:
                    work.append((b, 0))
                elif on_stack[b]:
                    low[a] = min(low[a], index[b])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[a])
            if low[a] == index[a]:
                comp = []
                while True:
                    b = stack.pop()
                    on_stack[b] = False
                    comp.append(b)
                    if b == a:
                        break
                comps.append(sorted(comp))
    return comps
