"""Implicit CFGs (the paper's Result 10): each terminal becomes a bag of observable tokens.

The authors' `multi_vocab` option hides a grammar's terminals behind a larger vocabulary: when
a derivation emits terminal `a`, the string shows one token drawn from `a`'s bag. cfglab builds
this as a *grammar transformation*, so everything downstream (the exact recognizer and inside
probabilities, the sampler's labels, probes, KL, accuracy) works on the result unchanged:

- each original terminal becomes a nonterminal one level deeper, named `t<id>` (its token id in
  the base grammar; more `t`s are prefixed if that name is taken);
- that nonterminal gets one rule per token of its bag, `t<id> -> '<token>'`;
- the new terminals are the tokens, named '1' .. 'V'.

Worked example (`mode="disjoint"`, `tokens=5`): base grammar `S -> 'a' 'b' S | 'a' 'b'` has
terminals a, b (ids 1, 2). Disjoint bags deal tokens round robin: token v goes to terminal
(v - 1) mod |T|, so a = {1, 3, 5} and b = {2, 4}::

    S -> t1 t2 S | t1 t2
    t1 -> '1' | '3' | '5'          (uniform: 1/3 each; weights="nu1": 1/6, 2/6, 3/6)
    t2 -> '2' | '4'

The string `1 4 5 2` has probability P_base(a b a b) * 1/3 * 1/2 * 1/3 * 1/2, and the sampler's
deepest label level reads back the hidden terminal of every token (t1 t2 t1 t2).

Bags (`IMPLICIT_MODES`):

- ``"disjoint"``: token v (1..V) goes to terminal (v - 1) mod |T|, as the authors' round robin
  (their 0-based "token v+1 -> terminal v mod |T|"); each token belongs to exactly one bag.
- ``"overlap"``: each terminal, in id order, gets the distinct values of V*3 // (2|T|) draws
  uniform on 1..V (`random.Random(seed).randint(1, V)`), as the authors' `'overlap'`; one token
  may then belong to several bags, so one token string can have several hidden readings. The
  authors draw from Python's *global* `random`, which cfglab does not touch, so the bags are
  seeded here and are not claimed to equal any bags of theirs.

Tokens no bag holds (about e^-1.5 = 22% of them under ``"overlap"``; none under ``"disjoint"``,
since tokens >= |T| is required) can never occur. NLTK's syntax cannot declare a terminal that
no rule uses, and the vocabulary is read from the grammar, so such tokens are **dropped**: the
grammar's terminals are the used token names in increasing order and vocabulary ids are dense
(token name '7' has id 7 only when every smaller token is used; `grammar.terminals` maps ids
back to names).

Emission weights (`IMPLICIT_WEIGHTS`): ``"uniform"`` over the bag, or ``"nu1"`` (the authors'
`'NU1'`): the bag sorted by token, the i-th smallest token (i = 1..k) has weight i, so the
largest token is k times as likely as the smallest (probability i / (k(k+1)/2)).
"""

from __future__ import annotations

import random

from cfglab.errors import ConfigError
from cfglab.grammar.cfg import Grammar, Rule

# The most observable tokens an implicit grammar may have: one rule each, and the model's
# vocabulary (saved datasets store token ids as uint16). `grammar implicit --tokens 100000000`
# would otherwise build a hundred million rules until memory runs out.
MAX_IMPLICIT_TOKENS = 10_000


def _disjoint_bags(n_terminals: int, tokens: int, seed: int) -> list[list[int]]:
    """Round robin: token v -> terminal (v - 1) mod n_terminals. `seed` is unused."""
    return [list(range(j + 1, tokens + 1, n_terminals)) for j in range(n_terminals)]


def _overlap_bags(n_terminals: int, tokens: int, seed: int) -> list[list[int]]:
    """Per terminal, the distinct values of tokens*3 // (2 n_terminals) uniform draws."""
    rng = random.Random(seed)
    draws = tokens * 3 // (2 * n_terminals)  # >= 1 because tokens >= n_terminals
    return [sorted({rng.randint(1, tokens) for _ in range(draws)}) for _ in range(n_terminals)]


def _uniform_weights(k: int) -> list[float]:
    return [1.0 / k] * k


def _nu1_weights(k: int) -> list[float]:
    total = k * (k + 1) / 2
    return [i / total for i in range(1, k + 1)]


# variant name -> how bags are dealt / how a bag's tokens are weighted (sorted bag order)
IMPLICIT_MODES = {"disjoint": _disjoint_bags, "overlap": _overlap_bags}
IMPLICIT_WEIGHTS = {"uniform": _uniform_weights, "nu1": _nu1_weights}


def implicit_bags(n_terminals: int, mode: str, tokens: int, seed: int = 0) -> list[list[int]]:
    """The bag (sorted token values 1..tokens) of each terminal, in terminal id order.

    >>> implicit_bags(2, "disjoint", 5)
    [[1, 3, 5], [2, 4]]
    """
    if mode not in IMPLICIT_MODES:
        raise ConfigError(
            f"implicit mode {mode!r} is unknown: choose from {', '.join(IMPLICIT_MODES)}"
        )
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < n_terminals:
        raise ConfigError(
            f"implicit tokens={tokens!r}: give an integer >= the grammar's {n_terminals} "
            "terminals, so that every terminal's bag holds at least one token"
        )
    if tokens > MAX_IMPLICIT_TOKENS:
        raise ConfigError(
            f"implicit tokens={tokens}: at most {MAX_IMPLICIT_TOKENS:,} observable tokens (one "
            "rule and one vocabulary entry each); give fewer"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        # random.Random(-s) is random.Random(s): a negative seed would silently repeat another
        raise ConfigError(f"implicit seed={seed!r}: give a seed >= 0")
    return IMPLICIT_MODES[mode](n_terminals, tokens, seed)


def make_implicit(
    grammar: Grammar,
    mode: str = "disjoint",
    tokens: int = 0,
    weights: str = "uniform",
    seed: int = 0,
) -> Grammar:
    """The implicit version of `grammar` (see the module docstring for the construction).

    The result is layered whenever `grammar` is (one level more), and its string probabilities
    are P(token string) = sum over the hidden terminal strings it can be read as of
    P_base(terminal string) * the product of the tokens' emission probabilities.
    """
    if not isinstance(grammar, Grammar):  # a language (cfglab.languages): no terminal rules
        raise ConfigError(
            f"an implicit version rewrites a grammar's terminal rules, and {grammar.name!r} is a "
            "language beyond context-free: give a grammar"
        )
    if weights not in IMPLICIT_WEIGHTS:
        raise ConfigError(
            f"implicit weights {weights!r} are unknown: choose from {', '.join(IMPLICIT_WEIGHTS)}"
        )
    bags = implicit_bags(grammar.n_t, mode, tokens, seed)
    used = sorted({v for bag in bags for v in bag})
    n_base = grammar.n_nt + grammar.n_t  # new nonterminal count: old NTs + one per old terminal
    token_sym = {v: n_base + i for i, v in enumerate(used)}  # token value -> new terminal symbol

    # old terminal symbol s (>= n_nt) becomes nonterminal s: appended after the old NTs in
    # terminal order, so the old rules keep their symbol ids verbatim
    rules = list(grammar.rules)
    emit = IMPLICIT_WEIGHTS[weights]
    for j, bag in enumerate(bags):
        a = grammar.n_nt + j
        rules.extend(Rule(a, (token_sym[v],), p) for v, p in zip(bag, emit(len(bag)), strict=True))

    taken = set(grammar.nonterminals)
    prefix = "t"
    while any(f"{prefix}{j + 1}" in taken for j in range(grammar.n_t)):
        prefix = "t" + prefix  # t1 exists already: tt1, ttt1, ...
    hidden = tuple(f"{prefix}{j + 1}" for j in range(grammar.n_t))
    name = f"{grammar.name or 'grammar'}-implicit-{mode}-{tokens}"
    if weights != "uniform":
        name += f"-{weights}"
    return Grammar(
        grammar.nonterminals + hidden,
        tuple(str(v) for v in used),
        tuple(rules),
        name=name,
    )
