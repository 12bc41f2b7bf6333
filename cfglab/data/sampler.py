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
batch, but strings depend on `n` (draws are interleaved across the batch). The authors' own
generator (one `random.Random.randint` per nonterminal, pre-order), for reproducing their
strings exactly, is cfglab.data.physicslm4.

`max_len` policy: rejection. A string whose length provably exceeds `max_len` (terminals so far
plus the shortest possible yield of its pending nonterminals) is abandoned as soon as that is
known and a fresh one is drawn in its place, so the batch follows the grammar's distribution
conditioned on length <= max_len. After `max_tries * n` draws (at least 1000) without `n`
accepted strings, a SamplingError says how many were accepted and what to change.

Tree filters (held-out compositions, cfglab.data.exclude): with `exclude`, a string whose tree
contains one of the given rule combinations is abandoned as soon as the node that completes it
draws its rule, and redrawn, as a too-long one is; so the batch follows the grammar conditioned
on trees without them. With `require`, only strings whose tree contains at least one are kept
(the held-out strings an evaluation scores). Each rule combination is checked generation by
generation from the rule every nonterminal node draws, its parent's rule and whether a node
above it drew a given rule. No filter: the draws are those of a sampler without the feature.

Bounded memory and time, whatever the grammar or n: `sample_parts` yields the batch in parts
(each at most ~_NODES_PER_BATCH tree nodes; `sample` concatenates them, so both give the same
strings), which is what lets `cfglab sample -n 100000000` stream in constant memory. Before
any draw, a grammar whose strings are astronomically long is refused without max_len
(`check_length`: the 99% quantile bound mean + sqrt(99) sd, by Cantelli's inequality, must
stay under MAX_SAMPLE_LENGTH tokens), and a batch whose trees grow past _MAX_BATCH_NODES
nodes stops with a SamplingError naming max_len, so no grammar can exhaust memory.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cfglab.data.batch import SampleBatch, _concat, _SpanSource
from cfglab.data.exclude import Combination, TreeWatch
from cfglab.errors import SamplingError
from cfglab.grammar.cfg import Grammar

# Nodes (all generations) one batch may hold before sampling is cut into several batches.
_NODES_PER_BATCH = 2_000_000
# A batch whose trees grow past this many nodes is a runaway derivation (~60 bytes a node
# while it is assembled, so ~600 MB): a SamplingError, never an exhausted machine.
_MAX_BATCH_NODES = 10_000_000
# Without max_len, the 99% quantile bound of the string length may not exceed this (tokens).
MAX_SAMPLE_LENGTH = 1_000_000
# Buckets of the guide table for drawing rules: the search starts at most a bucket away. Any
# power of two gives the same draws; fewer buckets for grammars with very many nonterminals.
_GUIDE = 256
_GUIDE_CELLS = 4_000_000


# ---- tables ----------------------------------------------------------------------------------
@dataclass
class _Tables:
    """The grammar as flat arrays for vectorised expansion (rows of varying length, CSR)."""

    n_nt: int
    rule_off: np.ndarray  # (n_nt+1,) nt a's rules are flat entries rule_off[a] .. rule_off[a+1]-1
    rule_flat: np.ndarray  # (R,) global rule index of each flat entry
    cum: np.ndarray  # (R,) cumulative rule probabilities within each nt; the last rule's is 2.0
    guide: np.ndarray  # (n_nt, G) first entry (within the nt) whose cumulative prob > b/G
    rhs_len: np.ndarray  # (R,) symbols on each rule's right-hand side
    rhs_off: np.ndarray  # (R+1,) rule r's symbols are rhs_flat[rhs_off[r] .. rhs_off[r+1]-1]
    rhs_flat: np.ndarray  # (sum of rhs lengths,) symbols
    min_len: np.ndarray  # (n_nt + n_t,) shortest yield of each symbol (terminals 1)


def _tables(grammar: Grammar) -> _Tables:
    n_nt = grammar.n_nt
    counts = np.array([len(rs) for rs in grammar.rules_of], dtype=np.int64)
    rule_off = np.zeros(n_nt + 1, dtype=np.int64)
    np.cumsum(counts, out=rule_off[1:])
    rule_flat = np.fromiter((r for rs in grammar.rules_of for r in rs), np.int64, int(counts.sum()))
    probs = np.array([grammar.rules[r].prob for r in rule_flat])
    lhs_flat = np.repeat(np.arange(n_nt), counts)
    # cumulative probabilities within each nt (a row-wise cumsum over the nts with the same
    # number of rules: the very sums of a per-nt cumsum, so the draws never change); the last
    # entry 2.0 so no u in [0, 1) passes it
    cum = np.empty(len(probs))
    for c in np.unique(counts):
        first = rule_off[:-1][counts == c]  # (k,) row starts of the nts with c rules
        cells = first[:, None] + np.arange(c)  # (k, c)
        cum[cells] = np.cumsum(probs[cells], axis=1)
    cum[rule_off[1:] - 1] = 2.0
    # guide table (Chen & Asau): per nt and bucket b, how many entries have cum <= b/G, found
    # by one searchsorted over all nts at once (cum is increasing within an nt; nt a is
    # shifted by 3a so the rows stay apart)
    n_guide = _GUIDE
    while n_guide > 16 and n_nt * n_guide > _GUIDE_CELLS:
        n_guide //= 2
    keys = cum + 3.0 * lhs_flat
    grid = np.arange(n_guide) / n_guide
    guide = np.searchsorted(keys, grid[None, :] + 3.0 * np.arange(n_nt)[:, None], side="right")
    guide = (guide - rule_off[:-1, None]).astype(np.int64)  # (n_nt, G)
    rhs_len = np.array([len(r.rhs) for r in grammar.rules], dtype=np.int64)
    rhs_off = np.zeros(len(grammar.rules) + 1, dtype=np.int64)
    np.cumsum(rhs_len, out=rhs_off[1:])
    rhs_flat = np.fromiter((s for r in grammar.rules for s in r.rhs), np.int64, int(rhs_off[-1]))
    return _Tables(
        n_nt, rule_off, rule_flat, cum, guide, rhs_len, rhs_off, rhs_flat, _min_lengths(grammar)
    )


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


def strict_levels(grammar: Grammar):
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


def _derive(
    t: _Tables,
    m: int,
    rng: np.random.Generator,
    max_len: int | None,
    grammar_name: str = "the grammar",
    mean_length: float = 0.0,
    exclude: Sequence[Combination] = (),
    require: Sequence[Combination] = (),
):
    """Expand `m` roots to full trees. Returns (generations, alive): alive[i] is False for
    strings abandoned because they exceed max_len or their tree contains a combination of
    `exclude` (their nodes may linger in early generations and are filtered out by the
    caller), and, with `require`, for strings whose finished tree contains none of them."""
    sym = np.zeros(m, dtype=np.int64)  # the roots: nonterminal 0
    string = np.arange(m, dtype=np.int64)
    alive = np.ones(m, dtype=bool)
    emitted = np.zeros(m, dtype=np.int64)  # terminals placed so far, per string
    watch = TreeWatch(exclude or require, m) if exclude or require else None
    gens: list[_Generation] = []
    total = 0
    while True:
        nt_pos = np.flatnonzero(sym < t.n_nt)
        if nt_pos.size == 0:
            gens.append(_Generation(sym, string, nt_pos, nt_pos))
            if require:
                alive &= watch.hits
            return gens, alive
        nts = sym[nt_pos]
        # inverse CDF with a guide table: start at the bucket's first candidate rule, then
        # step right while u is past the rule's cumulative probability (rarely more than once)
        u = rng.random(nt_pos.size)
        j = t.guide[nts, (u * t.guide.shape[1]).astype(np.intp)]
        base = t.rule_off[nts]  # row starts in the flat cumulative table
        todo = np.arange(nt_pos.size)
        while todo.size:
            step = u[todo] >= t.cum[base[todo] + j[todo]]
            todo = todo[step]
            j[todo] += 1
        rule = t.rule_flat[base + j]
        n_children = t.rhs_len[rule]
        gens.append(_Generation(sym, string, nt_pos, n_children))
        # replace each nonterminal by its right-hand side: (C,) children, left to right
        first = np.cumsum(n_children) - n_children
        k = np.arange(int(first[-1] + n_children[-1])) - np.repeat(first, n_children)
        child = t.rhs_flat[np.repeat(t.rhs_off[rule], n_children) + k]
        child_string = np.repeat(string[nt_pos], n_children)
        if watch is not None:
            watch.expand(string, nt_pos, rule, n_children)
        total += child.size
        if total > _MAX_BATCH_NODES:
            raise SamplingError(
                f"a batch of {m} derivation(s) grew past {_MAX_BATCH_NODES:,} tree nodes "
                f"(strings of {grammar_name} are long with heavy tails; mean length "
                f"{mean_length:.3g}): cap the length with max_len (cfglab sample --max-len, "
                "config data.max_len)"
            )
        dead = watch.hits & alive if exclude else None  # abandoned at once, as too long ones
        if max_len is not None:
            is_t = child >= t.n_nt
            emitted += np.bincount(child_string[is_t], minlength=m)
            pending = np.bincount(child_string[~is_t], weights=t.min_len[child[~is_t]], minlength=m)
            too_long = (emitted + pending > max_len) & alive
            dead = too_long if dead is None else dead | too_long
        if dead is not None and dead.any():
            alive &= ~dead
            keep = alive[child_string]
            child, child_string = child[keep], child_string[keep]
            if watch is not None:
                watch.keep(keep)
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


# ---- public API --------------------------------------------------------------------------------
def check_length(grammar: Grammar, max_len: int | None = None) -> None:
    """SamplingError, before any draw, when strings of `grammar` are too long to sample: without
    max_len, when the 99% quantile bound mean + sqrt(99) sd (Cantelli's inequality: at most 1%
    of strings are longer) exceeds MAX_SAMPLE_LENGTH tokens; with max_len, when max_len is
    below the grammar's shortest string."""
    name = grammar.name or "the grammar"
    if max_len is None:
        mean, sd = grammar.mean_length, grammar.length_sd
        q99 = mean + math.sqrt(99.0) * sd
        if not q99 <= MAX_SAMPLE_LENGTH:  # also inf and nan
            raise SamplingError(
                f"strings of {name} are too long to sample without a length cap: mean length "
                f"{mean:.3g} tokens, sd {sd:.3g} (1% may exceed {q99:.3g}; the limit is "
                f"{MAX_SAMPLE_LENGTH:,}); cap it with max_len (cfglab sample --max-len, config "
                "data.max_len) or use a grammar with shorter strings"
            )
        return
    shortest = _min_lengths(grammar)[0]
    if shortest > max_len:
        raise SamplingError(
            f"max_len={max_len} is below the shortest string of {name} "
            f"({shortest:.6g} tokens): raise max_len to at least {shortest:.6g}"
        )


def strings_per_part(grammar: Grammar, nodes: int) -> int:
    """How many strings of `grammar` hold about `nodes` tree nodes (a tree has ~2 nodes per
    token): the size of one part of a streamed sample (here and in physicslm4.py)."""
    return max(1, int(nodes / (2.0 * max(grammar.mean_length, 1.0))))


def _check_args(n: int, seed, max_len: int | None) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise SamplingError(f"cannot sample n={n!r} strings: give a whole number n >= 0")
    if isinstance(seed, (int, np.integer)) and seed < 0:
        raise SamplingError(f"seed={seed} is negative: give a seed >= 0")
    if max_len is not None and (
        isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1
    ):
        raise SamplingError(f"max_len={max_len!r}: give a whole number of tokens >= 1, or None")


def _no_tree_filters(exclude, require) -> None:
    if exclude or require:
        raise SamplingError(
            "held-out rule combinations (data.exclude, eval.compositions) need a grammar's trees; "
            "a language beyond context-free has none: drop them"
        )


def sample_parts(
    grammar: Grammar,
    n: int,
    seed: int,
    *,
    max_len: int | None = None,
    labels: bool = True,
    max_tries: int = 100,
    exclude: Sequence[Combination] = (),
    require: Sequence[Combination] = (),
) -> Iterator[SampleBatch]:
    """The batch of `sample(grammar, n, seed, ...)` in parts, each as soon as it is drawn (at
    most ~_NODES_PER_BATCH tree nodes): the same strings, in the same order, in constant
    memory. Every argument is checked before the first draw."""
    if not isinstance(grammar, Grammar):  # a language (cfglab.languages): its own sampler
        _no_tree_filters(exclude, require)
        return grammar.sample_parts(n, seed, max_len=max_len, labels=labels)
    _check_args(n, seed, max_len)
    check_length(grammar, max_len)
    if exclude and require:
        raise SamplingError("give exclude or require, not both: a tree filter keeps one kind")
    return _draw_parts(grammar, n, seed, max_len, labels, max_tries, exclude, require)


def _draw_parts(
    grammar, n, seed, max_len, labels, max_tries, exclude=(), require=()
) -> Iterator[SampleBatch]:
    t = _tables(grammar)
    name = grammar.name or "the grammar"
    rng = np.random.default_rng(seed)
    levels = strict_levels(grammar)
    per_batch = strings_per_part(grammar, _NODES_PER_BATCH)
    budget = max(1000, max_tries * n)
    got = drawn = 0
    while got < n:
        if drawn >= budget and (exclude or require):
            raise SamplingError(
                f"only {got} of {n} strings of {name} were kept after {drawn} draws (acceptance "
                f"{got / drawn:.2%}; length <= {max_len}, trees with"
                f"{'out' if exclude else ''} the combinations): "
                + ("exclude rarer combinations" if exclude else "require commoner combinations")
            )
        if drawn >= budget:
            raise SamplingError(
                f"only {got} of {n} strings of {name} had length <= {max_len} after {drawn} "
                f"draws (acceptance {got / drawn:.2%}; mean length {grammar.mean_length:.1f}): "
                "raise max_len (cfglab sample --max-len, config data.max_len)"
            )
        need = n - got
        # draw enough for the acceptance rate seen so far, within the batch size and budget
        rate = max((got + 1) / (drawn + 1), 0.01) if drawn else 1.0
        m = min(per_batch, budget - drawn, max(need, math.ceil(need / rate * 1.1)))
        gens, alive = _derive(t, m, rng, max_len, name, grammar.mean_length, exclude, require)
        drawn += m
        accept = alive.copy()
        accept[np.flatnonzero(alive)[need:]] = False  # keep the first `need` survivors
        if accept.any():
            got += int(accept.sum())
            yield _assemble(gens, accept, t, labels, levels)


def sample(
    grammar: Grammar,
    n: int,
    seed: int,
    *,
    max_len: int | None = None,
    labels: bool = True,
    max_tries: int = 100,
    exclude: Sequence[Combination] = (),
    require: Sequence[Combination] = (),
) -> SampleBatch:
    """`n` strings from `grammar` (see the module docstring for labels, the max_len policy and
    the tree filters `exclude` / `require`).

    Raises SamplingError for n < 0, a negative seed, strings too long to sample without
    max_len (`check_length`), max_len below the grammar's shortest string, a runaway
    derivation, or when fewer than `n` strings of length <= max_len (whose trees pass the
    filter) turn up in `max_tries * n` (>= 1000) draws.
    """
    if not isinstance(grammar, Grammar):  # a language (cfglab.languages): its own sampler
        _no_tree_filters(exclude, require)
        return grammar.sample(n, seed, max_len=max_len, labels=labels)
    parts = list(
        sample_parts(
            grammar,
            n,
            seed,
            max_len=max_len,
            labels=labels,
            max_tries=max_tries,
            exclude=exclude,
            require=require,
        )
    )
    if not parts:  # n == 0
        return SampleBatch(ids=np.empty(0, np.int64), offsets=np.zeros(1, np.int64))
    return _concat(parts)
