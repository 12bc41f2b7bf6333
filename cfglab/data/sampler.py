"""Seeded, vectorised sampling of strings with their derivation-tree labels: stage 2's source.

`sample(grammar, n, seed)` draws `n` strings from a PCFG and, with `labels=True`, the tree
facts the probes and attention statistics need:

- every grammar: `spans`, per string a (K, 3) array of (nt, start, end_exclusive) for each
  nonterminal node of the derivation tree, in pre-order (parents before children, left to right);
- layered grammars (the cfg3 family, `grammar.levels` not None), per token t and level l:
  `ancestors[l, t]` = index within `grammar.levels[l]` of the level-l nonterminal above t,
  `subtree[l, t]` = ordinal of that level-l subtree within its string (0-based, left to right),
  `is_boundary[l, t]` = t is the last token of that subtree.

Worked example (cfg3b-like; levels [[S], [A, B]], rules S -> A B, A -> '1' '2', B -> '3')::

    tokens       1 2 3
    ancestors[0] 0 0 0      subtree[0] 0 0 0      is_boundary[0] F F T
    ancestors[1] 0 0 1      subtree[1] 0 0 1      is_boundary[1] F T T
    spans        (S, 0, 3), (A, 0, 2), (B, 2, 3)

How: a whole batch is expanded one tree generation at a time, with NumPy over all strings at
once (no Python recursion, so deep recursive grammars work). Generation g holds every node at
depth g, string-major and left to right; each nonterminal draws its rule by inverse CDF (one
`rng.random()` per node, a guide table into the per-nonterminal cumulative probabilities) and
is replaced by its right-hand side (np.repeat + a padded right-hand-side table). Subtree sizes
are then summed bottom-up over the generations and start positions pushed top-down, which
places the terminals and yields every label. Spans are computed on first access (the batch
keeps its trees until then); `labels=False` skips all of it and is about twice as fast.

"Layered" here is strict: a grammar whose `levels` are set but that puts a terminal on a
right-hand side above the last level gets spans only (its trees have no per-level cut).

Randomness: `np.random.default_rng(seed)`; the same (grammar, n, seed, max_len) gives the same
batch, but strings depend on `n` (draws are interleaved across the batch). `sample_authors` is
the authors' own generator (one `random.Random.randint` per nonterminal, pre-order), for
reproducing their strings exactly.

`max_len` policy: rejection. A string whose length provably exceeds `max_len` (terminals so far
plus the shortest possible yield of its pending nonterminals) is abandoned as soon as that is
known and a fresh one is drawn in its place, so the batch follows the grammar's distribution
conditioned on length <= max_len. After `max_tries * n` draws (at least 1000) without `n`
accepted strings, a SamplingError says how many were accepted and what to change.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

import numpy as np

from cfglab.errors import SamplingError
from cfglab.grammar.cfg import Grammar

# Nodes (all generations) one batch may hold before sampling is cut into several batches.
_NODES_PER_BATCH = 2_000_000
# With max_len=None, a single batch holding more nodes than this is a runaway derivation.
_RUNAWAY_NODES = 200_000_000
# Buckets of the guide table for drawing rules: the search starts at most a bucket away.
_GUIDE = 256


@dataclass
class SampleBatch:
    """`n` strings concatenated, with optional labels. `strings()` splits them."""

    ids: np.ndarray  # (N_total,) int64 token ids 1..T (vocab.py), strings concatenated
    offsets: np.ndarray  # (n+1,) int64: string i is ids[offsets[i]:offsets[i+1]]
    ancestors: np.ndarray | None = None  # (L, N_total) int16, layered grammars with labels
    subtree: np.ndarray | None = None  # (L, N_total) int32
    is_boundary: np.ndarray | None = None  # (L, N_total) bool
    _span_parts: list[_SpanSource] | None = field(default=None, repr=False)
    _span_cache: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def strings(self) -> list[np.ndarray]:
        return np.split(self.ids, self.offsets[1:-1])

    def _span_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        # computed on first use only: most callers want the per-level labels or nothing
        if self._span_parts is None:
            return None
        if self._span_cache is None:
            done = [part.rows_and_counts() for part in self._span_parts]
            rows = np.concatenate([r for r, _ in done])
            offsets = np.zeros(len(self) + 1, dtype=np.int64)
            np.cumsum(np.concatenate([c for _, c in done]), out=offsets[1:])
            self._span_cache = (rows, offsets)
        return self._span_cache

    @property
    def span_rows(self) -> np.ndarray | None:
        """(K_total, 3) int64 rows (nt, start, end_exclusive) of all strings, pre-order."""
        table = self._span_table()
        return None if table is None else table[0]

    @property
    def span_offsets(self) -> np.ndarray | None:
        """(n+1,) int64: string i's span rows are span_rows[span_offsets[i]:span_offsets[i+1]]."""
        table = self._span_table()
        return None if table is None else table[1]

    @property
    def spans(self) -> list[np.ndarray] | None:
        """Per string a (K, 3) int64 array (nt, start, end_exclusive), pre-order (parents before
        children, left to right); None without labels. Positions are within the string."""
        table = self._span_table()
        return None if table is None else np.split(table[0], table[1][1:-1])


@dataclass
class _SpanSource:
    """One batch's derivation trees, kept to compute its spans on demand."""

    gsym: list[np.ndarray]  # per generation: symbols
    gstr: list[np.ndarray]  # per generation: string index (within this batch)
    gnt: list[np.ndarray]  # per generation: positions of the nonterminal nodes
    start: list[np.ndarray]  # per generation: first token of each node, within its string
    size: list[np.ndarray]  # per generation: tokens under each node
    offsets: np.ndarray  # (n+1,) token offsets of this batch's strings

    def rows_and_counts(self) -> tuple[np.ndarray, np.ndarray]:
        # pre-order = by position in the batch; nodes that start at the same token form a
        # leftmost chain, ordered by depth, which the stable sort keeps (generations in order)
        rows, where, owner = [], [], []
        for g, nt in enumerate(self.gnt):
            if nt.size == 0:
                continue
            st = self.start[g][nt]
            rows.append(np.stack([self.gsym[g][nt], st, st + self.size[g][nt]], axis=1))
            where.append(self.offsets[self.gstr[g][nt]] + st)
            owner.append(self.gstr[g][nt])
        order = np.argsort(np.concatenate(where), kind="stable")
        n = self.offsets.size - 1
        return np.concatenate(rows)[order].astype(np.int64), np.bincount(
            np.concatenate(owner), minlength=n
        )


# ---- tables ----------------------------------------------------------------------------------
@dataclass
class _Tables:
    """The grammar as padded arrays for vectorised expansion."""

    n_nt: int
    n_rules: np.ndarray  # (n_nt,) rules per nonterminal
    rule_of: np.ndarray  # (n_nt, R) global rule index of an nt's j-th rule (padded)
    cum: np.ndarray  # (n_nt * R,) flat cumulative rule probabilities; the last rule's is 2.0
    guide: np.ndarray  # (n_nt, _GUIDE) first rule whose cumulative probability exceeds b/_GUIDE
    rhs_len: np.ndarray  # (n_rules,)
    rhs: np.ndarray  # (n_rules, max_rhs) symbols, padded with -1
    min_len: np.ndarray  # (n_nt + n_t,) shortest yield of each symbol (terminals 1)


def _tables(grammar: Grammar) -> _Tables:
    n_nt = grammar.n_nt
    max_r = max(len(rs) for rs in grammar.rules_of)
    n_rules = np.array([len(rs) for rs in grammar.rules_of], dtype=np.int64)
    rule_of = np.zeros((n_nt, max_r), dtype=np.int64)
    cum = np.full((n_nt, max_r), 2.0)
    for a, rs in enumerate(grammar.rules_of):
        rule_of[a, : len(rs)] = rs
        rule_of[a, len(rs) :] = rs[-1]
        cum[a, : len(rs) - 1] = np.cumsum([grammar.rules[r].prob for r in rs])[:-1]
    # guide table (Chen & Asau): where the inverse-CDF search for u in [b/G, (b+1)/G) starts
    grid = np.arange(_GUIDE) / _GUIDE
    guide = (cum[:, None, :] <= grid[None, :, None]).sum(axis=2)  # (n_nt, G)
    max_rhs = max(len(r.rhs) for r in grammar.rules)
    rhs = np.full((len(grammar.rules), max_rhs), -1, dtype=np.int64)
    rhs_len = np.array([len(r.rhs) for r in grammar.rules], dtype=np.int64)
    for i, r in enumerate(grammar.rules):
        rhs[i, : len(r.rhs)] = r.rhs
    return _Tables(n_nt, n_rules, rule_of, cum.ravel(), guide, rhs_len, rhs, _min_lengths(grammar))


def _min_lengths(grammar: Grammar) -> np.ndarray:
    """Shortest terminal yield of every symbol (terminals 1), by Knuth's generalisation of
    Dijkstra: a nonterminal is final once popped; a rule is priced once all its children are.
    O(R log R), so grammars with thousands of nonterminals are fine."""
    n_nt = grammar.n_nt
    best = np.concatenate([np.full(n_nt, np.inf), np.ones(grammar.n_t)])
    waiting = [sum(1 for s in r.rhs if s < n_nt) for r in grammar.rules]  # unpriced children
    used_in: list[list[int]] = [[] for _ in range(n_nt)]  # nt -> rules (once per occurrence)
    for i, r in enumerate(grammar.rules):
        for s in r.rhs:
            if s < n_nt:
                used_in[s].append(i)
    heap = [(len(r.rhs), r.lhs) for r, w in zip(grammar.rules, waiting, strict=True) if w == 0]
    heapq.heapify(heap)
    done = np.zeros(n_nt, dtype=bool)
    while heap:
        value, a = heapq.heappop(heap)
        if done[a]:
            continue
        done[a] = True
        best[a] = value
        for i in used_in[a]:
            waiting[i] -= 1
            if waiting[i] == 0:
                r = grammar.rules[i]
                heapq.heappush(heap, (int(sum(best[s] for s in r.rhs)), r.lhs))
    return best  # inf never remains for a validated grammar (every nonterminal is productive)


def _strict_levels(grammar: Grammar):
    """`grammar.levels` when generation l of every tree is exactly its level-l nonterminals
    (so per-level labels exist): no terminal on a right-hand side above the last level."""
    levels = grammar.levels
    if levels is None:
        return None
    for lev in levels[:-1]:
        for a in lev:
            if any(
                grammar.is_terminal(s) for r in grammar.rules_of[a] for s in grammar.rules[r].rhs
            ):
                return None
    return levels


# ---- one batch of derivations ------------------------------------------------------------------
@dataclass
class _Generation:
    sym: np.ndarray  # (G,) symbols of this generation's nodes, string-major, left to right
    string: np.ndarray  # (G,) string index of each node
    nt_pos: np.ndarray  # (M,) positions of the nonterminal nodes within sym
    n_children: np.ndarray  # (M,) right-hand-side length of the rule each one drew


def _derive(t: _Tables, m: int, rng: np.random.Generator, max_len: int | None):
    """Expand `m` roots to full trees. Returns (generations, alive): alive[i] is False for
    strings abandoned because they exceed max_len (their nodes may linger in early generations
    and are filtered out by the caller)."""
    sym = np.zeros(m, dtype=np.int64)  # the roots: nonterminal 0
    string = np.arange(m, dtype=np.int64)
    alive = np.ones(m, dtype=bool)
    emitted = np.zeros(m, dtype=np.int64)  # terminals placed so far, per string
    gens: list[_Generation] = []
    total = 0
    while True:
        nt_pos = np.flatnonzero(sym < t.n_nt)
        if nt_pos.size == 0:
            gens.append(_Generation(sym, string, nt_pos, nt_pos))
            return gens, alive
        nts = sym[nt_pos]
        # inverse CDF with a guide table: start at the bucket's first candidate rule, then
        # step right while u is past the rule's cumulative probability (rarely more than once)
        u = rng.random(nt_pos.size)
        j = t.guide[nts, (u * _GUIDE).astype(np.intp)]
        base = nts * t.rule_of.shape[1]  # row starts in the flat cumulative table
        todo = np.arange(nt_pos.size)
        while todo.size:
            step = u[todo] >= t.cum[base[todo] + j[todo]]
            todo = todo[step]
            j[todo] += 1
        rule = t.rule_of[nts, j]
        n_children = t.rhs_len[rule]
        gens.append(_Generation(sym, string, nt_pos, n_children))
        # replace each nonterminal by its right-hand side: (C,) children, left to right
        first = np.cumsum(n_children) - n_children
        k = np.arange(int(first[-1] + n_children[-1])) - np.repeat(first, n_children)
        child = t.rhs[np.repeat(rule, n_children), k]
        child_string = np.repeat(string[nt_pos], n_children)
        total += child.size
        if max_len is not None:
            is_t = child >= t.n_nt
            emitted += np.bincount(child_string[is_t], minlength=m)
            pending = np.bincount(child_string[~is_t], weights=t.min_len[child[~is_t]], minlength=m)
            too_long = (emitted + pending > max_len) & alive
            if too_long.any():
                alive &= ~too_long
                keep = alive[child_string]
                child, child_string = child[keep], child_string[keep]
        elif total > _RUNAWAY_NODES:
            raise SamplingError(
                f"a derivation grew past {_RUNAWAY_NODES:,} nodes without finishing: the "
                "grammar's strings are very long with heavy tails; pass max_len to cap them"
            )
        sym, string = child, child_string


def _assemble(gens: list[_Generation], accept: np.ndarray, t: _Tables, labels: bool, levels):
    """Turn the accepted strings' generations into a SampleBatch (strings renumbered 0..n-1)."""
    renumber = np.cumsum(accept) - 1  # old string index -> new one
    n = int(accept.sum())
    gsym, gstr, gnt, glen = [], [], [], []
    for gen in gens:
        if n == accept.size:  # nothing rejected: no filtering, no renumbering
            gsym.append(gen.sym)
            gstr.append(gen.string)
            gnt.append(gen.nt_pos)
            glen.append(gen.n_children)
            continue
        keep = accept[gen.string]
        pos = np.flatnonzero(keep)
        # keep only the accepted strings' nodes; nt_pos re-indexed into the filtered array
        nt_keep = keep[gen.nt_pos]
        new_index = np.cumsum(keep) - 1
        gsym.append(gen.sym[pos])
        gstr.append(renumber[gen.string[pos]])
        gnt.append(new_index[gen.nt_pos[nt_keep]])
        glen.append(gen.n_children[nt_keep])
    n_gen = len(gens)
    # subtree sizes (tokens), bottom-up: a terminal is 1, a nonterminal the sum of its children
    size: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * n_gen
    for g in reversed(range(n_gen)):
        s = np.ones(gsym[g].size, dtype=np.int64)
        if gnt[g].size:
            group = np.cumsum(glen[g]) - glen[g]  # first child of each nonterminal in g+1
            s[gnt[g]] = np.add.reduceat(size[g + 1], group)
        size[g] = s
    # start positions within the string, top-down: parent start + sizes of earlier siblings
    start: list[np.ndarray] = [np.zeros(gsym[0].size, dtype=np.int64)] + [None] * (n_gen - 1)
    for g in range(n_gen - 1):
        if gnt[g].size == 0:
            start[g + 1] = np.empty(0, dtype=np.int64)
            continue
        sz = size[g + 1]
        before = np.cumsum(sz) - sz  # exclusive prefix sum over the whole generation
        group = np.cumsum(glen[g]) - glen[g]
        start[g + 1] = np.repeat(start[g][gnt[g]] - before[group], glen[g]) + before
    lengths = size[0]  # generation 0 = the roots, one per string, in order
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.empty(int(offsets[-1]), dtype=np.int64)
    for g in range(n_gen):
        is_t = gsym[g] >= t.n_nt
        ids[offsets[gstr[g][is_t]] + start[g][is_t]] = gsym[g][is_t] - t.n_nt + 1
    batch = SampleBatch(ids=ids, offsets=offsets)
    if not labels:
        return batch
    batch._span_parts = [_SpanSource(gsym, gstr, gnt, start, size, offsets)]
    if levels is not None:
        # generation l = the level-l nonterminals in token order (layered grammar), so one
        # np.repeat over all levels' nodes, by subtree size, yields the (L, N) label tables
        n_lev, n_tok = len(levels), ids.size
        level_index = np.zeros(t.n_nt, dtype=np.int16)  # nt -> index within its level
        for lev in levels:
            level_index[list(lev)] = np.arange(len(lev))
        sizes = np.concatenate(size[:n_lev])  # (sum of level sizes,)
        ordinals = []
        for lev in range(n_lev):
            per_string = np.bincount(gstr[lev], minlength=n)
            first = np.cumsum(per_string) - per_string  # first node of each string
            ordinals.append(np.arange(gsym[lev].size, dtype=np.int32) - first[gstr[lev]])
        nodes_sym = np.concatenate(gsym[:n_lev])
        batch.ancestors = np.repeat(level_index[nodes_sym], sizes).reshape(n_lev, n_tok)
        batch.subtree = np.repeat(np.concatenate(ordinals).astype(np.int32), sizes).reshape(
            n_lev, n_tok
        )
        batch.is_boundary = np.zeros((n_lev, n_tok), dtype=bool)
        batch.is_boundary.reshape(-1)[np.cumsum(sizes) - 1] = True  # each subtree's last token
    return batch


def _concat(parts: list[SampleBatch]) -> SampleBatch:
    if len(parts) == 1:
        return parts[0]
    lengths = np.concatenate([p.lengths for p in parts])
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = SampleBatch(ids=np.concatenate([p.ids for p in parts]), offsets=offsets)
    if parts[0]._span_parts is not None:
        out._span_parts = [src for p in parts for src in p._span_parts]
    if parts[0].ancestors is not None:
        out.ancestors = np.concatenate([p.ancestors for p in parts], axis=1)
        out.subtree = np.concatenate([p.subtree for p in parts], axis=1)
        out.is_boundary = np.concatenate([p.is_boundary for p in parts], axis=1)
    return out


# ---- public API --------------------------------------------------------------------------------
def sample(
    grammar: Grammar,
    n: int,
    seed: int,
    *,
    max_len: int | None = None,
    labels: bool = True,
    max_tries: int = 100,
) -> SampleBatch:
    """`n` strings from `grammar` (see the module docstring for labels and the max_len policy).

    Raises SamplingError for n < 0, max_len below the grammar's shortest string, or when
    fewer than `n` strings of length <= max_len turn up in `max_tries * n` (>= 1000) draws.
    """
    if n < 0:
        raise SamplingError(f"cannot sample n={n} strings: give n >= 0")
    t = _tables(grammar)
    name = grammar.name or "the grammar"
    if max_len is not None and t.min_len[0] > max_len:
        raise SamplingError(
            f"max_len={max_len} is below the shortest string of {name} "
            f"({int(t.min_len[0])} tokens): raise max_len to at least {int(t.min_len[0])}"
        )
    rng = np.random.default_rng(seed)
    levels = _strict_levels(grammar)
    per_batch = max(1, int(_NODES_PER_BATCH / (2.0 * max(grammar.mean_length, 1.0))))
    budget = max(1000, max_tries * n)
    parts: list[SampleBatch] = []
    got = drawn = 0
    while got < n:
        if drawn >= budget:
            raise SamplingError(
                f"only {got} of {n} strings of {name} had length <= {max_len} after {drawn} "
                f"draws (acceptance {got / drawn:.2%}; mean length {grammar.mean_length:.1f}): "
                "raise max_len, or max_tries to keep drawing"
            )
        need = n - got
        # draw enough for the acceptance rate seen so far, within the batch size and budget
        rate = max((got + 1) / (drawn + 1), 0.01) if drawn else 1.0
        m = min(per_batch, budget - drawn, max(need, math.ceil(need / rate * 1.1)))
        gens, alive = _derive(t, m, rng, max_len)
        drawn += m
        accept = alive.copy()
        accept[np.flatnonzero(alive)[need:]] = False  # keep the first `need` survivors
        if accept.any():
            parts.append(_assemble(gens, accept, t, labels, levels))
            got += int(accept.sum())
    if not parts:  # n == 0
        return SampleBatch(ids=np.empty(0, np.int64), offsets=np.zeros(1, np.int64))
    return _concat(parts)


def sample_authors(grammar: Grammar, rng: random.Random) -> list[int]:
    """One string by the authors' generator (PhysicsLM4 `CFG_Node.generate`): pre-order from the
    root, one `rng.randint(0, k-1)` per nonterminal (k = its number of rules, in file order),
    children left to right. Returns token ids 1..T. Uniform grammars only, like the authors'.
    Example: cfg3f with random.Random(7711) gives 305 tokens starting 3 3 3 3 1 1 2 1 3.
    """
    for a, rs in enumerate(grammar.rules_of):
        if any(abs(grammar.rules[r].prob - 1.0 / len(rs)) > 1e-12 for r in rs):
            raise SamplingError(
                f"sample_authors draws rules uniformly, but nonterminal "
                f"{grammar.nonterminals[a]!r} has non-uniform rule probabilities: use "
                "sample() for weighted grammars"
            )
    n_nt = grammar.n_nt
    rhs = [grammar.rules[r].rhs for r in range(len(grammar.rules))]
    out: list[int] = []
    stack = [0]  # symbols still to expand, the next one on top (explicit stack: no recursion)
    while stack:
        s = stack.pop()
        if s >= n_nt:
            out.append(s - n_nt + 1)
            continue
        rs = grammar.rules_of[s]
        stack.extend(reversed(rhs[rs[rng.randint(0, len(rs) - 1)]]))
    return out
