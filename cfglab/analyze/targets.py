"""What a probe reads off each token, for any grammar: the probe family's targets (6b).

`TARGETS` are the probes built from a labelled batch's tree tables (cfglab.data.tree: ancestors,
ends and depths by depth level, which are a layered grammar's levels), one entry each: a new
target is one function and one registry line. A target gives one or more `Target`s: a class
label per token, the number of classes (fixed by the grammar, so train and test strings agree),
the qualifiers that tell its probes apart (`{"level": 2}`, `{"label": "NP"}`), and the tokens
a restricted-window probe (the paper's diagonal probes, scored at NT ends only) is scored on.

- ancestor / boundary (layered grammars, the paper's): the level-l NT ancestor of each token,
  and whether the token ends its level-l subtree, one probe per level below the root;
- end_label / ends / depth (any grammar): the label of the smallest constituent ending at each
  token ("none" where none ends), "a constituent of label A ends here" (one probe per label),
  and the number of constituents above each token;
- rule (layered grammars, opt-in): the index of the rule the token's level-l ancestor chose
  (level 0: the root's), what metadata conditioning names (cfglab.data.metadata);
- block / offset (a language beyond context-free, cfglab.languages, which has no tree): the
  segment a token is in (aⁿbⁿcⁿ: a, b or c; ww: the first or the second w) and its position
  within the segment, from the language's own labels; block's restricted windows are scored at
  each segment's last token, the language's analogue of an NT end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cfglab.data.sampler import strict_levels
from cfglab.data.tree import TreeLabels, tree_labels
from cfglab.grammar.cfg import Grammar

MAX_DEPTH_CLASS = 16  # the depth target's classes: 1..15 and "16 or deeper"


@dataclass
class Target:
    """One probe's labels on a batch."""

    target: str  # the TARGETS name
    column: dict  # qualifiers of this probe within its target: {"level": 2}, {"label": "NP"}
    y: np.ndarray  # (N,) int64 class of every token
    n_classes: int  # fixed by the grammar
    at_ends: np.ndarray | None  # (N,) bool: where a restricted-window probe is scored; None:
    # the target is not probed through restricted windows (it would be trivial there)


def _ancestor(grammar: Grammar, tl: TreeLabels) -> list[Target]:
    out = []
    for lev in range(1, tl.n_levels):  # the root (level 0) is constant
        index = {a: i for i, a in enumerate(grammar.levels[lev])}
        lookup = np.array([index.get(a, 0) for a in range(grammar.n_nt)], dtype=np.int64)
        y = lookup[tl.ancestor[lev]]
        out.append(Target("ancestor", {"level": lev}, y, len(index), tl.is_boundary[lev]))
    return out


def _boundary(grammar: Grammar, tl: TreeLabels) -> list[Target]:
    return [
        Target("boundary", {"level": lev}, tl.is_boundary[lev].astype(np.int64), 2, None)
        for lev in range(1, tl.n_levels)
    ]


def _end_label(grammar: Grammar, tl: TreeLabels) -> list[Target]:
    return [Target("end_label", {}, tl.end_label, grammar.n_nt + 1, tl.end_label < grammar.n_nt)]


def _ends(grammar: Grammar, tl: TreeLabels) -> list[Target]:
    return [
        Target("ends", {"label": grammar.nonterminals[a]}, tl.ends[a].astype(np.int64), 2, None)
        for a in range(1, grammar.n_nt)  # the start symbol ends exactly at the last token
    ]


def _depth(grammar: Grammar, tl: TreeLabels) -> list[Target]:
    y = np.minimum(tl.token_depth, MAX_DEPTH_CLASS) - 1  # 1 node above (the root alone) -> 0
    return [Target("depth", {}, y, MAX_DEPTH_CLASS, None)]


def _rule(grammar: Grammar, batch) -> list[Target]:
    from cfglab.data.metadata import rule_labels

    tl = tree_labels(grammar, batch)
    labels = rule_labels(grammar, batch, tl.subtree)  # (L, N) the ancestor's rule index
    n_rules = max(len(r) for r in grammar.rules_of)
    return [
        Target("rule", {"level": lev}, labels[lev], n_rules, tl.is_boundary[lev])
        for lev in range(tl.n_levels)
    ]


def _block(lang, batch) -> list[Target]:
    block = batch.labels["block"]
    last = np.ones(len(block), bool)  # a segment's last token: the next differs or a string ends
    last[:-1] = block[:-1] != block[1:]
    last[batch.offsets[1:-1] - 1] = True
    return [Target("block", {}, block, lang.label_classes["block"], last)]


def _offset(lang, batch) -> list[Target]:
    return [Target("offset", {}, batch.labels["offset"], lang.label_classes["offset"], None)]


def _is_cfg(grammar) -> bool:
    return isinstance(grammar, Grammar)


def _is_language(grammar) -> bool:
    return not isinstance(grammar, Grammar)


def _layered(grammar: Grammar) -> bool:
    """Every token has an ancestor at every level (the sampler's per-level labels exist)."""
    return _is_cfg(grammar) and strict_levels(grammar) is not None


@dataclass(frozen=True)
class TargetSpec:
    build: Callable[[Grammar, TreeLabels], list[Target]]  # a language's: (language, its batch)
    supports: Callable[[Grammar], bool]  # the grammar has this target
    default: Callable[[Grammar], bool]  # probed when probe.targets is null
    about: str  # one line for the report
    reads_batch: bool = False  # build takes (grammar, the labelled batch), not its TreeLabels


def _never(grammar: Grammar) -> bool:
    return False


def _not_layered(grammar: Grammar) -> bool:
    return _is_cfg(grammar) and not _layered(grammar)


# name -> spec; a new target is one function above and one line here
TARGETS: dict[str, TargetSpec] = {
    "ancestor": TargetSpec(_ancestor, _layered, _layered, "the level-l NT ancestor of each token"),
    "boundary": TargetSpec(_boundary, _layered, _layered, "the token ends its level-l subtree"),
    "end_label": TargetSpec(
        _end_label, _is_cfg, _not_layered, "the label of the smallest constituent ending here"
    ),
    "ends": TargetSpec(_ends, _is_cfg, _not_layered, "a constituent of label A ends here"),
    "depth": TargetSpec(_depth, _is_cfg, _not_layered, "the number of constituents above a token"),
    "rule": TargetSpec(
        _rule, _layered, _never, "the rule its level-l ancestor chose (metadata)", True
    ),
    "block": TargetSpec(_block, _is_language, _is_language, "the segment a token is in"),
    "offset": TargetSpec(_offset, _is_language, _is_language, "its position in the segment"),
}


def default_targets(grammar: Grammar) -> list[str]:
    """The targets probed when probe.targets is null."""
    return [name for name, spec in TARGETS.items() if spec.default(grammar)]


def build_targets(grammar: Grammar, batch, names: list[str]) -> list[Target]:
    """Every probe of the named targets on a labelled batch, in TARGETS order per name."""
    if _is_language(grammar):  # no tree: the language's own labels
        return [t for name in names for t in TARGETS[name].build(grammar, batch)]
    tl = tree_labels(grammar, batch)
    return [
        t
        for name in names
        for t in TARGETS[name].build(grammar, batch if TARGETS[name].reads_batch else tl)
    ]
