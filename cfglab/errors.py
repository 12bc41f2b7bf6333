"""Every error cfglab raises on purpose: one root class, one subclass per kind of bad input.

Library code raises these with a message that names the problem *and the fix*; only `cli.py`
turns them into `cfglab: error: ...` and an exit code. Anything else escaping is a bug.
"""

import difflib
from collections.abc import Iterable


class CfglabError(Exception):
    """Root of all deliberate cfglab errors. The message is shown to the user as is."""


class GrammarError(CfglabError):
    """A grammar file or grammar name that cannot be used (syntax, undefined symbols, ...)."""


class GrammarWarning(UserWarning):
    """A grammar that is usable but probably not what was meant (e.g. an unreachable rule)."""


class VocabError(CfglabError):
    """A token that is not in the vocabulary (e.g. a prompt with an unknown terminal)."""


class SamplingError(CfglabError):
    """Sampling could not produce strings within the requested limits."""


class ConfigError(CfglabError):
    """A config file or override with an unknown key, a wrong type or an invalid value."""


class CheckpointError(CfglabError):
    """A checkpoint or run directory that is missing, incomplete or corrupt."""


class ExactError(CfglabError):
    """A string or grammar too large for the exact algorithms' time or memory bounds."""


class PathError(CfglabError):
    """An input file or output path that cannot be used as given (missing, a folder, encoding)."""


def did_you_mean(name: str, choices: Iterable) -> str:
    """' (did you mean 'x'?)' for the choice closest to a mistyped name, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
