"""Metadata conditioning (Higuchi et al. 2025, arXiv 2504.17562): a share of the training strings
are preceded by tokens naming the rules their derivation tree chose at given depths (stage 2).

Config ``data.metadata: {levels: [1], fraction: 0.5}``: a share `fraction` of the fresh training
strings carry, right after their BOS, one token per nonterminal node at each depth of `levels`
(the root is depth 0; a layered grammar's depth is its level), depth by depth and left to right
within a depth, each naming the rule its node chose by its index among the nonterminal's rules
(`Grammar.rules_of` order, as `cfglab grammar show` lists them). Worked example (quickstart
grammar, levels [0, 1]; the root 13 chose its rule 0 ``13 -> 10 12``, then 10 its rule 1 and 12
its rule 2)::

    BOS <m0:0> <m1:1> <m1:2> 3 2 2 2 ... EOS        (without metadata: BOS 3 2 2 2 ... EOS)

The model reads the metadata tokens but is never trained to predict them (their targets are
ignored: cfglab.train.objectives); the validation stream and the evaluation's plain families stay
metadata-free, so losses and accuracies compare with runs without metadata.

Token ids: one per (depth, rule index), `first + depth * R + j`, for depths 0..max(levels), where
first = T + 4 (after BOS, the terminals, EOS, MASK and PAD, whose ids never move: a run without
metadata is today's bit for bit, and the generator, which bans every id after EOS, never emits a
metadata token) and R is the most rules any nonterminal has. Why not one token per (depth,
nonterminal, rule index): the paper's metadata is a rule index per level, the vocabulary stays
small (R per depth), and with every depth above named the nonterminal a token refers to is
already determined by the tokens before it; with a gap (levels [1]: the root's rule unnamed) the
model must infer it, and the exact reference (`conditioned`) sums over the unnamed choices.

Randomness: which strings carry metadata is drawn with a seed the caller keys like the noise's
(dataset key + METADATA_PURPOSE), so the clean strings (their draws, their order) never change.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cfglab.data.batch import SampleBatch
from cfglab.data.vocab import BOS
from cfglab.errors import ConfigError, GrammarError
from cfglab.grammar.cfg import Grammar, Rule
from cfglab.grammar.condition import condition

METADATA_PURPOSE = 0x6D657461  # "meta": the seed-key part of the carriers' draw
MAX_COMBINATIONS = 4096  # unnamed rule choices above the deepest named depth the exact sum takes


@dataclass(frozen=True)
class Metadata:
    """The metadata of a run: which depths are named, the share of strings that carry them."""

    grammar: Grammar
    levels: tuple[int, ...]  # sorted depths whose rule choices are named
    fraction: float = 1.0
    _lookup: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_rules(self) -> int:
        """R: the most rules any nonterminal has (token ids per depth)."""
        return max(len(r) for r in self.grammar.rules_of)

    @property
    def first_id(self) -> int:
        return self.grammar.n_t + 4  # cfglab.data.vocab: BOS, T terminals, EOS, MASK, PAD

    @property
    def n_tokens(self) -> int:
        return n_metadata_tokens(self.grammar, self.levels)

    def token_names(self) -> list[str]:
        """Names of the ids first_id .. first_id + n_tokens - 1."""
        r = self.n_rules
        return [f"<m{d}:{j}>" for d in range(max(self.levels) + 1) for j in range(r)]

    def tokens(self, choices: Sequence[Sequence[int]]) -> np.ndarray:
        """One string's metadata ids from its rule choices at depths 0..max(levels)."""
        r, first = self.n_rules, self.first_id
        ids = [first + d * r + j for d in self.levels for j in choices[d]]
        return np.asarray(ids, dtype=np.int64)

    def named(self, choices: Sequence[Sequence[int]]) -> dict[int, tuple[int, ...]]:
        """{depth: rule indices} of the named depths (the key of the conditioned grammar)."""
        return {d: tuple(choices[d]) for d in self.levels}

    def batch_choices(self, batch: SampleBatch) -> list[list[list[int]]]:
        """Per string of a labelled batch, its rule choices at depths 0..max(levels)."""
        return rule_choices(self.grammar, batch, max(self.levels) + 1)


def from_config(grammar: Grammar, settings) -> Metadata | None:
    """The Metadata of a config's data.metadata (a MetadataConfig); None when it is off."""
    if not settings.levels:
        return None
    return Metadata(grammar, tuple(sorted(settings.levels)), settings.fraction)


def model_vocab_size(grammar: Grammar, levels: Sequence[int]) -> int:
    """The model's vocabulary: Vocab's T + 4 ids, then the metadata ids (none without)."""
    return grammar.n_t + 4 + n_metadata_tokens(grammar, levels)


def n_metadata_tokens(grammar: Grammar, levels: Sequence[int]) -> int:
    """Ids the model's vocabulary adds for metadata at `levels` (0 without metadata)."""
    if not levels:
        return 0
    return max(len(r) for r in grammar.rules_of) * (max(levels) + 1)


def _rule_lookup(grammar: Grammar) -> dict[tuple[int, tuple[int, ...]], int]:
    """(lhs, rhs) -> the rule's index among its nonterminal's rules (the first of duplicates)."""
    out: dict[tuple[int, tuple[int, ...]], int] = {}
    for a, rules in enumerate(grammar.rules_of):
        for j, ri in enumerate(rules):
            out.setdefault((a, grammar.rules[ri].rhs), j)
    return out


def rule_choices(grammar: Grammar, batch: SampleBatch, depth: int) -> list[list[list[int]]]:
    """Per string of a batch drawn with labels=True, per depth 0..depth-1, the rule index each
    nonterminal node of that depth chose, left to right (cfglab.grammar.condition's `choices`).
    Read off the sampler's spans: a node's right-hand side is its child spans (depth + 1) and
    the tokens between them."""
    rows, offsets, node_depth = batch.span_rows, batch.span_offsets, batch.span_depth
    if rows is None:
        raise ValueError("rule_choices needs a SampleBatch sampled with labels=True")
    lookup = _rule_lookup(grammar)
    n_nt = grammar.n_nt
    out = []
    for i in range(len(batch)):
        tokens = batch.ids[batch.offsets[i] : batch.offsets[i + 1]]
        r = rows[offsets[i] : offsets[i + 1]]  # (K, 3) nt, start, end of this string's nodes
        d = node_depth[offsets[i] : offsets[i + 1]]
        per_depth = []
        for k in range(depth):
            kids = {int(s): (int(nt), int(e)) for nt, s, e in r[d == k + 1]}  # disjoint spans
            chosen = []
            for nt, s, e in r[d == k]:
                rhs, p = [], int(s)
                while p < e:
                    if p in kids:
                        rhs.append(kids[p][0])
                        p = kids[p][1]
                    else:  # a terminal: symbol id n_nt + token id - 1
                        rhs.append(n_nt + int(tokens[p]) - 1)
                        p += 1
                chosen.append(lookup[(int(nt), tuple(rhs))])
            per_depth.append(chosen)
        out.append(per_depth)
    return out


def rule_labels(grammar: Grammar, batch: SampleBatch, subtree: np.ndarray) -> np.ndarray:
    """(D, N) per depth d < D and token: the rule index its depth-d ancestor chose (-1: the
    token has no depth-d node), for a labelled batch and its (D, N) node ordinals `subtree`
    (cfglab.data.tree.TreeLabels.subtree): the probe target of metadata conditioning."""
    n_depth, n_tok = subtree.shape
    choices = rule_choices(grammar, batch, n_depth)
    string = np.repeat(np.arange(len(batch)), batch.lengths)  # (N,) string of each token
    out = np.full((n_depth, n_tok), -1, dtype=np.int64)
    for d in range(n_depth):
        per_string = [c[d] for c in choices]
        first = np.zeros(len(batch) + 1, dtype=np.int64)  # string i's depth-d nodes start here
        np.cumsum([len(c) for c in per_string], out=first[1:])
        flat = np.asarray([j for c in per_string for j in c], dtype=np.int64)
        has = subtree[d] >= 0
        out[d, has] = flat[first[string[has]] + subtree[d, has]]
    return out


def pack_with_metadata(
    batch: SampleBatch, eos: int, prefixes: Sequence[np.ndarray | None]
) -> np.ndarray:
    """Strings as one stream `BOS [m ...] x EOS BOS ...` (int64): string i carries prefixes[i]
    after its BOS (None or empty: none). With no prefix at all, cfglab.data.dataset.pack's."""
    parts = []
    for x, m in zip(batch.strings(), prefixes, strict=True):
        parts += [[BOS], m if m is not None else [], x, [eos]]
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


def carriers(n: int, fraction: float, seed: int) -> np.ndarray:
    """(n,) bool: which of n strings carry their metadata (each with probability `fraction`)."""
    return np.random.default_rng(seed).random(n) < fraction


def metadata_prefixes(meta: Metadata, batch: SampleBatch, seed: int) -> list[np.ndarray | None]:
    """The prefix of each string of a labelled batch: its metadata ids for carriers, else None."""
    carry = carriers(len(batch), meta.fraction, seed)
    choices = meta.batch_choices(batch)
    return [meta.tokens(c) if carry[i] else None for i, c in enumerate(choices)]


# ---- the exact reference: the grammar given the named choices -----------------------------------
def _combinations(grammar: Grammar, named: dict[int, Sequence[int]]) -> list[tuple[list, float]]:
    """Every choice sequence at depths 0..max(named) that agrees with `named`, with its
    probability (the product of its rules' probabilities)."""
    depth = max(named) + 1
    out: list[tuple[list, float]] = []

    def walk(d: int, frontier: list[int], chosen: list, weight: float) -> None:
        if d == depth:
            out.append((chosen, weight))
            return
        sizes = [len(grammar.rules_of[a]) for a in frontier]
        options = [named[d]] if d in named else itertools.product(*[range(s) for s in sizes])
        for js in options:
            if len(js) != len(frontier) or any(
                not 0 <= j < s for j, s in zip(js, sizes, strict=True)
            ):
                continue  # names more or fewer nodes than this tree has at depth d
            w, nxt = weight, []
            for a, j in zip(frontier, js, strict=True):
                rule = grammar.rules[grammar.rules_of[a][j]]
                w *= rule.prob
                nxt += [s for s in rule.rhs if not grammar.is_terminal(s)]
            walk(d + 1, nxt, [*chosen, list(js)], w)

    walk(0, [0], [], 1.0)
    return out


def conditioned(grammar: Grammar, named: dict[int, Sequence[int]]) -> Grammar:
    """The grammar given the named choices {depth: rule indices}: its trees that make them, each
    with probability P(tree) / P(named). With every depth 0..max named, exactly
    cfglab.grammar.condition; with a gap, a mixture over the unnamed choices above the deepest
    named depth (a fresh root whose rules start each agreeing choice sequence, weighted by its
    probability). Terminals in g's order, so exact algorithms give the same token ids."""
    if not named:
        return grammar
    combos = [(c, w) for c, w in _combinations(grammar, named) if w > 0]
    if not combos:
        raise GrammarError(f"metadata {named} names rules no derivation of the grammar makes")
    if len(combos) == 1:
        return condition(grammar, combos[0][0])
    return _mixture(grammar, combos)


def _mixture(grammar: Grammar, combos: list[tuple[list, float]]) -> Grammar:
    parts = [condition(grammar, c) for c, _ in combos]
    total = math.fsum(w for _, w in combos)
    fresh = [sum(len(d) for d in c) for c, _ in combos]  # each part's chosen nodes come first
    names = [f"{grammar.nonterminals[0]}#m"]
    base = []  # merged id of each part's fresh node 1
    for k, part in enumerate(parts):
        base.append(len(names))
        names += [f"{nm}@{k}" for nm in part.nonterminals[1 : fresh[k]]]
    shared = sorted(
        {
            grammar.nonterminals.index(nm)
            for k, p in enumerate(parts)
            for nm in p.nonterminals[fresh[k] :]
        }
    )
    shared_id = {grammar.nonterminals[a]: len(names) + i for i, a in enumerate(shared)}
    names += [grammar.nonterminals[a] for a in shared]
    n_nt = len(names)
    rules: list[Rule] = []
    seen_shared: set[str] = set()
    for k, part in enumerate(parts):

        def sym(s: int, part=part, k=k) -> int:
            if s >= part.n_nt:
                return n_nt + s - part.n_nt  # a terminal
            if s < fresh[k]:
                return base[k] + s - 1  # a chosen node (the root, 0, is never a child)
            return shared_id[part.nonterminals[s]]

        for r in part.rules:
            rhs = tuple(sym(s) for s in r.rhs)
            if r.lhs == 0:
                rules.append(Rule(0, rhs, combos[k][1] / total))
            elif r.lhs < fresh[k]:
                rules.append(Rule(sym(r.lhs), rhs, r.prob))
            elif part.nonterminals[r.lhs] not in seen_shared:
                rules.append(Rule(sym(r.lhs), rhs, r.prob))
        seen_shared |= set(part.nonterminals[fresh[k] :])
    rules.sort(key=lambda r: r.lhs)  # stable: each nonterminal's rules in their order
    return Grammar(
        nonterminals=tuple(names),
        terminals=grammar.terminals,
        rules=tuple(rules),
        name=f"{grammar.name or 'grammar'} | metadata over {len(combos)} rule choices",
    )


def combination_bound(grammar: Grammar, levels: Sequence[int]) -> int:
    """An upper bound on the choice sequences `conditioned` sums over for metadata at `levels`:
    R ** (nodes an unnamed depth can hold), multiplied over the unnamed depths above the
    deepest named one."""
    r = max(len(x) for x in grammar.rules_of)
    width = max(sum(1 for s in rule.rhs if not grammar.is_terminal(s)) for rule in grammar.rules)
    bound = 1
    for d in range(max(levels)):
        if d not in levels:
            bound *= r ** (max(width, 1) ** d)
            if bound > MAX_COMBINATIONS:
                break
    return bound


def check_metadata(cfg, grammar) -> None:
    """ConfigError, before any work (cfglab.stages.check_config), for a config's data.metadata
    and eval.metadata that cannot run: depths twice, eval depths the model has no tokens for,
    settings without clean fresh trees or next-token training, then `check_grammar`."""
    d, m, named = cfg.data, cfg.data.metadata, cfg.eval.metadata or []
    for key, levels in (("data.metadata.levels", m.levels), ("eval.metadata", named)):
        if len(set(levels)) != len(levels):
            raise ConfigError(f"{key} {levels}: give each depth once, e.g. [0, 1]")
    if named and (not m.levels or max(named) > max(m.levels)):
        raise ConfigError(
            f"eval.metadata {named} names depths the model has no metadata tokens for "
            f"(data.metadata.levels {m.levels}): train with data.metadata, or set "
            "eval.metadata=[]"
        )
    clashes = {
        f"data.dataset {d.dataset}": bool(d.dataset),
        f"data.sampler {d.sampler}": d.sampler != "fast",
        "data.noise.fraction > 0": d.noise.fraction > 0,
        "data.in_context": getattr(d, "in_context", None) is not None,
        f"train.objective {cfg.train.objective}": cfg.train.objective != "next_token",
    }
    for what, clash in clashes.items():
        if clash and m.levels:
            raise ConfigError(
                f"data.metadata reads the fast sampler's fresh trees and trains next-token "
                f"prediction on clean strings; {what} does not combine with it: drop one, or "
                "set data.metadata.levels=[]"
            )
    check_grammar(grammar, m.levels, m.fraction)


def check_grammar(grammar, levels: Sequence[int], fraction: float) -> None:
    """ConfigError for metadata at `levels` that cannot run on `grammar` (none: no check)."""
    if not levels:
        return
    if not isinstance(grammar, Grammar):
        raise ConfigError(
            f"data.metadata names rules of a derivation tree, and {grammar.name!r} is a language "
            "beyond context-free (no trees): set data.metadata.levels=[] for this run"
        )
    if not 0 < fraction <= 1:
        raise ConfigError(
            f"data.metadata.fraction {fraction}: give the share of training strings that carry "
            "metadata, in (0, 1]"
        )
    bound = combination_bound(grammar, levels)
    if bound > MAX_COMBINATIONS:
        above = sorted(set(range(max(levels))) - set(levels))
        raise ConfigError(
            f"data.metadata.levels {list(levels)} leaves depths {above} unnamed above depth "
            f"{max(levels)}: the exact conditioned distribution would sum over up to {bound:,} "
            f"rule choices (limit {MAX_COMBINATIONS}); name them too, e.g. levels: "
            f"{sorted(set(levels) | set(above))}"
        )
