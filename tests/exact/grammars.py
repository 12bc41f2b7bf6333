"""Hand-written and random test grammars for the exact stage (shared by its test modules)."""

from __future__ import annotations

from cfglab.grammar.builtin import random_cfg
from cfglab.grammar.cfg import Grammar

# finite language: unary rules (S -> C, A -> D), ambiguity (S -> A B and S -> C -> A B derive
# the same strings), a terminal inside a long rule; every sentence has <= 4 tokens
FINITE = Grammar.from_text(
    """
    S -> A B [0.4] | B A [0.2] | C [0.3] | 'a' 'b' 'c' [0.1]
    A -> 'a' [0.5] | 'a' 'b' [0.3] | D [0.2]
    B -> 'b' [0.6] | 'b' 'c' [0.4]
    C -> A B [0.7] | 'c' [0.3]
    D -> 'c' 'a' [1.0]
    """,
    name="finite",
)
FINITE_MAX_LEN = 4

# infinite: binary recursion, left recursion (A -> A 'a'), center embedding, unary S -> A
RECURSIVE = Grammar.from_text(
    """
    S -> S S [0.2] | 'a' [0.3] | A [0.2] | 'b' S 'c' [0.3]
    A -> 'b' [0.5] | A 'a' [0.3] | S 'c' [0.2]
    """,
    name="recursive",
)

# left recursion only, unambiguous: deep trees and long strings with a closed-form probability
LEFT_RECURSIVE = Grammar.from_text(
    """
    S -> S A [0.6] | A [0.4]
    A -> 'a' [0.7] | 'b' 'b' [0.3]
    """,
    name="left-recursive",
)

# heavy ambiguity: every bracketing of binary and ternary splits
AMBIGUOUS = Grammar.from_text(
    "S -> S S [0.3] | S S S [0.1] | 'a' [0.4] | 'b' [0.2]", name="ambiguous"
)

# tiny layered grammars by the paper's recipe, small enough to enumerate (finite languages)
TINY_LAYERED = {
    "tiny-unary": random_cfg(sizes=(1, 2, 2, 2), rules_per_nt=(2, 3), rule_len=(1, 2), seed=1),
    "tiny-3": random_cfg(sizes=(1, 3, 2), rules_per_nt=(2, 3), rule_len=(2, 3), seed=2),
}
TINY_MAX_LEN = 9

HAND_WRITTEN = {"finite": FINITE, "recursive": RECURSIVE, "ambiguous": AMBIGUOUS}
FINITE_GRAMMARS = {"finite": (FINITE, FINITE_MAX_LEN)} | {
    name: (g, TINY_MAX_LEN) for name, g in TINY_LAYERED.items()
}
