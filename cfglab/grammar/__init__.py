"""Stage 1: grammars (no torch). `load(name_or_path)` is the one entry point."""

from cfglab.grammar.builtin import BUILTIN_GRAMMARS, load, random_cfg
from cfglab.grammar.cfg import Grammar, Rule
from cfglab.grammar.implicit import IMPLICIT_MODES, IMPLICIT_WEIGHTS, implicit_bags, make_implicit

__all__ = [
    "BUILTIN_GRAMMARS",
    "IMPLICIT_MODES",
    "IMPLICIT_WEIGHTS",
    "Grammar",
    "Rule",
    "implicit_bags",
    "load",
    "make_implicit",
    "random_cfg",
]
