"""The `Grammar` value object and NLTK's CFG/PCFG text syntax: stage 1 of the pipeline.

Words used everywhere in cfglab, defined once here:

- **terminal**: a symbol that appears in strings (`'a'`, or `'1' '2' '3'` for the paper's grammars).
- **nonterminal** (`nt`): a symbol that is rewritten by a rule; nonterminal 0 is the start symbol.
- **rule**: `lhs -> rhs` with a probability; the rules of one nonterminal sum to 1. A grammar
  written without weights is uniform over each nonterminal's rules, as in the paper.
- **root**: the start symbol, the root of every derivation tree.
- **level**: in a *layered* grammar (the paper's cfg3 family) every rule of a level-l nonterminal
  rewrites into symbols of level l+1 only; level 0 holds the root, the last level the terminals.
- **ancestor**: the nonterminal at level l above a token.  **boundary**: a token is a level-l
  boundary when it is the last token of its level-l ancestor's subtree.

Symbols are coded as ints for speed: `0 .. n_nt-1` are nonterminals, `n_nt .. n_nt+n_t-1`
terminals (`grammar.terminal_id(sym) = sym - n_nt`).

Text syntax (NLTK's `CFG.fromstring` / `PCFG.fromstring`)::

    # a comment
    %start S                    (optional; else the first rule's left-hand side)
    S -> NP VP [0.7] | 'a' [0.3]
    NP -> 'b'                   (no weights at all: uniform over each nonterminal's rules)

Supported: several rules per nonterminal, ambiguity, recursion, unary rules (`A -> B`).
Rejected with a message: epsilon rules (`A -> `), unary cycles (`A -> B`, `B -> A`), symbols that
derive no finite string, PCFGs whose expected string length is infinite, and terminals that the
strings format (one string per line, tokens separated by spaces) cannot write: empty, with
whitespace inside, or named like a special token (`<bos>`, `<eos>`, `<mask>`, `<pad>`).

Reading is linear in the size of the text, and the length moments (`mean_length`,
`length_sd`) are solved one strongly connected component of the nonterminal graph at a time, so
grammars with 100k rules or a thousand levels check in seconds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from cfglab.errors import GrammarWarning
from cfglab.grammar.moments import length_moments
from cfglab.grammar.syntax import (
    _check_terminal,
    _fail,
    _quote,
    _read_line,
    _strip_comment,
    natural_key,
    physical_lines,
)

PROB_TOLERANCE = 1e-6  # how far an NT's rule probabilities may sum away from 1


@dataclass(frozen=True)
class Rule:
    lhs: int  # nonterminal id
    rhs: tuple[int, ...]  # symbol ids: < n_nt nonterminal, >= n_nt terminal
    prob: float


@dataclass(frozen=True, eq=False)
class Grammar:
    """A probabilistic context-free grammar. Build with `Grammar.from_text` or `builtin.load`."""

    nonterminals: tuple[str, ...]  # names; index 0 is the start symbol
    terminals: tuple[str, ...]  # names, numbers first then sorted; the order fixes vocabulary ids
    rules: tuple[Rule, ...]  # grouped by lhs, lhs in increasing order
    name: str = ""
    rules_of: tuple[tuple[int, ...], ...] = field(init=False, repr=False)  # nt -> rule indices

    def __post_init__(self) -> None:
        by_lhs: list[list[int]] = [[] for _ in self.nonterminals]
        for i, rule in enumerate(self.rules):
            by_lhs[rule.lhs].append(i)
        object.__setattr__(self, "rules_of", tuple(tuple(r) for r in by_lhs))

    # ---- basic facts -------------------------------------------------------------------------
    @property
    def n_nt(self) -> int:
        return len(self.nonterminals)

    @property
    def n_t(self) -> int:
        return len(self.terminals)

    def is_terminal(self, sym: int) -> bool:
        return sym >= self.n_nt

    def symbol_name(self, sym: int) -> str:
        return self.terminals[sym - self.n_nt] if sym >= self.n_nt else self.nonterminals[sym]

    def __eq__(self, other: object) -> bool:  # same language *and* probabilities, names included
        if not isinstance(other, Grammar):
            return NotImplemented
        return (self.nonterminals, self.terminals, self.rules) == (
            other.nonterminals,
            other.terminals,
            other.rules,
        )

    def __hash__(self) -> int:
        return hash((self.nonterminals, self.terminals, self.rules))

    def __repr__(self) -> str:
        return (
            f"Grammar({self.name or 'unnamed'}: {self.n_nt} nonterminals, {self.n_t} terminals, "
            f"{len(self.rules)} rules)"
        )

    # ---- derived structure -------------------------------------------------------------------
    @cached_property
    def levels(self) -> tuple[tuple[int, ...], ...] | None:
        """Nonterminal ids per level from the root, if the grammar is layered; else None.

        Layered: every rule of a level-l nonterminal rewrites into level-(l+1) nonterminals only,
        or into terminals only at the last nonterminal level. The terminals are the level below
        the last entry (not listed here). Unreachable nonterminals never occur and are not
        listed (cfg3e1 has ten of them in the authors' file).
        """
        depth = {0: 0}
        frontier = [0]
        while frontier:
            nxt = []
            for a in frontier:
                for ri in self.rules_of[a]:
                    for s in self.rules[ri].rhs:
                        if self.is_terminal(s):
                            continue
                        d = depth.get(s)
                        if d is None:
                            depth[s] = depth[a] + 1
                            nxt.append(s)
                        elif d != depth[a] + 1:
                            return None
            frontier = nxt
        n_levels = max(depth.values()) + 1
        for a, d in depth.items():
            for ri in self.rules_of[a]:
                rhs = self.rules[ri].rhs
                n_t = sum(self.is_terminal(s) for s in rhs)
                if n_t != (len(rhs) if d == n_levels - 1 else 0):  # terminals: last level only
                    return None
        return tuple(
            tuple(sorted(a for a, d in depth.items() if d == lev)) for lev in range(n_levels)
        )

    @cached_property
    def expected_lengths(self) -> np.ndarray:
        """E[length of the string derived from nt a] for every nt (finite: validation checks)."""
        return self._length_moments[0]

    @cached_property
    def length_variances(self) -> np.ndarray:
        """Var[length of the string derived from nt a] for every nt (inf if it overflows)."""
        return self._length_moments[1]

    @property
    def mean_length(self) -> float:
        return float(self.expected_lengths[0])

    @property
    def length_sd(self) -> float:
        """Standard deviation of the length of the grammar's strings."""
        return float(np.sqrt(self.length_variances[0]))

    @cached_property
    def _length_moments(self) -> tuple[np.ndarray, np.ndarray]:
        # inf where the expected length is infinite (reading rejects that for reachable
        # nonterminals) or past float64 (grammars a thousand levels deep)
        mean, var, _, _ = length_moments(self)
        return mean, var

    # ---- text ----------------------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str, name: str = "", source: str = "<text>") -> Grammar:
        """Read NLTK CFG/PCFG syntax; raise GrammarError naming the line and the fix."""
        return _read_grammar(text, name=name, source=source)

    def to_text(self) -> str:
        """Write NLTK syntax. Weights are omitted when every nonterminal is uniform, so a file
        written without weights round-trips to the same text; floats are written with `repr`
        so weighted grammars round-trip exactly."""
        uniform = all(self.rules[ri].prob == 1.0 / len(rs) for rs in self.rules_of for ri in rs)
        lines = []
        if self.name:
            lines.append(f"# grammar {self.name}")
        lines.append(f"%start {self.nonterminals[0]}")
        for a, rs in enumerate(self.rules_of):
            alts = []
            for ri in rs:
                rule = self.rules[ri]
                body = " ".join(
                    _quote(self.symbol_name(s)) if self.is_terminal(s) else self.symbol_name(s)
                    for s in rule.rhs
                )
                alts.append(body if uniform else f"{body} [{rule.prob!r}]")
            lines.append(f"{self.nonterminals[a]} -> " + " | ".join(alts))
        return "\n".join(lines) + "\n"


# ---- reading ---------------------------------------------------------------------------------


# (lhs, [(is_terminal, name)], prob or None, line_no): one alternative as written
RawRule = tuple[str, list[tuple[bool, str]], float | None, int]


def _read_grammar(text: str, name: str, source: str) -> Grammar:
    """Text -> Grammar: the rules as written, then symbols numbered, rules grouped and weighed,
    then the structure checked (each step raises GrammarError naming the line and the fix)."""
    raw, start, start_line = _read_rules(text, source)
    _check_weights(raw, source)
    nt_names = _nonterminal_names(raw, start, start_line, source)
    nt_index = {n: i for i, n in enumerate(nt_names)}
    t_names = _terminal_names(raw, nt_index, source)
    t_index = {n: len(nt_names) + i for i, n in enumerate(t_names)}
    rules, line_of = _grouped_rules(raw, nt_names, nt_index, t_index, source)
    g = Grammar(tuple(nt_names), tuple(t_names), tuple(rules), name=name)
    _check_structure(g, source, line_of)
    return g


def _read_rules(text: str, source: str) -> tuple[list[RawRule], str | None, int]:
    """Every alternative of every line, in file order, and the %start symbol (None if not
    given) with its line."""
    start: str | None = None
    start_line = 0
    raw: list[RawRule] = []
    for line_no, line in enumerate(physical_lines(text), start=1):
        body = (
            line.split("#", 1)[0] if "'" not in line and '"' not in line else _strip_comment(line)
        )
        body = body.strip()
        if not body:
            continue
        if body.startswith("%start"):
            parts = body.split()
            if len(parts) != 2:
                raise _fail(source, line_no, "'%start' needs exactly one nonterminal: '%start S'")
            start, start_line = parts[1], line_no
            continue
        raw.extend(_read_line(body, source, line_no))
    if not raw:
        raise _fail(source, 0, "the grammar is empty: write at least one rule such as S -> 'a'")
    return raw, start, start_line


def _check_weights(raw: list[RawRule], source: str) -> None:
    """Weights: on every rule or on none."""
    weighted = [r[2] is not None for r in raw]
    if any(weighted) and not all(weighted):
        bad = raw[weighted.index(False)] if weighted[0] else raw[weighted.index(True)]
        raise _fail(
            source,
            bad[3],
            "some rules have a probability [p] and some do not: give "
            "every rule a probability, or none (then each nonterminal is uniform)",
        )


def _nonterminal_names(
    raw: list[RawRule], start: str | None, start_line: int, source: str
) -> list[str]:
    """Nonterminals in order of first appearance as a left-hand side, the start symbol first."""
    # first appearance order; dicts keep reading linear in the size of the grammar
    nt_first: dict[str, int] = {}
    for lhs, _, _, _ in raw:
        nt_first.setdefault(lhs, len(nt_first))
    nt_names = list(nt_first)
    if start is not None:
        if start not in nt_first:
            raise _fail(
                source,
                start_line,
                f"start symbol {start!r} has no rules: add a rule "
                f"'{start} -> ...' or name another symbol in '%start'",
            )
        nt_names.remove(start)
        nt_names.insert(0, start)
    return nt_names


def _terminal_names(raw: list[RawRule], nt_index: dict[str, int], source: str) -> list[str]:
    """The terminals, each checked once, in a stable vocabulary order ('1' < '2' < '10', then
    names); a bare name on a right-hand side must be a nonterminal with rules."""
    t_seen: dict[str, None] = {}
    for lhs, rhs, _, line_no in raw:
        for is_t, s in rhs:
            if is_t:
                if s not in t_seen:
                    _check_terminal(s, source, line_no)
                    t_seen[s] = None
            elif s not in nt_index:
                raise _fail(
                    source,
                    line_no,
                    f"nonterminal {s!r} (in a rule of {lhs!r}) has no "
                    f"rules: add a rule '{s} -> ...', or quote it ('{s}') if it is a "
                    "terminal",
                )
    return sorted(t_seen, key=natural_key)


def _grouped_rules(
    raw: list[RawRule],
    nt_names: list[str],
    nt_index: dict[str, int],
    t_index: dict[str, int],
    source: str,
) -> tuple[list[Rule], dict[int, int]]:
    """The rules grouped by left-hand side (duplicates refused) with their probabilities
    (uniform per nonterminal when no weights are written; weights must sum to 1), and the
    line of each nonterminal's first rule (where structure errors point)."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    by_lhs: list[list[tuple[tuple[int, ...], float | None, int]]] = [[] for _ in nt_names]
    for lhs, rhs, p, line_no in raw:
        a = nt_index[lhs]
        ids = tuple(t_index[s] if is_t else nt_index[s] for is_t, s in rhs)
        if (a, ids) in seen:
            raise _fail(
                source,
                line_no,
                f"duplicate rule for {lhs!r}: "
                f"{lhs} -> {' '.join(_quote(s) if t else s for t, s in rhs)}; "
                "remove one copy (merge their probabilities)",
            )
        seen.add((a, ids))
        by_lhs[a].append((ids, p, line_no))
    rules = []
    for a, alts in enumerate(by_lhs):
        if alts[0][1] is None:
            rules.extend(Rule(a, ids, 1.0 / len(alts)) for ids, _, _ in alts)
            continue
        total = sum(p for _, p, _ in alts)
        if abs(total - 1.0) > PROB_TOLERANCE:
            raise _fail(
                source,
                alts[0][2],
                f"the probabilities of the rules of {nt_names[a]!r} sum to "
                f"{total:.6g}, not 1: fix them so they sum to 1",
            )
        rules.extend(Rule(a, ids, p) for ids, p, _ in alts)
    return rules, {a: alts[0][2] for a, alts in enumerate(by_lhs)}


def _check_structure(g: Grammar, source: str, line_of: dict[int, int]) -> None:
    """Unary cycles, non-productive and unreachable nonterminals, infinite expected length."""
    cycle = _unary_cycle(g)
    if cycle:
        names = " -> ".join(g.nonterminals[c] for c in cycle)
        raise _fail(
            source,
            line_of[cycle[0]],
            f"unary cycle {names}: cfglab does not "
            "support cycles of single-nonterminal rules; merge those nonterminals",
        )
    productive = _productive(g)
    for a in range(g.n_nt):
        if not productive[a]:
            raise _fail(
                source,
                line_of[a],
                f"nonterminal {g.nonterminals[a]!r} derives no finite "
                "string (every rule of it leads back to itself): give it a rule that "
                "ends in terminals",
            )
    reachable = _reachable(g)
    for a in range(g.n_nt):
        if a not in reachable:
            warnings.warn(
                f"{source}:{line_of[a]}: nonterminal {g.nonterminals[a]!r} is not "
                f"reachable from the start symbol {g.nonterminals[0]!r}; its rules are "
                "never used",
                GrammarWarning,
                stacklevel=4,  # the caller of Grammar.from_text
            )
    _check_finite_length(g, reachable, source, line_of)


def _unary_cycle(g: Grammar) -> list[int] | None:
    """The first cycle A -> B -> ... -> A through single-nonterminal rules, as the list of its
    nonterminals with A at both ends; None if there is none. One iterative depth-first search
    (no recursion: unary chains may be thousands long)."""
    n = g.n_nt
    unary = [
        [r.rhs[0] for r in (g.rules[i] for i in g.rules_of[a]) if len(r.rhs) == 1 and r.rhs[0] < n]
        for a in range(n)
    ]
    state = [0] * n  # 0 new, 1 on stack, 2 done
    for root in range(n):
        if state[root]:
            continue
        stack = [(root, iter(unary[root]))]
        path = [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state[nxt] == 1:
                return path[path.index(nxt) :] + [nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(unary[nxt])))
                path.append(nxt)
    return None


def _productive(g: Grammar) -> list[bool]:
    """Per nonterminal: whether it derives some finite terminal string. A worklist over
    "unproductive children left" per rule (not repeated passes over all rules: those are
    quadratic on deep grammars)."""
    n = g.n_nt
    productive = [False] * n
    waiting = [sum(1 for s in r.rhs if s < n) for r in g.rules]
    used_in: list[list[int]] = [[] for _ in range(n)]
    for i, r in enumerate(g.rules):
        for s in r.rhs:
            if s < n:
                used_in[s].append(i)
    work = [r.lhs for r, w in zip(g.rules, waiting, strict=True) if w == 0]
    while work:
        a = work.pop()
        if productive[a]:
            continue
        productive[a] = True
        for i in used_in[a]:
            waiting[i] -= 1
            if waiting[i] == 0 and not productive[g.rules[i].lhs]:
                work.append(g.rules[i].lhs)
    return productive


def _reachable(g: Grammar) -> set[int]:
    """The nonterminals the start symbol derives (itself included)."""
    reachable = {0}
    frontier = [0]
    while frontier:
        a = frontier.pop()
        for ri in g.rules_of[a]:
            for s in g.rules[ri].rhs:
                if s < g.n_nt and s not in reachable:
                    reachable.add(s)
                    frontier.append(s)
    return reachable


def _check_finite_length(
    g: Grammar, reachable: set[int], source: str, line_of: dict[int, int]
) -> None:
    """Infinite expected length: the branching process of nonterminals is (super)critical.
    Stores the solved length moments as the grammar's cached value."""
    mean, var, radius, comp = length_moments(g, reachable)
    g.__dict__["_length_moments"] = (mean, var)  # solved once: the cached property's value
    if radius >= 1.0 - 1e-9:
        raise _fail(
            source,
            line_of[comp[0]],
            f"the expected string length is infinite (the mean number of "
            f"nonterminals a nonterminal rewrites into has spectral radius {radius:.4g} "
            f"≥ 1 in the recursion through {', '.join(repr(g.nonterminals[a]) for a in comp[:5])}"
            f"{' ...' if len(comp) > 5 else ''}): lower the probabilities of the recursive rules",
        )
    if len(reachable) < g.n_nt:  # never used, but the exact algorithms' closures include them
        _, _, radius, comp = length_moments(g)
        if radius >= 1.0 - 1e-9:
            raise _fail(
                source,
                line_of[comp[0]],
                f"unreachable nonterminal {g.nonterminals[comp[0]]!r} has an infinite expected "
                f"length (spectral radius {radius:.4g} ≥ 1): remove its rules (they are never "
                "used) or lower the probabilities of its recursive rules",
            )
