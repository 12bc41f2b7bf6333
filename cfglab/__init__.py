"""cfglab: a lab for "physics of language models" experiments on synthetic context-free grammars."""

__version__ = "0.1.0"
