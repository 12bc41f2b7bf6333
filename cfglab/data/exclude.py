"""Held-out rule combinations (`data.exclude`): what they are, and their exact probabilities.

A *combination* names two rules of the grammar, written as `cfglab grammar show` prints them
(terminals quoted), joined by a word that says how they meet in a derivation tree::

    "7 -> '3' '2' under 10 -> 8 7"    a node expanded with 7 -> '3' '2' whose parent node was
                                      expanded with 10 -> 8 7 (a rule under a parent rule)
    "9 -> '1' '1' below 13 -> 12 12 11"
                                      a node expanded with 9 -> '1' '1' anywhere inside the
                                      subtree of a node expanded with 13 -> 12 12 11 (strictly
                                      below it): two rules used in one subtree

A tree *contains* a combination when some node pair meets it. The training stream with
`data.exclude` is the grammar conditioned on trees that contain none of them: the fast sampler
(cfglab.data.sampler) rejects such a tree as soon as it sees it and draws another. Each rule of a
combination must still be used on its own (`check_combinations`).

Everything here is exact (no sampling): a node's chance to avoid every combination depends only
on its nonterminal, the rules forbidden at it (by its parent's rule and by the rules above it)
and which `below` rules lie above it. So the grammar is split into *states* (nonterminal,
forbidden rules, active `below` combinations), enumerated from the root, and the probability
q(s) that a subtree rooted in state s avoids every combination is the least fixed point of

    q(s) = sum over allowed rules r of s:  p(r) * prod over r's nonterminal children c  q(c's state)

(iterated from 0: exact in depth-many rounds for a layered grammar; for a recursive one,
until a round changes no value by more than 1e-15). With a length cap (`data.max_len`) q(s) is
a vector over lengths 0..max_len and the product a truncated convolution. From q:

- `heldout_mass`: P(a tree contains a combination) = 1 - q(root) / q_plain(root) (q_plain: no
  combination; with a cap both count only strings of length <= max_len);
- `conditioned_grammar`: the training distribution as a PCFG over the states, rule r of state s
  with probability p(r) * prod q(children) / q(s) (no length cap). Its trees are the grammar's
  trees that avoid every combination, each with its probability divided by q(root), so the exact
  tools (cfglab.exact.inside) give P_train(x) = sum over x's avoiding parses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cfglab.errors import ConfigError
from cfglab.grammar.cfg import Grammar, Rule
from cfglab.grammar.syntax import _TOKEN, _quote

KINDS = ("under", "below")  # how the two rules meet: parent and child, ancestor and descendant
MIN_PART_SHARE = 1e-3  # each rule of a combination: used by at least this share of kept trees
MAX_MASS = 0.99  # refused above: the sampler would reject almost every tree
MAX_ROUNDS = 200_000  # fixed-point rounds before a recursive grammar is declared too slow
MAX_STATES = 100_000  # states of the split grammar (nonterminal x context) before refusing


@dataclass(frozen=True)
class Combination:
    """Rule `rule` used `kind` (under: as a child of; below: anywhere inside the subtree of) a
    node expanded with rule `parent`. Rules are indices into grammar.rules."""

    kind: str
    rule: int
    parent: int
    text: str  # canonical: "R under P" with both rules as rule_name writes them


# ---- names ---------------------------------------------------------------------------------
def rule_name(grammar: Grammar, r: int) -> str:
    """Rule r as `cfglab grammar show` writes it: "A -> B 'c'" (no probability)."""
    rule = grammar.rules[r]
    rhs = " ".join(
        _quote(grammar.symbol_name(s)) if grammar.is_terminal(s) else grammar.symbol_name(s)
        for s in rule.rhs
    )
    return f"{grammar.nonterminals[rule.lhs]} -> {rhs}"


def _tokens(text: str) -> list[tuple[str, str]]:
    """The grammar syntax's tokens of `text` (kind, value); 'bad' for anything it cannot read."""
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        out.append((m.lastgroup, m.group(m.lastgroup)))
    return out


def _rule_from_tokens(grammar: Grammar, toks: list[tuple[str, str]], where: str) -> int:
    """The index of the rule `LHS -> RHS` spelled by toks; ConfigError naming the rules that
    exist otherwise."""
    nt_index = {name: i for i, name in enumerate(grammar.nonterminals)}
    t_index = {name: i + grammar.n_nt for i, name in enumerate(grammar.terminals)}
    shown = " ".join(_quote(v) if k in ("sq", "dq") else v for k, v in toks)
    if len(toks) < 3 or toks[0][0] != "nt" or toks[1][0] != "arrow":
        raise ConfigError(f"{where}: {shown!r} is not a rule: write it as LHS -> RHS")
    lhs = toks[0][1]
    if lhs not in nt_index:
        names = ", ".join(grammar.nonterminals[:30]) + (", ..." if grammar.n_nt > 30 else "")
        raise ConfigError(
            f"{where}: {lhs!r} is not a nonterminal of {grammar.name or 'the grammar'} "
            f"(nonterminals: {names}); `cfglab grammar show` prints its rules"
        )
    rhs = []
    for kind, value in toks[2:]:
        sym = t_index.get(value) if kind in ("sq", "dq") else nt_index.get(value)
        rhs.append(-1 if sym is None or kind not in ("nt", "sq", "dq") else sym)
    a = nt_index[lhs]
    for r in grammar.rules_of[a]:
        if grammar.rules[r].rhs == tuple(rhs):
            return r
    options = "; ".join(rule_name(grammar, r) for r in grammar.rules_of[a])
    raise ConfigError(
        f"{where}: {shown!r} is not a rule of {grammar.name or 'the grammar'}; the rules of "
        f"{lhs} are: {options} (terminals quoted, as `cfglab grammar show` prints them)"
    )


def parse_combination(grammar: Grammar, text: str, where: str = "data.exclude") -> Combination:
    """'RULE under RULE' or 'RULE below RULE' as a Combination (ConfigError naming the fix)."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: {text!r}: give a string 'RULE under RULE'")
    toks = _tokens(text)
    arrows = [i for i, (kind, _) in enumerate(toks) if kind == "arrow"]
    # the word sits just before the second rule's left-hand side: R1 ... WORD LHS2 -> ...
    word = toks[arrows[1] - 2][1] if len(arrows) == 2 and arrows[1] >= 4 else None
    if word not in KINDS or any(kind in ("bad", "bar", "prob") for kind, _ in toks):
        raise ConfigError(
            f"{where}: {text!r}: write two rules joined by 'under' (a child of) or 'below' "
            "(anywhere inside the subtree of), e.g. \"A -> 'a' under S -> A B\""
        )
    rule = _rule_from_tokens(grammar, toks[: arrows[1] - 2], where)
    parent = _rule_from_tokens(grammar, toks[arrows[1] - 1 :], where)
    canonical = f"{rule_name(grammar, rule)} {word} {rule_name(grammar, parent)}"
    return Combination(word, rule, parent, canonical)


def parse_combinations(
    grammar: Grammar, texts: Sequence[str], where: str = "data.exclude"
) -> tuple[Combination, ...]:
    """Every entry of a config list as a Combination, in order (ConfigError on the first bad)."""
    return tuple(parse_combination(grammar, t, f"{where}[{i}]") for i, t in enumerate(texts))


# ---- in the sampler -------------------------------------------------------------------------
class TreeWatch:
    """The combinations a tree filter looks for, tracked by the sampler (cfglab.data.sampler)
    generation by generation over a batch of m derivations: per node of the current
    generation, the rule its parent was expanded with and, per `below` combination, whether a
    node above it was expanded with that combination's parent rule. `hits` (m,) says which
    strings' trees contain a combination so far."""

    def __init__(self, combos: Sequence[Combination], m: int) -> None:
        self.under = [(c.parent, c.rule) for c in combos if c.kind == "under"]
        self.below = [(c.parent, c.rule) for c in combos if c.kind == "below"]
        self.parent_rule = np.full(m, -1, dtype=np.int64)  # (G,) -1 at the roots
        self.above = np.zeros((len(self.below), m), dtype=bool)  # (n_below, G)
        self.hits = np.zeros(m, dtype=bool)  # (m,) per string

    def expand(self, string, nt_pos, rule, n_children) -> None:
        """Note the combinations the nonterminal nodes at nt_pos meet by drawing `rule`, and
        pass their context to their children (the next generation, before filtering)."""
        parent = self.parent_rule[nt_pos]
        above = self.above[:, nt_pos]  # (n_below, M)
        met = np.zeros(nt_pos.size, dtype=bool)
        for p, r in self.under:
            met |= (parent == p) & (rule == r)
        for i, (_, r) in enumerate(self.below):
            met |= above[i] & (rule == r)
        self.hits[string[nt_pos[met]]] = True
        self.parent_rule = np.repeat(rule, n_children)
        for i, (p, _) in enumerate(self.below):
            above[i] |= rule == p
        self.above = np.repeat(above, n_children, axis=1)

    def keep(self, keep: np.ndarray) -> None:
        """Drop the next generation's nodes of abandoned strings (keep: (G,) bool)."""
        self.parent_rule = self.parent_rule[keep]
        self.above = self.above[:, keep]


# ---- the split grammar and its avoidance probabilities --------------------------------------
@dataclass
class _Split:
    """The grammar split into states; entry e is rule `rule[e]` of state `state[e]` whose
    nonterminal children are the states children[e] (padded with the unit state S)."""

    keys: list[tuple[int, frozenset, frozenset]]  # state -> (nt, forbidden rules, active below)
    state: np.ndarray  # (E,) state of each entry
    rule: np.ndarray  # (E,) grammar rule of each entry
    children: np.ndarray  # (E, K) child states, S (the unit) where the rule has fewer
    n_terminals: np.ndarray  # (E,) terminals on the entry's right-hand side


def _split(grammar: Grammar, combos: Sequence[Combination], always: Sequence[int] = ()) -> _Split:
    """States reachable from the root (the rules in `always` are forbidden everywhere)."""
    under: dict[int, set[int]] = {}  # parent rule -> rules forbidden at its children
    below = [c for c in combos if c.kind == "below"]
    for c in combos:
        if c.kind == "under":
            under.setdefault(c.parent, set()).add(c.rule)

    def key(nt: int, parent_rule: int, flags: frozenset) -> tuple[int, frozenset, frozenset]:
        banned = set(always) | under.get(parent_rule, set()) | {below[i].rule for i in flags}
        return (nt, frozenset(r for r in grammar.rules_of[nt] if r in banned), flags)

    keys = [key(0, -1, frozenset())]
    index = {keys[0]: 0}
    state, rule, children, n_term = [], [], [], []
    s = 0
    while s < len(keys):  # breadth-first over the states found so far
        nt, banned, flags = keys[s]
        for r in grammar.rules_of[nt]:
            if r in banned:
                continue
            inner = flags | {i for i, c in enumerate(below) if c.parent == r}
            kids = []
            for sym in grammar.rules[r].rhs:
                if grammar.is_terminal(sym):
                    continue
                k = key(sym, r, frozenset(inner))
                if k not in index:
                    if len(keys) >= MAX_STATES:
                        raise ConfigError(
                            f"the combinations split {grammar.name or 'the grammar'} into over "
                            f"{MAX_STATES:,} states: exclude fewer combinations"
                        )
                    index[k] = len(keys)
                    keys.append(k)
                kids.append(index[k])
            state.append(s)
            rule.append(r)
            children.append(kids)
            n_term.append(len(grammar.rules[r].rhs) - len(kids))
        s += 1
    width = max((len(k) for k in children), default=0)
    table = np.full((len(state), max(width, 1)), len(keys), dtype=np.int64)
    for e, kids in enumerate(children):
        table[e, : len(kids)] = kids
    return _Split(keys, np.array(state, np.int64), np.array(rule, np.int64), table,
                  np.array(n_term, np.int64))  # fmt: skip


def _times(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise product of length distributions (E, W) truncated at W (W = 1: no lengths)."""
    w = a.shape[1]
    if w == 1:
        return a * b
    out = np.zeros_like(a)
    for lag in range(w):  # out[:, n] = sum_lag a[:, lag] * b[:, n - lag]
        out[:, lag:] += a[:, lag : lag + 1] * b[:, : w - lag]
    return out


def _avoid(grammar: Grammar, sp: _Split, max_len: int | None) -> np.ndarray:
    """(S + 1, W) q per state (the last row the unit), W = max_len + 1 lengths or 1 (any)."""
    w = 1 if max_len is None else max_len + 1
    n_states = len(sp.keys)
    unit = np.zeros((1, w))
    unit[0, 0] = 1.0
    q = np.zeros((n_states + 1, w))
    q[n_states] = unit
    probs = np.array([grammar.rules[r].prob for r in sp.rule])[:, None]  # (E, 1)
    lengths = np.arange(w)
    for _ in range(MAX_ROUNDS):
        value = np.repeat(unit, len(sp.rule), axis=0)  # (E, W)
        for k in range(sp.children.shape[1]):
            value = _times(value, q[sp.children[:, k]])
        if w > 1:  # each terminal adds one token: shift right by n_terminals
            src = lengths[None, :] - sp.n_terminals[:, None]
            value = np.where(src >= 0, np.take_along_axis(value, np.maximum(src, 0), 1), 0.0)
        new = np.zeros_like(q)
        np.add.at(new, sp.state, probs * value)
        new[n_states] = unit
        if np.array_equal(new, q) or np.max(np.abs(new - q)) <= 1e-15:
            return new
        q = new
    raise ConfigError(
        f"the avoidance probabilities of {grammar.name or 'the grammar'} did not converge in "
        f"{MAX_ROUNDS:,} rounds (a recursive grammar near its critical point): set data.max_len"
    )


def avoid_prob(
    grammar: Grammar,
    combos: Sequence[Combination],
    max_len: int | None = None,
    always: Sequence[int] = (),
) -> float:
    """P(a tree avoids every combination and every rule in `always`, and its string has length
    <= max_len)."""
    sp = _split(grammar, combos, always)
    return float(_avoid(grammar, sp, max_len)[0].sum())


def heldout_mass(
    grammar: Grammar, combos: Sequence[Combination], max_len: int | None = None
) -> float:
    """P(the tree of a string drawn from the grammar (length <= max_len) contains a combination):
    the share of the grammar's strings the training stream rejects. Exact."""
    total = avoid_prob(grammar, (), max_len)
    return 1.0 - avoid_prob(grammar, combos, max_len) / total


def part_shares(
    grammar: Grammar, combos: Sequence[Combination], max_len: int | None = None
) -> dict[str, float]:
    """For each rule a combination names: the share of the kept trees (those avoiding every
    combination) that use it at least once. Exact."""
    kept = avoid_prob(grammar, combos, max_len)
    rules = dict.fromkeys(r for c in combos for r in (c.rule, c.parent))
    return {
        rule_name(grammar, r): 1.0 - avoid_prob(grammar, combos, max_len, always=[r]) / kept
        for r in rules
    }


def check_combinations(
    grammar: Grammar, texts: Sequence[str], max_len: int | None = None, where: str = "data.exclude"
) -> tuple[Combination, ...]:
    """The combinations of a config list, refused (ConfigError) when a name is not a rule, a
    combination never occurs (nothing to hold out), they would reject over MAX_MASS of the
    strings, or a rule of theirs is no longer used on its own (under MIN_PART_SHARE of the kept
    trees: the model could not learn the parts)."""
    combos = parse_combinations(grammar, texts, where)
    name = grammar.name or "the grammar"
    for i, c in enumerate(combos):
        if heldout_mass(grammar, [c], max_len) <= 0.0:
            raise ConfigError(
                f"{where}[{i}]: {c.text!r} never occurs in a tree of {name} (the nonterminal of "
                f"the first rule is never {'a child' if c.kind == 'under' else 'below a node'} of"
                " the second): nothing would be held out; name a combination that occurs"
            )
    mass = heldout_mass(grammar, combos, max_len)
    if mass > MAX_MASS:
        raise ConfigError(
            f"{where}: the combinations occur in {mass:.2%} of the trees of {name}: the training"
            " stream would reject almost every string; exclude rarer combinations"
        )
    for rule, share in part_shares(grammar, combos, max_len).items():
        if share < MIN_PART_SHARE:
            raise ConfigError(
                f"{where}: rule {rule!r} is used by only {share:.3g} of the trees kept once the "
                f"combinations are excluded (at least {MIN_PART_SHARE:g} needed): each part must "
                "still be seen on its own; exclude a narrower combination"
            )
    return combos


# ---- the training distribution as a grammar --------------------------------------------------
def conditioned_grammar(grammar: Grammar, combos: Sequence[Combination]) -> Grammar:
    """The grammar conditioned on trees that avoid every combination, as a PCFG over the states
    (module docstring), with the same terminals (so token ids agree). No length cap: with
    data.max_len, P_train(x) = P(x) of this grammar / its P(length <= max_len)."""
    if not combos:
        return grammar
    sp = _split(grammar, combos)
    q = _avoid(grammar, sp, None)[:, 0]
    n_states = len(sp.keys)
    probs = np.array([grammar.rules[r].prob for r in sp.rule])
    value = probs * np.prod(q[sp.children], axis=1)  # (E,) p(r) * prod q(children)
    keep = value > 0
    # states still reachable from the root through kept entries, numbered in order found
    reach, order = {0}, [0]
    for s in order:
        for e in np.flatnonzero(keep & (sp.state == s)):
            for c in sp.children[e]:
                if c < n_states and c not in reach:
                    reach.add(int(c))
                    order.append(int(c))
    new_id = {s: i for i, s in enumerate(sorted(reach))}
    n_new = len(new_id)
    names, used = [], set(grammar.nonterminals)
    for s in sorted(reach):
        nt, banned, flags = sp.keys[s]
        base = grammar.nonterminals[nt]
        name = base if not banned and not flags else f"{base}~{s}"
        while name in used and name != base:
            name += "~"
        used.add(name)
        names.append(name)
    rules = []
    for e in np.flatnonzero(keep):
        s = int(sp.state[e])
        if s not in reach:
            continue
        kids = iter(sp.children[e])
        rhs = tuple(
            sym - grammar.n_nt + n_new if grammar.is_terminal(sym) else new_id[int(next(kids))]
            for sym in grammar.rules[sp.rule[e]].rhs
        )
        rules.append(Rule(new_id[s], rhs, float(value[e] / q[s])))
    rules.sort(key=lambda r: r.lhs)  # stable: each state's rules keep the grammar's order
    label = f"{grammar.name or 'grammar'} without {len(combos)} combination(s)"
    return Grammar(tuple(names), grammar.terminals, tuple(rules), name=label)
