"""A grammar's language laid out for exact references: every sentence of a finite language,
every viable prefix of a given length, and exact samples of completions (stage 3, no torch).

The robustness references (`repair.py`) need the distribution of clean prompts and, where it
can be had, of their completions. Three tools, each bounded so that it answers None ("too
large") instead of running away:

- `enumerate_sentences(g)`: every sentence of a *finite* language with its probability, by
  bottom-up yields per nonterminal (ambiguous derivations of one string are summed); None when
  the grammar is recursive or has more than `max_derivations` derivation trees (counted first,
  in exact integers, before any string is built). The quickstart grammar: 247,347 derivations.
- `enumerate_prefixes(g, length)`: every prefix of `length` tokens that some sentence starts
  with, with its exact prefix probability, by a left-to-right expansion of viable prefixes (the
  exact next-token distribution after each prefix of length k gives its children of length
  k+1); None when some length has more than `max_prefixes`.
- `sample_completions(g, prefixes, rng)`: exact samples of x given that x starts with each
  prefix, token by token from the exact next-token distribution (a sweep per token: ~20 ms
  per cfg3 completion); `completions_by_rejection` gets the same law far faster for prefixes
  of reasonable probability, from strings sampled from the grammar that happen to start so.

Worked example, `S -> 'a' S [0.5] | 'b' [0.5]` is recursive (no sentence enumeration), and its
prefixes of length 2 are `a a` (0.25) and `a b` (0.25): `b` ends every string it starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from cfglab.data.sampler import sample
from cfglab.exact import inside
from cfglab.grammar.cfg import Grammar

MAX_DERIVATIONS = 2_000_000  # derivation trees of a finite language beyond which no enumeration
MAX_PREFIXES = 100_000  # viable prefixes of one length beyond which no enumeration


def count_derivations(grammar: Grammar) -> int | None:
    """The number of derivation trees of the start symbol (exact), or None if the grammar is
    recursive (a nonterminal derives itself, so the language is infinite)."""
    order = _bottom_up_order(grammar)
    if order is None:
        return None
    count: dict[int, int] = {}
    for a in order:
        total = 0
        for ri in grammar.rules_of[a]:
            ways = 1
            for s in grammar.rules[ri].rhs:
                ways *= 1 if grammar.is_terminal(s) else count[s]
            total += ways
        count[a] = total
    return count[0]


def _bottom_up_order(grammar: Grammar) -> list[int] | None:
    """The nonterminals reachable from the start, children before parents; None on a cycle."""
    order: list[int] = []
    state: dict[int, int] = {}  # 1: on the stack, 2: done
    stack = [(0, iter(_children(grammar, 0)))]
    state[0] = 1
    while stack:
        a, kids = stack[-1]
        nxt = next(kids, None)
        if nxt is None:
            stack.pop()
            state[a] = 2
            order.append(a)
        elif state.get(nxt) == 1:
            return None  # a cycle: the language is infinite (no epsilon or unary cycles)
        elif nxt not in state:
            state[nxt] = 1
            stack.append((nxt, iter(_children(grammar, nxt))))
    return order


def _children(grammar: Grammar, a: int) -> list[int]:
    kids = {s for ri in grammar.rules_of[a] for s in grammar.rules[ri].rhs}
    return sorted(s for s in kids if not grammar.is_terminal(s))


def enumerate_sentences(
    grammar: Grammar, max_derivations: int = MAX_DERIVATIONS
) -> dict[tuple[int, ...], float] | None:
    """Every sentence (a tuple of token ids 1..T) -> its probability, for a finite language of
    at most `max_derivations` derivation trees; None otherwise (see the module docstring)."""
    n_trees = count_derivations(grammar)
    if n_trees is None or n_trees > max_derivations:
        return None
    yields: dict[int, dict[tuple[int, ...], float]] = {}
    for a in _bottom_up_order(grammar) or []:
        out: dict[tuple[int, ...], float] = {}
        for ri in grammar.rules_of[a]:
            rule = grammar.rules[ri]
            parts = [
                {(s - grammar.n_nt + 1,): 1.0} if grammar.is_terminal(s) else yields[s]
                for s in rule.rhs
            ]
            for combo in itertools.product(*(p.items() for p in parts)):
                key = tuple(itertools.chain.from_iterable(k for k, _ in combo))
                prob = rule.prob
                for _, q in combo:
                    prob *= q
                out[key] = out.get(key, 0.0) + prob
        yields[a] = out
    return yields[0]


def enumerate_prefixes(
    grammar: Grammar, length: int, max_prefixes: int = MAX_PREFIXES
) -> tuple[np.ndarray, np.ndarray] | None:
    """(prefixes (K, length) int64 in lexicographic order, log_prefix_prob (K,)): every prefix
    of `length` tokens with a positive probability that a sentence starts with it; None if some
    length 1..length has more than `max_prefixes` of them."""
    frontier = np.zeros((1, 0), dtype=np.int64)  # the viable prefixes of length k, (K_k, k)
    log_pp = np.zeros(1)
    for _ in range(length):
        # the exact next-token distribution after each prefix: its last row, (K_k, T+1)
        last = np.stack([rows[-1] for rows in inside.next_token_dist(grammar, list(frontier))])
        parent, tok = np.nonzero(last[:, 1:] > 0)  # row-major: children in lexicographic order
        if len(parent) > max_prefixes:
            return None
        frontier = np.concatenate([frontier[parent], (tok + 1)[:, None]], axis=1)
        log_pp = log_pp[parent] + np.log(last[parent, tok + 1])
    return frontier, log_pp


def sample_completions(
    grammar: Grammar,
    prefixes: Sequence[np.ndarray],
    rng: np.random.Generator,
    max_tokens: int,
) -> list[np.ndarray | None]:
    """One exact sample of the rest of a sentence per prefix (each a viable prefix): tokens
    drawn one at a time from the exact next-token distribution until EOS. A completion that
    has not ended after `max_tokens` tokens is None (the caller counts it as not finished)."""
    seqs = [list(map(int, p)) for p in prefixes]
    start = [len(s) for s in seqs]
    done: list[bool] = [False] * len(seqs)
    live = list(range(len(seqs)))
    for _ in range(max_tokens + 1):
        if not live:
            break
        rows = inside.next_token_dist(grammar, [np.asarray(seqs[i], np.int64) for i in live])
        still = []
        for i, r in zip(live, rows, strict=True):
            p = r[-1]  # (T+1,): column 0 EOS, column t token id t
            tok = int(rng.choice(len(p), p=p / p.sum()))
            if tok == 0:
                done[i] = True
            elif len(seqs[i]) - start[i] < max_tokens:
                seqs[i].append(tok)
                still.append(i)
        live = still
    return [
        np.asarray(s[b:], dtype=np.int64) if ok else None
        for s, b, ok in zip(seqs, start, done, strict=True)
    ]


def completions_by_rejection(
    grammar: Grammar,
    prefixes: Sequence[np.ndarray],
    rng: np.random.Generator,
    max_tokens: int,
    *,
    batch: int | None = None,
    max_draws: int = 200_000,
) -> tuple[list[np.ndarray | None], np.ndarray]:
    """(completions, drawn (B,) bool): exact samples of the rest of a sentence per prefix (all
    of one length) by rejection: strings drawn from the grammar (no length cap) in batches (by
    default 50 per prefix, between 1,000 and 20,000),
    each kept by the first prefix still waiting that it starts with, so every kept rest is a
    draw of x given that x starts with the prefix. A rest longer than `max_tokens` is None (not
    finished), as in `sample_completions`; prefixes still waiting after `max_draws` strings
    have drawn False (the caller samples those token by token)."""
    out: list[np.ndarray | None] = [None] * len(prefixes)
    drawn = np.zeros(len(prefixes), bool)
    waiting: dict[bytes, list[int]] = {}  # prefix bytes -> indices still waiting, in order
    for i, c in enumerate(prefixes):
        waiting.setdefault(np.asarray(c, np.int64).tobytes(), []).append(i)
    cut = len(prefixes[0]) if len(prefixes) else 0
    batch = batch or min(20_000, max(1000, 50 * len(prefixes)))  # strings per sampler call
    for _ in range(0, max_draws, batch):
        if not waiting:
            break
        for x in sample(grammar, batch, int(rng.integers(2**62)), labels=False).strings():
            key = x[:cut].tobytes() if len(x) >= cut else None
            wait = waiting.get(key) if key is not None else None
            if wait is None:
                continue
            i = wait.pop(0)
            if not wait:
                del waiting[key]
            drawn[i] = True
            out[i] = x[cut:].copy() if len(x) - cut <= max_tokens else None
    return out, drawn
