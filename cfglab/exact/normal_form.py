"""A grammar binarised for the exact dynamic programs of `cyk.py` and `inside.py`.

Every rule of the `Grammar` is rewritten so that the DPs see only three kinds of rules:

- lexical  `A -> t`            (prob p)
- binary   `A -> B C`          (prob p)
- unary    `A -> B`            (prob p; acyclic, the grammar stage rejects unary cycles)

Long rules are right-binarised with *shared suffix* symbols: `A -> B C D [p]` becomes
`A -> B <C D> [p]` and `<C D> -> C D [1]`; a terminal inside a rule of length >= 2 gets a
preterminal `<t> -> t [1]`. Every added symbol has exactly one rule of probability 1, so
derivations of the original and the binarised grammar are in bijection: inside probabilities,
prefix probabilities and parse counts are unchanged, and trees map back by splicing the added
symbols out (`is_added`).

Symbols of the normal form: `0 .. n_nt-1` are the grammar's nonterminals (0 = start), then the
added suffix and preterminal symbols. Terminals are *token ids* 1..T (cfglab/data/vocab.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cfglab.errors import ExactError
from cfglab.grammar.cfg import Grammar

# symbols of the binarised grammar beyond which its dense (N, N) closures (72 MB each, an
# O(N^3) solve) are refused up front rather than left to exhaust memory or time
MAX_SYMBOLS = 3000


@dataclass(frozen=True, eq=False)
class NormalForm:
    grammar: Grammar
    n_sym: int  # N: symbols of the binarised grammar
    n_t: int  # T: terminals (token ids 1..T)
    names: tuple[str, ...]  # (N,) readable names, e.g. "<C D>" for a suffix symbol
    is_added: np.ndarray  # (N,) bool: a suffix or preterminal symbol, spliced out of trees
    # lexical rules, grouped by token: token t's rules are lex_off[t] .. lex_off[t+1]
    lex: np.ndarray  # (T+1, N) float64: lex[t, A] = P(A -> t); row 0 unused
    lex_off: np.ndarray  # (T+2,) int64
    lex_sym: np.ndarray  # (K,) int64: A
    lex_p: np.ndarray  # (K,) float64
    # binary rules A -> B C, grouped by the left child B: bin_off[B] .. bin_off[B+1]
    bin_off: np.ndarray  # (N+1,) int64
    bin_parent: np.ndarray  # (R,) int64: A
    bin_left: np.ndarray  # (R,) int64: B
    bin_right: np.ndarray  # (R,) int64: C
    bin_p: np.ndarray  # (R,) float64
    # unary rules A -> B and their closure U* = I + U + U^2 + ... (finite: U is nilpotent)
    unary: tuple[tuple[int, int, float], ...]  # (A, B, p)
    ustar: np.ndarray  # (N, N) float64: ustar[A, B] = P(A =>* B by unary rules), diagonal 1
    # the closure applied by column: for B, the A != B with ustar[A, B] > 0
    up_off: np.ndarray  # (N+1,) int64
    up_sym: np.ndarray  # (M,) int64: A
    up_p: np.ndarray  # (M,) float64
    # left-corner closure LC = (I - P_L)^-1, P_L[A, B] = P(A -> B ...): by row C, the D with
    # LC[C, D] > 0 (the diagonal included; entries exceed 1 under left recursion)
    lc: np.ndarray  # (N, N) float64
    lc_off: np.ndarray  # (N+1,) int64
    lc_sym: np.ndarray  # (Q,) int64
    lc_p: np.ndarray  # (Q,) float64
    # why exact probabilities cannot be computed (a path of probability below ~1e-308), or None
    underflow: str | None = None

    @property
    def has_unary(self) -> bool:
        return bool(self.unary)


def normal_form(grammar: Grammar) -> NormalForm:
    """Binarise `grammar` (cached on the grammar object: it is immutable)."""
    cached = grammar.__dict__.get("_cfglab_normal_form")
    if cached is not None:
        return cached
    nf = _build(grammar)
    object.__setattr__(grammar, "_cfglab_normal_form", nf)
    return nf


def _build(g: Grammar) -> NormalForm:
    names, is_added, lexical, binary, unary = _binarise(g)
    n, n_t = len(names), g.n_t
    _check_size(g, n)
    lex = np.zeros((n_t + 1, n))
    for a, tok, p in lexical:
        lex[tok, a] += p
    lex_off, lex_sym, lex_p = _group([(tok, a, p) for a, tok, p in lexical], n_t + 1)

    binary.sort(key=lambda r: (r[1], r[0], r[2]))  # grouped by the left child B
    bin_off = np.searchsorted(
        np.array([r[1] for r in binary], dtype=np.int64), np.arange(n + 1), side="left"
    ).astype(np.int64)
    bin_parent = np.array([r[0] for r in binary], dtype=np.int64)
    bin_left = np.array([r[1] for r in binary], dtype=np.int64)
    bin_right = np.array([r[2] for r in binary], dtype=np.int64)
    bin_p = np.array([r[3] for r in binary], dtype=np.float64)

    ustar, chains = _unary_closure(unary, n)
    up = [(b, a, ustar[a, b]) for a in range(n) for b in range(n) if a != b and chains[a, b]]
    up_off, up_sym, up_p = _group(up, n)
    lc, reach = _left_corners(binary, unary, n)
    lc_off, lc_sym, lc_p = _group(
        [(c, d, lc[c, d]) for c in range(n) for d in range(n) if reach[c, d]], n
    )
    return NormalForm(
        grammar=g,
        n_sym=n,
        n_t=n_t,
        names=tuple(names),
        is_added=np.array(is_added),
        lex=lex,
        lex_off=lex_off,
        lex_sym=lex_sym,
        lex_p=lex_p,
        bin_off=bin_off,
        bin_parent=bin_parent,
        bin_left=bin_left,
        bin_right=bin_right,
        bin_p=bin_p,
        unary=tuple(unary),
        ustar=ustar,
        up_off=up_off,
        up_sym=up_sym,
        up_p=up_p,
        lc=lc,
        lc_off=lc_off,
        lc_sym=lc_sym,
        lc_p=lc_p,
        underflow=_underflow(g, names, (reach & (lc <= 0.0)) | (chains & (ustar <= 0.0))),
    )


def _binarise(g: Grammar) -> tuple[list[str], list[bool], list, list, list]:
    """The grammar's rules rewritten into (names (N,), is_added (N,), lexical [(A, token, p)],
    binary [(A, B, C, p)], unary [(A, B, p)]) over the normal form's symbols."""
    n_nt = g.n_nt
    names = list(g.nonterminals)
    added = [False] * n_nt
    preterminal_of: dict[int, int] = {}  # token id -> its added preterminal
    lexical: list[tuple[int, int, float]] = []  # (A, token, p)
    binary: list[tuple[int, int, int, float]] = []  # (A, B, C, p)
    unary: list[tuple[int, int, float]] = []

    def new_symbol(name: str) -> int:
        names.append(name)
        added.append(True)
        return len(names) - 1

    def symbol(s: int) -> int:  # a grammar symbol inside a long rule -> a normal-form symbol
        if s < n_nt:
            return s
        tok = s - n_nt + 1
        if tok not in preterminal_of:
            preterminal_of[tok] = new_symbol(f"<{g.symbol_name(s)}>")
            lexical.append((preterminal_of[tok], tok, 1.0))
        return preterminal_of[tok]

    # shared suffix symbols, hash-consed: a suffix is (its first symbol, the suffix after it),
    # so long rules cost linear time and memory (a tuple key per suffix would be quadratic)
    intern: dict[tuple[int, int], int] = {}  # (first, code of the rest) -> suffix id
    symbol_of: list[int] = []  # suffix id -> normal-form symbol

    def suffix(syms: tuple[int, ...]) -> int:  # the shared symbol deriving `syms` (len >= 2)
        length = len(syms)
        ids = [0] * length  # ids[i]: suffix id of syms[i:] (i <= length - 2)
        rest_code = -1 - syms[-1]  # a lone symbol codes as a negative number
        for i in range(length - 2, -1, -1):
            key = (syms[i], rest_code)
            if key not in intern:
                intern[key] = len(symbol_of)
                symbol_of.append(-1)
            ids[i] = rest_code = intern[key]
        # new symbols outermost first, rules innermost first: the numbering of a recursive
        # construction, so the sweeps add in the same order as always
        made = []
        for i in range(length - 1):
            if symbol_of[ids[i]] != -1:
                break
            part = syms[i:] if length - i <= 8 else (*syms[i : i + 2], None)
            label = " ".join(names[s] if s is not None else f"... ({length - i})" for s in part)
            symbol_of[ids[i]] = new_symbol(f"<{label}>")
            made.append(i)
        for i in reversed(made):
            rest = syms[i + 1] if i == length - 2 else symbol_of[ids[i + 1]]
            binary.append((symbol_of[ids[i]], syms[i], rest, 1.0))
        return symbol_of[ids[0]]

    for rule in g.rules:
        rhs = rule.rhs
        if len(rhs) == 1:
            if g.is_terminal(rhs[0]):
                lexical.append((rule.lhs, rhs[0] - n_nt + 1, rule.prob))
            else:
                unary.append((rule.lhs, rhs[0], rule.prob))
            continue
        syms = tuple(symbol(s) for s in rhs)
        right = syms[1] if len(syms) == 2 else suffix(syms[1:])
        binary.append((rule.lhs, syms[0], right, rule.prob))
    return names, added, lexical, binary, unary


def _check_size(g: Grammar, n: int) -> None:
    """ExactError when the dense tables of n symbols would not fit."""
    if n > MAX_SYMBOLS:
        raise ExactError(
            f"{g.name or 'the grammar'} binarises to {n:,} symbols (nonterminals, one per "
            f"distinct rule suffix, one per terminal inside a long rule), more than the "
            f"{MAX_SYMBOLS:,} the exact algorithms handle (dense N x N closures): use a "
            "grammar with fewer nonterminals or shorter rules"
        )
    if (g.n_t + 1) * n * 8 > 2 * 1024**3:
        raise ExactError(
            f"{g.name or 'the grammar'}: {g.n_t:,} terminals x {n:,} symbols is too large a "
            "lexical table for the exact algorithms: use fewer terminals"
        )


def _unary_closure(unary: list[tuple[int, int, float]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(ustar (N, N) = I + U + U^2 + ..., chains (N, N) bool: A =>* B by unary rules)."""
    # by powers: U is nilpotent (acyclic), so the sum is finite. Which chains exist is tracked
    # as booleans: chain counts grow like 2^depth and would wrap in int64 (count_parses counts
    # them exactly, in Python ints)
    u = np.zeros((n, n))
    for a, b, p in unary:
        u[a, b] += p
    has_unary = u > 0
    ustar, power = np.eye(n), np.eye(n)
    power_b = np.eye(n, dtype=bool)
    for _ in range(n):
        power = power @ u
        power_b = (power_b.astype(np.float32) @ has_unary.astype(np.float32)) > 0
        if not power_b.any():
            break
        ustar = ustar + power
    return ustar, _reachability(has_unary)  # chains: reflexive


def _left_corners(
    binary: list[tuple[int, int, int, float]], unary: list[tuple[int, int, float]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(LC = (I - P_L)^-1 (N, N), reach (N, N) bool: a left-corner path A -> ... B exists), with
    P_L[A, B] = the total probability of A's rules whose first symbol is B."""
    p_left = np.zeros((n, n))
    for a, b, _, p in binary:
        p_left[a, b] += p
    for a, b, p in unary:
        p_left[a, b] += p
    lc = np.linalg.solve(np.eye(n) - p_left, np.eye(n))
    reach = _reachability(p_left > 0)
    return np.where(reach, np.maximum(lc, 0.0), 0.0), reach  # exact zeros where no path


def _underflow(g: Grammar, names: list[str], lost: np.ndarray) -> str | None:
    """Why exact probabilities cannot be computed, given lost (N, N) = the left-corner and
    unary paths that exist but whose probability is below the smallest float (a chain of
    hundreds of levels, or rules of probability 1e-200): sentences would get probability 0.
    Recognition and parsing need only which paths exist: they are unaffected."""
    if not lost.any():
        return None
    a, b = (int(v) for v in np.argwhere(lost)[0])
    return (
        f"{g.name or 'the grammar'}: the probability that {names[a]!r} starts with "
        f"{names[b]!r} is below the smallest floating-point number (about 1e-308), so exact "
        "probabilities would be 0 for strings the grammar derives: use a shallower grammar "
        "or larger rule probabilities"
    )


def _group(items: list[tuple[int, int, float]], n_keys: int):
    """(key, sym, p) triples -> CSR arrays (off (n_keys+1,), sym, p) sorted by key."""
    items = sorted(items, key=lambda x: (x[0], x[1]))
    keys = np.array([k for k, _, _ in items], dtype=np.int64)
    off = np.searchsorted(keys, np.arange(n_keys + 1), side="left").astype(np.int64)
    return (
        off,
        np.array([s for _, s, _ in items], dtype=np.int64),
        np.array([p for _, _, p in items], dtype=np.float64),
    )


def _reachability(edges: np.ndarray) -> np.ndarray:
    """Reflexive-transitive closure of a boolean (N, N) adjacency matrix."""
    reach = edges | np.eye(len(edges), dtype=bool)
    while True:  # float32 products go through BLAS; only their sign matters
        r = reach.astype(np.float32)
        nxt = reach | ((r @ r) > 0)
        if (nxt == reach).all():
            return reach
        reach = nxt
