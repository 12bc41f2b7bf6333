"""Stage 1: grammars (no torch). `load(name_or_path)` is the one entry point."""

from cfglab.grammar.builtin import BUILTIN_GRAMMARS, load, random_cfg
from cfglab.grammar.cfg import Grammar, Rule

__all__ = ["BUILTIN_GRAMMARS", "Grammar", "Rule", "load", "random_cfg"]
