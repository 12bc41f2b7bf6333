"""Membership, parse trees, parse counts and error positions: exact ground truth for strings.

Stage 3 of the pipeline (no torch). Every function takes a grammar and a batch of strings, each
a 1-D array of token ids 1..T (cfglab/data/vocab.py), mixed lengths allowed::

    ok = recognize(g, strings)            # (B,) bool
    ok, err = judge(g, strings)           # both of the above and below from one sweep
    trees = parse(g, strings)             # one parse per string, None if rejected
    counts = count_parses(g, strings)     # exact Python ints
    err = first_error(g, strings)         # first token no sentence can have there, else -1
    dist = min_substitutions(g, strings)  # fewest token substitutions to reach the language

Recognition runs the boolean chart sweep of `sweep.py` (top-down filtered CYK on the binarised
grammar, compiled with Numba) in chunks that return to Python often enough for Ctrl-C;
`min_substitutions` is a separate min-cost CYK (the authors' "slow DP", here in compiled code
with span lengths pruned to those each symbol can derive), chunked by span length and refused
up front (ExactError) when its (N, n+1, n+1) cost table would not fit in MAX_TABLE_BYTES.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from cfglab.errors import ExactError, VocabError
from cfglab.exact import sweep
from cfglab.exact.normal_form import NormalForm, normal_form
from cfglab.grammar.cfg import Grammar


@dataclass(frozen=True)
class Tree:
    """A derivation tree of the grammar (binarisation undone). Leaves are token ids."""

    nt: int  # nonterminal id of the grammar
    start: int  # first token (0-based)
    end: int  # one past the last token
    children: tuple[Tree | int, ...]

    def spans(self) -> np.ndarray:
        """(K, 3) int64 rows (nt, start, end) of every nonterminal node, in pre-order (as the
        sampler's `spans`)."""
        rows, stack = [], [self]
        while stack:
            node = stack.pop()
            rows.append((node.nt, node.start, node.end))
            stack.extend(c for c in reversed(node.children) if isinstance(c, Tree))
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    def labels(self, grammar: Grammar) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For a layered grammar: (ancestors (L, n) int16, subtree (L, n) int32, is_boundary
        (L, n) bool), defined as the sampler's labels of the same tree."""
        if grammar.levels is None:
            raise ValueError(f"{grammar!r} is not layered: use Tree.spans() instead of labels")
        index = {a: k for lev in grammar.levels for k, a in enumerate(lev)}
        n_lev, n = len(grammar.levels), self.end - self.start
        ancestors = np.zeros((n_lev, n), np.int16)
        subtree = np.zeros((n_lev, n), np.int32)
        is_boundary = np.zeros((n_lev, n), bool)
        ordinal = [0] * n_lev
        for nt, start, end in self.spans():  # pre-order = left to right within each level
            lev = next(lv for lv in range(n_lev) if nt in grammar.levels[lv])
            ancestors[lev, start:end] = index[int(nt)]
            subtree[lev, start:end] = ordinal[lev]
            is_boundary[lev, end - 1] = True
            ordinal[lev] += 1
        return ancestors, subtree, is_boundary


def check_strings(grammar: Grammar, strings: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each string as an int64 array; a VocabError names the first string and token out of
    range."""
    out = []
    n_t = grammar.n_t
    for s, x in enumerate(strings):
        arr = np.asarray(x)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise VocabError(
                f"string {s}: expected a 1-D array of token ids 1..{n_t}, got shape "
                f"{arr.shape} dtype {arr.dtype}; encode names with Vocab.encode"
            )
        out.append(arr if arr.dtype == np.int64 else arr.astype(np.int64))
    # one range check over all tokens; only a failure looks for the string that has it
    flat = np.concatenate(out) if out else np.zeros(0, np.int64)
    if flat.size and (flat.min() < 1 or flat.max() > n_t):
        for s, arr in enumerate(out):
            bad = np.flatnonzero((arr < 1) | (arr > n_t))
            if bad.size:
                raise VocabError(
                    f"string {s}: token id {arr[bad[0]]} at position {bad[0]} is not a "
                    f"terminal of {grammar.name or 'the grammar'} (ids 1..{n_t}; "
                    "strings carry no BOS/EOS/PAD)"
                )
    return out


def judge(grammar: Grammar, strings: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """((B,) bool accepted, (B,) int64 first error) from one boolean sweep per string: what
    `recognize` and `first_error` return, for half the work of calling both."""
    if not isinstance(grammar, Grammar):  # a language (cfglab.languages): its own closed form
        return grammar.judge(strings)
    return sweep.judge_many(normal_form(grammar), check_strings(grammar, strings))


def recognize(grammar: Grammar, strings: Sequence[np.ndarray]) -> np.ndarray:
    """(B,) bool: is each string a sentence of the grammar?"""
    if not isinstance(grammar, Grammar):  # a language (cfglab.languages): its own closed form
        return grammar.recognize(strings)
    return judge(grammar, strings)[0]


def first_error(grammar: Grammar, strings: Sequence[np.ndarray]) -> np.ndarray:
    """(B,) int64: index of the first token at which the prefix stops being a prefix of any
    sentence; -1 if every prefix is viable (a sentence, or an unfinished one)."""
    if not isinstance(grammar, Grammar):  # a language (cfglab.languages): its own closed form
        return grammar.first_error(strings)
    return judge(grammar, strings)[1]


def _chart(
    nf: NormalForm, x: np.ndarray, where: str = ""
) -> dict[tuple[int, int], set[int]] | None:
    """The filtered boolean chart {(i, j): binarised symbols deriving x[i:j]}, None if x is
    rejected. Insertion order = the sweep's order, a topological order of the cells."""
    _, eos, _, err, cell_start, end_off, ent_off, ent_sym, _ = sweep.run(
        nf, x, is_prob=False, where=where
    )
    n = len(x)
    if err != -1 or eos[n] <= 0:
        return None
    chart = {}
    for j in range(1, n + 1):
        for c in range(end_off[j], end_off[j + 1]):
            chart[(int(cell_start[c]), j)] = {int(a) for a in ent_sym[ent_off[c] : ent_off[c + 1]]}
    return chart


def _rules_by_parent(nf: NormalForm) -> list[list[tuple[int, int]]]:
    by_parent: list[list[tuple[int, int]]] = [[] for _ in range(nf.n_sym)]
    for a, b, c in zip(nf.bin_parent, nf.bin_left, nf.bin_right, strict=True):
        by_parent[int(a)].append((int(b), int(c)))
    return by_parent


def count_parses(grammar: Grammar, strings: Sequence[np.ndarray]) -> list[int]:
    """Number of distinct derivation trees of each string (exact; 0 if rejected)."""
    nf = normal_form(grammar)
    by_parent = _rules_by_parent(nf)
    ucount = _unary_chain_counts(nf)
    counts = []
    for s, x in enumerate(check_strings(grammar, strings)):
        chart = _chart(nf, x, where=f"string {s}: ")
        if chart is None:
            counts.append(0)
            continue
        ends_from: dict[int, list[int]] = {}
        cnt: dict[tuple[int, int], dict[int, int]] = {}
        for (i, j), syms in chart.items():  # topological order: parts before wholes
            pre = {}
            for a in syms:
                total = int(j == i + 1 and nf.lex[x[i], a] > 0)
                for b, c in by_parent[a]:
                    for k in ends_from.get(i, ()):
                        right = cnt.get((k, j))
                        if k < j and right is not None and c in right:
                            total += cnt[(i, k)].get(b, 0) * right[c]
                pre[a] = total
            cnt[(i, j)] = {a: sum(ucount[a].get(b, 0) * v for b, v in pre.items()) for a in syms}
            ends_from.setdefault(i, []).append(j)
        counts.append(int(cnt[(0, len(x))].get(0, 0)))
    return counts


def _unary_chain_counts(nf: NormalForm) -> list[dict[int, int]]:
    """counts[A][B]: the number of unary chains A =>* B (1 for A = B), exact Python ints (they
    grow like 2^depth), by a walk of the acyclic unary graph from the leaves up."""
    children: list[list[int]] = [[] for _ in range(nf.n_sym)]
    for a, b, _ in nf.unary:
        children[a].append(b)
    counts: list[dict[int, int] | None] = [None] * nf.n_sym

    def of(a: int) -> dict[int, int]:
        stack = [a]
        while stack:  # iterative post-order: unary chains can be thousands deep
            top = stack[-1]
            todo = [c for c in children[top] if counts[c] is None]
            if todo:
                stack += todo
                continue
            stack.pop()
            if counts[top] is None:
                row = {top: 1}
                for c in children[top]:
                    for b, k in counts[c].items():
                        row[b] = row.get(b, 0) + k
                counts[top] = row
        return counts[a]

    return [of(a) for a in range(nf.n_sym)]


def parse(grammar: Grammar, strings: Sequence[np.ndarray]) -> list[Tree | None]:
    """One derivation tree per string (None if rejected)."""
    nf = normal_form(grammar)
    by_parent = _rules_by_parent(nf)
    unary_of: list[list[int]] = [[] for _ in range(nf.n_sym)]
    for a, b, _ in nf.unary:
        unary_of[a].append(b)
    trees: list[Tree | None] = []
    for s, x in enumerate(check_strings(grammar, strings)):
        chart = _chart(nf, x, where=f"string {s}: ")
        if chart is None:
            trees.append(None)
            continue
        ends_from: dict[int, list[int]] = {}
        for i, j in chart:
            ends_from.setdefault(i, []).append(j)

        def expand(a: int, i: int, j: int, chart=chart, ends_from=ends_from, x=x):
            """The children (symbol, i, j) of one derivation step of a over x[i:j]."""
            if j == i + 1 and nf.lex[x[i], a] > 0:
                return [(-1, i, j)]
            for b, c in by_parent[a]:
                for k in ends_from[i]:
                    if k < j and b in chart[(i, k)] and c in chart.get((k, j), ()):
                        return [(b, i, k), (c, k, j)]
            for b in unary_of[a]:
                if b in chart[(i, j)]:
                    return [(b, i, j)]
            raise AssertionError("chart entry without a derivation")  # a bug, never bad input

        # iterative post-order, so 2,000-level trees do not hit Python's recursion limit
        built: dict[tuple[int, int, int], list] = {}  # (sym, i, j) -> children in the grammar
        stack = [((0, 0, len(x)), False)]
        while stack:
            node, ready = stack.pop()
            a, i, j = node
            if a == -1 or node in built:
                continue
            kids = expand(a, i, j)
            if not ready:
                stack.append((node, True))
                stack.extend((k, False) for k in kids)
                continue
            children: list = []
            for b, ki, kj in kids:
                if b == -1:
                    children.append(int(x[ki]))
                elif nf.is_added[b]:  # splice out suffix and preterminal symbols
                    children.extend(built[(b, ki, kj)])
                else:
                    children.append(Tree(b, ki, kj, tuple(built[(b, ki, kj)])))
            built[node] = children
        trees.append(Tree(0, 0, len(x), tuple(built[(0, 0, len(x))])))
    return trees


# ---- minimum substitutions ----------------------------------------------------------------
INF = 32767  # int16 "unreachable": costs never reach it (the table size bounds n)


@njit(cache=True)
def _derivable_lengths(ok, l0, budget, has_lex, bin_off, bin_parent, bin_right, up_off, up_sym):
    """ok[A, L]: some string of length L (1..n) derives from symbol A; fills lengths l0, l0+1,
    ... until `budget` steps are spent and returns the next length (n+1 when done)."""
    n_sym, n = ok.shape[0], ok.shape[1] - 1
    if l0 <= 1 and n >= 1:
        for a in range(n_sym):
            ok[a, 1] = has_lex[a]
    steps = 0
    for length in range(max(l0, 1), n + 1):
        if length > 1:
            for b in range(n_sym):
                steps += length
                for lb in range(1, length):
                    if ok[b, lb]:
                        for r in range(bin_off[b], bin_off[b + 1]):
                            if ok[bin_right[r], length - lb]:
                                ok[bin_parent[r], length] = True
        for b in range(n_sym):
            if ok[b, length]:
                for q in range(up_off[b], up_off[b + 1]):
                    ok[up_sym[q], length] = True
        if steps > budget:
            return length + 1
    return n + 1


@njit(cache=True)
def _min_subs(
    x,
    l0,
    budget,
    cost,
    n_sym,
    lex,
    has_lex,
    ok,
    len_off,
    len_val,
    anywhere_start,
    anywhere_end,
    bin_parent,
    bin_left,
    bin_right,
    up_off,
    up_sym,
):
    """Min-cost CYK: cost[A, i, j] = fewest substitutions so that A derives x[i:j].

    Pruned to span lengths each symbol can derive (ok, and len_val[len_off[b]:len_off[b+1]] the
    lengths of b in increasing order), and to spans starting at 0 / ending at n for symbols
    that only ever sit there (the root and its suffix symbols: most of the top-level work).
    cost (N, n+1, n+1) int16 starts at INF; fills span lengths l0, l0+1, ... until `budget`
    steps are spent and returns the next length (n+1 when done)."""
    n = x.shape[0]
    big = 32767
    pre = np.empty(n_sym, np.int32)
    n_rules = bin_parent.shape[0]
    active = np.empty(n_rules, np.int64)
    steps = 0
    for length in range(l0, n + 1):
        n_active = 0  # the rules whose parent can derive this length
        for r in range(n_rules):
            if ok[bin_parent[r], length]:
                active[n_active] = r
                n_active += 1
        for i in range(0, n - length + 1):
            j = i + length
            for a in range(n_sym):
                pre[a] = big
            if length == 1:
                for a in range(n_sym):
                    if has_lex[a]:
                        pre[a] = 0 if lex[x[i], a] > 0 else 1
            else:
                for q in range(n_active):
                    r = active[q]
                    a = bin_parent[r]
                    if (i != 0 and not anywhere_start[a]) or (j != n and not anywhere_end[a]):
                        continue
                    b = bin_left[r]
                    c = bin_right[r]
                    for t in range(len_off[b], len_off[b + 1]):
                        lb = len_val[t]
                        if lb >= length:
                            break
                        if ok[c, length - lb]:
                            v = np.int32(cost[b, i, i + lb]) + np.int32(cost[c, i + lb, j])
                            if v < pre[a]:
                                pre[a] = v
                        steps += 1
            for a in range(n_sym):
                cost[a, i, j] = min(pre[a], big)
            for b in range(n_sym):  # unary chains cost nothing
                if pre[b] < big:
                    for q in range(up_off[b], up_off[b + 1]):
                        a = up_sym[q]
                        if pre[b] < cost[a, i, j]:
                            cost[a, i, j] = pre[b]
            steps += n_sym
        if steps > budget:
            return length + 1
    return n + 1


def _anywhere(nf: NormalForm) -> tuple[np.ndarray, np.ndarray]:
    """(may start after 0, may end before n) per symbol: least fixed points from the symbols
    that occur as right (resp. left) children, passed down to left (resp. right) and unary
    children."""
    start, end = np.zeros(nf.n_sym, bool), np.zeros(nf.n_sym, bool)
    start[nf.bin_right] = True
    end[nf.bin_left] = True
    while True:
        s0, e0 = start.copy(), end.copy()
        start[nf.bin_left[start[nf.bin_parent]]] = True
        end[nf.bin_right[end[nf.bin_parent]]] = True
        for a, b, _ in nf.unary:
            start[b] |= start[a]
            end[b] |= end[a]
        if (start == s0).all() and (end == e0).all():
            return start, end


def min_substitutions(grammar: Grammar, strings: Sequence[np.ndarray]) -> np.ndarray:
    """(B,) int64: the fewest token substitutions that make each string a sentence (0 for a
    sentence); -1 if no sentence has that length. O(n^3) time and O(N n^2) memory per string:
    seconds for long strings; an ExactError up front when the table would not fit."""
    nf = normal_form(grammar)
    has_lex = nf.lex[1:].sum(axis=0) > 0
    xs = check_strings(grammar, strings)
    n_max = max((len(x) for x in xs), default=0)
    need = nf.n_sym * (n_max + 1) ** 2 * 2  # the int16 cost table of the longest string
    if need > sweep.MAX_TABLE_BYTES:
        longest = int((sweep.MAX_TABLE_BYTES / (2 * nf.n_sym)) ** 0.5) - 1
        raise ExactError(
            f"min_substitutions: a string of {n_max:,} tokens needs a {need / 1024**3:.1f} GiB "
            f"table with this grammar ({nf.n_sym} symbols after binarisation): give strings of "
            f"at most {longest:,} tokens"
        )
    ok = np.zeros((nf.n_sym, n_max + 1), np.bool_)
    length = 1
    while length <= n_max:  # chunks of at most WORK_PER_CALL steps: Ctrl-C is seen between them
        length = sweep.call_compiled(
            _derivable_lengths,
            ok,
            length,
            sweep.WORK_PER_CALL,
            has_lex,
            nf.bin_off,
            nf.bin_parent,
            nf.bin_right,
            nf.up_off,
            nf.up_sym,
        )
    lens = [np.flatnonzero(row) for row in ok]
    len_off = np.concatenate([[0], np.cumsum([len(v) for v in lens])]).astype(np.int64)
    len_val = np.concatenate(lens).astype(np.int64)
    anywhere_start, anywhere_end = _anywhere(nf)
    res = np.empty(len(xs), np.int64)
    for s, x in enumerate(xs):
        n = len(x)
        cost = np.full((nf.n_sym, n + 1, n + 1), INF, np.int16)  # (N, n+1, n+1)
        length = 1
        while length <= n:
            length = sweep.call_compiled(
                _min_subs,
                x,
                length,
                sweep.WORK_PER_CALL,
                cost,
                nf.n_sym,
                nf.lex,
                has_lex,
                ok,
                len_off,
                len_val,
                anywhere_start,
                anywhere_end,
                nf.bin_parent,
                nf.bin_left,
                nf.bin_right,
                nf.up_off,
                nf.up_sym,
            )
        v = int(cost[0, 0, n]) if n > 0 else INF
        res[s] = -1 if v >= INF else v
    return res
