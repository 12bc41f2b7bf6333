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

    parser = nltk.ChartParser(nltk_cfg, max_time=None)  # answer, never time out
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
            stack.append((form[:i] + r.rhs + form[i + 1 :], p * r.prob))
    return out


def all_token_strings(terminals: tuple[str, ...], max_len: int):
    """Every string over `terminals` of length 1..max_len."""
    for n in range(1, max_len + 1):
        yield from itertools.product(terminals, repeat=n)


def bruteforce_next_token_dist(grammar: Grammar, string: list[int], max_len: int):
    """Exact next-symbol distributions of a token-id string by enumeration, (n+1, T+1) numpy
    array: row k = P(next | first k tokens), column 0 = EOS, column j = token id j. The grammar's
    language must be finite with every string of length <= max_len (or the rest negligible)."""
    import numpy as np

    ids = {name: i + 1 for i, name in enumerate(grammar.terminals)}
    table = [(tuple(ids[t] for t in s), p) for s, p in all_strings(grammar, max_len).items()]
    n = len(string)
    rows = np.zeros((n + 1, grammar.n_t + 1))
    for k in range(n + 1):
        prefix = tuple(string[:k])
        for s, p in table:
            if s[:k] == prefix:
                rows[k, 0 if len(s) == k else s[k]] += p
        total = rows[k].sum()
        rows[k] = rows[k] / total if total > 0 else rows[k]
    return rows


def bruteforce_logprob_model(grammar: Grammar, max_len: int):
    """An oracle 'model' (evaluate.metrics.LogProbFn) from `bruteforce_next_token_dist`:
    vocabulary of T+4 ids, -inf outside EOS and the terminals."""
    import numpy as np

    t = grammar.n_t
    cols = np.concatenate([[t + 1], np.arange(1, t + 1)])

    def model(batch):
        out = []
        for seq in batch:
            rows = bruteforce_next_token_dist(grammar, [int(v) for v in seq[1:]], max_len)
            lq = np.full((len(seq), t + 4), -np.inf)
            with np.errstate(divide="ignore"):
                lq[:, cols] = np.log(rows)
            out.append(lq)
        return out

    return model


def nltk_chart_accepts(nltk_cfg, tokens: list[str]) -> bool:
    """Membership by NLTK's chart parser, read off the chart without extracting a tree.

    `nltk_accepts` extracts a tree, which NLTK refuses (ValueError, read there as "no") for
    long, highly ambiguous strings once the parse forest passes nltk.parse.chart.MAX_PARSE_TREES
    nodes; here a complete start-symbol edge over the whole input is the answer.
    """
    # the incremental left-corner chart parser: the fastest of NLTK's complete chart parsers on
    # cfg3 strings (~1.5x the default ChartParser), which makes the 10,000-string sweep feasible
    from nltk.parse.earleychart import IncrementalLeftCornerChartParser

    try:
        nltk_cfg.check_coverage(tokens)
    except ValueError:  # a token that is not a terminal of the grammar
        return False
    # max_time=None: NLTK's default 5 s wall-clock limit raises on long strings of a loaded
    # machine, and an oracle must answer rather than time out
    chart = IncrementalLeftCornerChartParser(nltk_cfg, max_time=None).chart_parse(tokens)
    return any(
        True for _ in chart.select(start=0, end=len(tokens), is_complete=True, lhs=nltk_cfg.start())
    )
