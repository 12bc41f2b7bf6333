"""Independent oracles for tests: deliberately simple, slow, obviously-correct reference code.

Nothing here is used by the library; tests compare the fast code against these.
"""

from __future__ import annotations

import itertools
import random

from cfglab.grammar.cfg import Grammar


def sample_recursive(grammar: Grammar, rng: random.Random, max_depth: int = 10_000) -> list[str]:
    """One string by plain pre-order recursion (the authors' generator, generalised)."""

    def expand(sym: int, depth: int) -> list[str]:
        if grammar.is_terminal(sym):
            return [grammar.symbol_name(sym)]
        if depth > max_depth:
            raise RecursionError("derivation too deep")
        rules = grammar.rules_of[sym]
        ri = rng.choices(rules, weights=[grammar.rules[r].prob for r in rules])[0]
        return [tok for s in grammar.rules[ri].rhs for tok in expand(s, depth + 1)]

    return expand(0, 0)


def nltk_grammar(grammar: Grammar):
    """The same grammar as an nltk.CFG (read from cfglab's own text output)."""
    import nltk

    return nltk.CFG.fromstring(grammar.to_text())


def nltk_accepts(nltk_cfg, tokens: list[str]) -> bool:
    """Membership by NLTK's chart parser (the reference recognizer)."""
    import nltk

    parser = nltk.ChartParser(nltk_cfg)
    try:
        return next(iter(parser.parse(tokens)), None) is not None
    except ValueError:  # a token that is not a terminal of the grammar
        return False


def all_strings(grammar: Grammar, max_len: int) -> dict[tuple[str, ...], float]:
    """Brute force: every string of length <= max_len with its total probability (sum over
    derivations), by expanding leftmost derivations. For tiny grammars only."""
    out: dict[tuple[str, ...], float] = {}
    stack = [((0,), 1.0)]  # sentential form, probability
    while stack:
        form, p = stack.pop()
        n_terminals = sum(1 for s in form if grammar.is_terminal(s))
        if len(form) > max_len or n_terminals > max_len:  # no epsilon rules: forms never shrink
            continue
        i = next((k for k, s in enumerate(form) if not grammar.is_terminal(s)), None)
        if i is None:
            key = tuple(grammar.symbol_name(s) for s in form)
            out[key] = out.get(key, 0.0) + p
            continue
        for ri in grammar.rules_of[form[i]]:
            r = grammar.rules[ri]
            stack.append((form[:i] + r.rhs + form[i + 1:], p * r.prob))
    return out


def all_token_strings(terminals: tuple[str, ...], max_len: int):
    """Every string over `terminals` of length 1..max_len."""
    for n in range(1, max_len + 1):
        yield from itertools.product(terminals, repeat=n)
