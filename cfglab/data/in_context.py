"""Grammars learned in context: every window draws a fresh grammar of a family, then strings of it.

With `data.in_context` set, the model never sees one fixed grammar: window j of step s of split
`split` is built from its own grammar, a pure function of (data.seed, split, s, j), and holds
strings of that grammar only, packed as every stream is (`BOS x EOS BOS x EOS ...`, cut at the
window's end). To predict a string well the model must infer the window's grammar from the
strings before it: in-context learning of a formal language. Worked example (K = 2, terminals
1..3, BOS = 0, EOS = 4, window length 12)::

    window j: grammar G_j = family(seed_j);  strings s1 = [2 1 3], s2 = [3 3], s3 = [1 2 2 1] ~ G_j
    tokens    0 2 1 3 4 0 3 3 4 0 1 2         (s3 cut at the window's end)

Families (`GRAMMAR_FAMILIES`; every member has the run grammar's terminals, so one vocabulary
serves all windows):

- ``random``: the paper's random-CFG recipe (cfglab.grammar.builtin.random_cfg) with the
  block's `levels`, `rules` and `length`; its terminals are '1'..'T' (T = levels[-1]), which
  must be grammar.name's terminals (the run's vocabulary, e.g. cfg3b's '1' '2' '3').
- ``permute``: grammar.name itself with its terminals relabelled by a random permutation and,
  for a layered grammar, the rule sets of each level's nonterminals (below the root) dealt to
  them in a random order; the shapes of the rules stay the base grammar's.

Strings: round 0 draws K + 1 strings (`strings_per_window` K, plus the one the evaluation asks
the model to generate after them), later rounds K each until the window is full, every draw
keyed by (seed, split, step, j, IN_CONTEXT_PURPOSE, round + 1), strings longer than
data.max_len redrawn. The window's first K + 1 strings are therefore those `window_strings`
gives: what training sees is what the evaluation (cfglab.evaluate.in_context) scores on other
keys. Only the windows asked for are built, and each grammar (with its compiled tables, cached
on the object) is dropped once its window is: memory stays that of one window.

The tensor edge (`InContextStream`, batches for the training loop) is in cfglab.data.dataset;
this module is torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cfglab.config.schema import IN_CONTEXT_FAMILY_NAMES, registry
from cfglab.data.sampler import check_length, sample
from cfglab.data.vocab import BOS, Vocab
from cfglab.errors import CfglabError, ConfigError
from cfglab.grammar.builtin import random_cfg
from cfglab.grammar.cfg import Grammar, Rule
from cfglab.seeds import key_seed

IN_CONTEXT_PURPOSE = 0x69636C67  # "iclg": keys every draw of an in-context window
EVAL_SPLIT = 2  # the evaluation's windows: a split no training or validation window uses


@dataclass(frozen=True)
class InContextSpec:
    """data.in_context as plain values (and data.max_len, the longest string drawn)."""

    family: str
    levels: tuple[int, ...]
    rules: tuple[int, int]
    length: tuple[int, int]
    strings_per_window: int  # K
    max_len: int

    @classmethod
    def from_config(cls, cfg) -> InContextSpec:
        """The spec of an ExperimentConfig whose data.in_context is set."""
        ic = cfg.data.in_context
        return cls(
            ic.family,
            tuple(ic.levels),
            tuple(ic.rules),
            tuple(ic.length),
            ic.strings_per_window,
            cfg.data.max_len,
        )


# ---- the families ------------------------------------------------------------------------------
def _random_grammar(spec: InContextSpec, base: Grammar, seed: int) -> Grammar:
    return random_cfg(spec.levels, spec.rules, spec.length, seed=seed, name=f"in-context-{seed}")


def _permuted_grammar(spec: InContextSpec, base: Grammar, seed: int) -> Grammar:
    """`base` with terminals relabelled and, per level below the root, rule sets dealt anew."""
    rng = np.random.default_rng(seed)
    n_nt = base.n_nt
    relabel = n_nt + rng.permutation(base.n_t)  # (T,) new symbol of each terminal
    source = np.arange(n_nt)  # nt a takes the rules of nt source[a]
    for level in (base.levels or ())[1:]:
        members = np.array(level)
        source[members] = members[rng.permutation(len(members))]
    rules = []
    for a in range(n_nt):
        for ri in base.rules_of[int(source[a])]:
            r = base.rules[ri]
            rhs = tuple(int(relabel[s - n_nt]) if s >= n_nt else s for s in r.rhs)
            rules.append(Rule(a, rhs, r.prob))
    return Grammar(base.nonterminals, base.terminals, tuple(rules), name=f"permuted-{seed}")


# data.in_context.family -> (spec, the run's grammar, seed) -> the window's grammar
GRAMMAR_FAMILIES: dict[str, Callable[[InContextSpec, Grammar, int], Grammar]] = registry(
    IN_CONTEXT_FAMILY_NAMES,
    {"random": _random_grammar, "permute": _permuted_grammar},
    "GRAMMAR_FAMILIES",
)


def window_grammar(
    spec: InContextSpec, base: Grammar, seed: int, split: int, step: int, j: int
) -> Grammar:
    """The grammar of window j of step `step` (a pure function of its arguments)."""
    return GRAMMAR_FAMILIES[spec.family](
        spec, base, key_seed(seed, split, step, j, IN_CONTEXT_PURPOSE, 0)
    )


# ---- windows -----------------------------------------------------------------------------------
def _draw(
    spec: InContextSpec, g: Grammar, n: int, key: tuple[int, ...], r: int
) -> list[np.ndarray]:
    seed = key_seed(*key, IN_CONTEXT_PURPOSE, r + 1)
    return sample(g, n, seed, max_len=spec.max_len, labels=False).strings()


def window_strings(
    spec: InContextSpec, base: Grammar, seed: int, split: int, step: int, j: int
) -> tuple[Grammar, list[np.ndarray]]:
    """Window j's grammar and its first K + 1 strings (token ids 1..T), those every window
    of that key opens with."""
    g = window_grammar(spec, base, seed, split, step, j)
    return g, _draw(spec, g, spec.strings_per_window + 1, (seed, split, step, j), 0)


def window_tokens(
    spec: InContextSpec, base: Grammar, seed: int, split: int, step: int, j: int, length: int
) -> np.ndarray:
    """Window j of step `step`: `length` tokens of its grammar's packed strings. (length,) int64."""
    eos = Vocab.from_grammar(base).eos
    g, strings = window_strings(spec, base, seed, split, step, j)
    parts, have, r = [], 0, 0
    while True:
        for x in strings:
            parts.append(np.concatenate([[BOS], x, [eos]]))
            have += len(x) + 2
        if have >= length:
            return np.concatenate(parts)[:length].astype(np.int64)
        r += 1
        strings = _draw(spec, g, spec.strings_per_window, (seed, split, step, j), r)


def window_batch(
    spec: InContextSpec,
    base: Grammar,
    seed: int,
    split: int,
    step: int,
    first: int,
    n: int,
    length: int,
) -> np.ndarray:
    """Windows first .. first + n - 1 of step `step`. (n, length) int64."""
    rows = [
        window_tokens(spec, base, seed, split, step, j, length) for j in range(first, first + n)
    ]
    return np.stack(rows)


# ---- checks ------------------------------------------------------------------------------------
def check_in_context(cfg, base: Grammar) -> InContextSpec:
    """ConfigError, before any work, for a data.in_context block that cannot run: its family's
    terminals differ from the run grammar's, no data.max_len, K strings and a completion that
    do not fit the window, a recipe that cannot be drawn. Returns the spec."""
    if cfg.data.max_len is None:
        raise ConfigError(
            "data.in_context needs data.max_len (the longest string drawn), so that K strings "
            "and the completion of one more fit the window: set e.g. data.max_len=26"
        )
    spec = InContextSpec.from_config(cfg)
    k, block = spec.strings_per_window, cfg.model.block_size
    room = (block + 1) // (k + 1) - 2
    if (k + 1) * (spec.max_len + 2) - 1 > block:
        raise ConfigError(
            f"data.in_context: {k} strings of up to data.max_len={spec.max_len} tokens and one "
            f"more to generate need {(k + 1) * (spec.max_len + 2) - 1} positions, more than "
            f"model.block_size {block}: lower data.max_len to {max(room, 0)} or "
            "strings_per_window, or raise block_size"
        )
    for name in ("rules", "length"):
        pair = getattr(spec, name)
        if len(pair) != 2 or pair[0] > pair[1]:
            raise ConfigError(f"data.in_context.{name} {list(pair)}: give [min, max], min <= max")
    if spec.family == "random":
        _check_random(spec, base)
    j = 0
    try:  # the first windows: a recipe that cannot be drawn fails here, not later
        for j in range(4):
            check_length(window_grammar(spec, base, cfg.data.seed, 0, 0, j), spec.max_len)
            window_strings(spec, base, cfg.data.seed, 0, 0, j)
    except CfglabError as exc:  # GrammarError, SamplingError: the family's own message
        raise ConfigError(f"data.in_context (window {j} of step 0): {exc}") from None
    return spec


# what a run with data.in_context cannot do: each needs the one fixed grammar of grammar.name
# (a tree of it, its rules, its exact distribution), which no window of such a run follows
FIXED_GRAMMAR_NEEDS = {
    "the analyze stage (probes by NT ancestor and attention by level need one fixed grammar)": (
        lambda cfg, stages: "analyze" in stages
    ),
    "the intervene stage (it erases one fixed grammar's tree labels)": (
        lambda cfg, stages: "intervene" in stages
    ),
    "the dynamics stage (it measures KL, probes and attention against one fixed grammar)": (
        lambda cfg, stages: "dynamics" in stages
    ),
    "data.dataset (a saved dataset holds one grammar's strings)": (
        lambda cfg, stages: bool(cfg.data.dataset)
    ),
    "data.sampler physicslm4 (the authors' stream of one grammar)": (
        lambda cfg, stages: cfg.data.sampler != "fast"
    ),
    "data.noise (perturbs strings by one grammar's rules)": (
        lambda cfg, stages: cfg.data.noise.fraction > 0
    ),
    "data.exclude (rule combinations of one grammar)": lambda cfg, stages: bool(cfg.data.exclude),
    "eval.compositions (rule combinations of one grammar)": (
        lambda cfg, stages: bool(cfg.eval.compositions)
    ),
    "eval.corrupt (repairs prompts by one grammar)": (
        lambda cfg, stages: "eval" in stages and bool(cfg.eval.corrupt)
    ),
}


def check_stages(cfg, base, stages) -> None:
    """ConfigError, before any work, for a run with data.in_context asked to do something that
    needs one fixed grammar (FIXED_GRAMMAR_NEEDS) or given a language beyond context-free; then
    check_in_context. The eval stage runs the in_context family only (cfglab.evaluate.run)."""
    if not isinstance(base, Grammar):
        raise ConfigError(
            f"data.in_context needs a context-free grammar.name (its vocabulary, permute's "
            f"base), and {base.name!r} is a language beyond context-free: drop one of them"
        )
    for what, asked in FIXED_GRAMMAR_NEEDS.items():
        if asked(cfg, stages):
            raise ConfigError(
                f"{what} does not combine with data.in_context, where every window has its own "
                "grammar: drop it for this run (stages: train, eval, report)"
            )
    check_in_context(cfg, base)


def _check_random(spec: InContextSpec, base: Grammar) -> None:
    n_t = spec.levels[-1] if spec.levels else 0
    names = tuple(str(i) for i in range(1, n_t + 1))  # random_cfg names terminals '1'..'T'
    if base.terminals != names:
        raise ConfigError(
            f"data.in_context family random draws grammars over the terminals "
            f"{' '.join(names)} (levels[-1] = {n_t}), but grammar.name {base.name!r} (the run's "
            f"vocabulary) has {' '.join(base.terminals[:10])}: set grammar.name to a grammar "
            f"over the same terminals (cfg3b for 3)"
        )
    shortest = spec.length[0] ** (len(spec.levels) - 1)
    if shortest > spec.max_len:
        raise ConfigError(
            f"data.in_context: the recipe's shortest string has {shortest} tokens, more than "
            f"data.max_len={spec.max_len}: raise data.max_len or lower length / levels"
        )
    mean = ((spec.length[0] + spec.length[1]) / 2) ** (len(spec.levels) - 1)
    if not math.isfinite(mean) or mean > 4 * spec.max_len:
        raise ConfigError(
            f"data.in_context: the recipe's strings average ~{mean:.0f} tokens, far above "
            f"data.max_len={spec.max_len} (most would be redrawn): raise data.max_len"
        )
