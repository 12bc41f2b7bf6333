"""A grammar conditioned on the rules chosen at the top of the derivation: the exact reference of
metadata conditioning (Higuchi et al. 2025, arXiv 2504.17562), where a training string is
preceded by tokens naming the rules its tree chose at the top level(s).

`choices[d]` lists, left to right, the rule chosen at every nonterminal node of depth d (the root
is depth 0: one choice), each as its index among its nonterminal's rules (the order of
`Grammar.rules_of`, as `cfglab grammar show` prints them)::

    g1 = condition(g, [[1]])             # the root expanded by its second rule
    g2 = condition(g, [[1], [0, 2, 0]])  # ... and its three nonterminal children by these rules

The conditioned grammar derives exactly the trees of g that make these choices, each with
probability P_g(tree) / P_g(choices): a chosen node becomes a fresh nonterminal with its one rule
at probability 1, and everything below the last conditioned depth is g's own. Its terminals are
g's, in g's order, so every exact algorithm (cfglab.exact) gives the distribution *given* the
metadata with the same token ids: `inside.next_token_dist(condition(g, m), x)` is
P(next | x, metadata m).
"""

from __future__ import annotations

from collections.abc import Sequence

from cfglab.errors import GrammarError
from cfglab.grammar.cfg import Grammar, Rule


def condition(grammar: Grammar, choices: Sequence[Sequence[int]]) -> Grammar:
    """The grammar of g's trees that choose `choices` at depths 0, 1, ... (see the module)."""
    # chosen nodes, breadth first: (nonterminal of g, rule index of g); node 0 is the root
    nodes: list[tuple[int, int]] = []
    frontier = [0]  # g's nonterminals at the current depth, left to right
    for depth, chosen in enumerate(choices):
        if len(chosen) != len(frontier):
            raise GrammarError(
                f"metadata names {len(chosen)} rules at depth {depth}, where the choices above "
                f"leave {len(frontier)} nonterminals: give {len(frontier)}"
            )
        nxt = []
        for a, j in zip(frontier, chosen, strict=True):
            if not 0 <= j < len(grammar.rules_of[a]):
                raise GrammarError(
                    f"{grammar.nonterminals[a]} has {len(grammar.rules_of[a])} rules: rule index "
                    f"{j} at depth {depth} does not exist (give 0..{len(grammar.rules_of[a]) - 1})"
                )
            ri = grammar.rules_of[a][j]
            nodes.append((a, ri))
            nxt += [s for s in grammar.rules[ri].rhs if not grammar.is_terminal(s)]
        frontier = nxt
    return _specialised(grammar, nodes, n_last=len(choices[-1]) if choices else 0)


def _specialised(grammar: Grammar, nodes: list[tuple[int, int]], n_last: int) -> Grammar:
    """Fresh nonterminals 0..len(nodes)-1 for the chosen nodes (breadth-first, so a node's
    nonterminal children are the next unused ids), then g's nonterminals that the deepest chosen
    nodes reach, renumbered in g's order."""
    if not nodes:
        return grammar
    n_fresh = len(nodes)
    reached = _reachable_from(grammar, [s for _, ri in nodes[-n_last:] for s in _nts(grammar, ri)])
    old_to_new = {a: n_fresh + k for k, a in enumerate(sorted(reached))}
    terminal_shift = n_fresh + len(reached) - grammar.n_nt  # terminal ids follow the nonterminals
    rules = []
    next_child = 1
    for k, (_, ri) in enumerate(nodes):
        rhs = []
        for s in grammar.rules[ri].rhs:
            if grammar.is_terminal(s):
                rhs.append(s + terminal_shift)
            elif k < n_fresh - n_last:  # a conditioned child: the next fresh node
                rhs.append(next_child)
                next_child += 1
            else:
                rhs.append(old_to_new[s])
        rules.append(Rule(k, tuple(rhs), 1.0))
    for a in sorted(reached):
        for ri in grammar.rules_of[a]:
            r = grammar.rules[ri]
            rhs = tuple(
                s + terminal_shift if grammar.is_terminal(s) else old_to_new[s] for s in r.rhs
            )
            rules.append(Rule(old_to_new[a], rhs, r.prob))
    names = [f"{grammar.nonterminals[a]}#{k}" for k, (a, _) in enumerate(nodes)]
    return Grammar(
        nonterminals=tuple(names + [grammar.nonterminals[a] for a in sorted(reached)]),
        terminals=grammar.terminals,
        rules=tuple(rules),
        name=f"{grammar.name or 'grammar'} | {len(nodes)} chosen rules",
    )


def _nts(grammar: Grammar, ri: int) -> list[int]:
    return [s for s in grammar.rules[ri].rhs if not grammar.is_terminal(s)]


def _reachable_from(grammar: Grammar, start: list[int]) -> set[int]:
    seen, stack = set(start), list(start)
    while stack:
        for ri in grammar.rules_of[stack.pop()]:
            for s in _nts(grammar, ri):
                if s not in seen:
                    seen.add(s)
                    stack.append(s)
    return seen


def choices_of(grammar: Grammar, tree, depth: int) -> list[list[int]]:
    """The metadata of a derivation tree (a `cfglab.exact.cyk.Tree`: nodes with `nt` and
    `children`, leaves token ids 1..T): per depth 0..depth-1, the rule index each nonterminal
    node chose, left to right (the inverse of `condition`)."""
    out: list[list[int]] = []
    level = [tree]
    for _ in range(depth):
        out.append([_rule_index(grammar, node) for node in level])
        level = [c for node in level for c in node.children if not isinstance(c, int)]
    return out


def _rule_index(grammar: Grammar, node) -> int:
    rhs = tuple(c - 1 + grammar.n_nt if isinstance(c, int) else c.nt for c in node.children)
    for j, ri in enumerate(grammar.rules_of[node.nt]):
        if grammar.rules[ri].rhs == rhs:
            return j
    raise GrammarError(f"a tree node of {grammar.nonterminals[node.nt]} matches none of its rules")
