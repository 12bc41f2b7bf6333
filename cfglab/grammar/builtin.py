"""Built-in grammars: the paper's cfg3 family, the random-CFG recipe, and name-or-file loading.

The cfg3 family is read from the authors' own JSON release (facebookresearch/PhysicsLM4,
`data-synthetic-pretrain/Lano-cfg/configs`, Apache-2.0; see `files/README.md`). The format is
layered: `all[level][k].children` lists the rules of symbol k of `level`, each rule a list of
indices into level+1. Worked example (cfg3b, the root and level 1)::

    idx[0] = [22]            all[0][0].children = [[2, 1], [1, 0]]
    idx[1] = [19, 20, 21]    so the root's rules are 22 -> 21 20 | 20 19, each with p = 1/2

cfglab names each nonterminal by the authors' id ("22") and each terminal by its id ('1'..'3'),
so `cfglab grammar show cfg3f` reads like the paper's figure, and token ids equal the authors'.
"""

from __future__ import annotations

import json
from importlib import resources
from math import perm
from pathlib import Path

import numpy as np

from cfglab.errors import GrammarError
from cfglab.grammar.cfg import Grammar, Rule

# random_cfg draws at most this many right-hand-side symbols (a few seconds of Python)
MAX_RANDOM_SYMBOLS = 5_000_000

# name -> one-line description; every entry is a file `files/<name>.json`
BUILTIN_GRAMMARS: dict[str, str] = {
    "cfg3b": "paper; 2 rules per NT, no repeated symbol in a rule; unambiguous (easiest)",
    "cfg3i": "paper; 2 rules per NT",
    "cfg3h": "paper; 2-3 rules per NT",
    "cfg3g": "paper; 3 rules per NT",
    "cfg3f": "paper; 3-4 rules per NT (the paper's hard showcase)",
    "cfg3e1": "paper; wide levels 1,3,9,27,81,27 and 9 terminals",
    "cfg3e2": "paper; wide levels 1,3,9,27,27,9 and 4 terminals",
    "cfg3j": "PhysicsLM4 'Lano'; one level deeper, 3 rules per NT",
    "cfg3k": "PhysicsLM4 'Lano'; one level deeper, 3-4 rules per NT",
}


def grammar_from_authors_json(data: dict, name: str = "") -> Grammar:
    """Convert the authors' layered JSON format into a Grammar (uniform rule probabilities)."""
    try:
        idx = data["idx"]
        symbols = data["all"]
        n_levels = len(idx)
        if n_levels < 2 or not idx[0]:
            raise ValueError("'idx' needs a level of nonterminals above the terminals")
        nt_levels = [[str(i) for i in level] for level in idx[:-1]]
        terminals = [str(i) for i in sorted(idx[-1])]
        nt_names = [s for level in nt_levels for s in level]
        nt_id = {s: i for i, s in enumerate(nt_names)}
        t_id = {s: len(nt_names) + i for i, s in enumerate(terminals)}
        rules = []
        for lev in range(n_levels - 1):
            below = [str(i) for i in idx[lev + 1]]
            for k, node in enumerate(symbols[lev]):
                a = nt_id[str(idx[lev][k])]
                children = node["children"]
                if not children or any(not child for child in children):
                    raise ValueError(f"'all'[{lev}][{k}] has an empty rule or no rules")
                for child in children:
                    if any(type(c) is not int or not 0 <= c < len(below) for c in child):
                        raise IndexError(f"'all'[{lev}][{k}] names a child outside level {lev + 1}")
                    rhs = tuple(
                        t_id[below[c]] if lev + 1 == n_levels - 1 else nt_id[below[c]]
                        for c in child
                    )
                    rules.append(Rule(a, rhs, 1.0 / len(children)))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise GrammarError(
            f"{name or 'grammar JSON'}: not in the authors' layered format "
            f"(missing or bad field {exc}); see cfglab/grammar/builtin.py"
        ) from None
    return Grammar(tuple(nt_names), tuple(terminals), tuple(rules), name=name)


def load(name_or_path: str | Path) -> Grammar:
    """A built-in grammar by name, a grammar file (NLTK text syntax, or the authors' JSON), or
    else a language beyond context-free by its spec ('copy alphabet=3': cfglab.languages),
    which stands where a grammar does wherever a stage needs only sampling and exact
    probabilities."""
    name = str(name_or_path)
    if name in BUILTIN_GRAMMARS:
        text = resources.files("cfglab.grammar").joinpath("files", f"{name}.json").read_text()
        return grammar_from_authors_json(json.loads(text), name=name)
    path = Path(name)
    try:
        exists = path.exists()
    except OSError as exc:  # a name the file system refuses (over 255 bytes, ...)
        raise GrammarError(f"cannot use {name[:60]!r} as a grammar file ({exc.strerror})") from None
    if not exists:
        # imported here: the languages cost ~10 ms of start-up to commands that never use them
        from cfglab.languages import LANGUAGES, is_language_spec, load_language

        if is_language_spec(name):
            return load_language(name)
        hint = ", ".join(BUILTIN_GRAMMARS)
        raise GrammarError(
            f"unknown grammar {name!r}: give a built-in name ({hint}), the path of a grammar "
            f"file, or a language ({', '.join(LANGUAGES)}, e.g. 'copy alphabet=3')"
        )
    if path.is_dir():
        raise GrammarError(f"{name} is a directory: give a grammar file (NLTK CFG/PCFG text)")
    if not path.is_file():  # a pipe or a device: reading could block or never end
        raise GrammarError(
            f"{name} is not a regular file: give a grammar file (NLTK CFG/PCFG text)"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise GrammarError(
            f"{name}: not a text file (not UTF-8); a grammar file is NLTK CFG/PCFG text, "
            "e.g. S -> A 'b'"
        ) from None
    except OSError as exc:
        raise GrammarError(
            f"cannot read {name} ({exc.strerror or exc}): give a readable file"
        ) from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GrammarError(
                f"{name}: invalid JSON ({exc}); a .json grammar must be in the "
                "authors' layered format"
            ) from None
        g = grammar_from_authors_json(data, name=path.stem)
        # a user's file gets the text reader's checks (duplicates, dead symbols, terminals)
        return Grammar.from_text(g.to_text(), name=path.stem, source=name)
    return Grammar.from_text(text, name=path.stem, source=name)


def random_cfg(
    sizes: tuple[int, ...] = (1, 3, 3, 3, 3, 3, 3),
    rules_per_nt: tuple[int, int] = (2, 3),
    rule_len: tuple[int, int] = (2, 3),
    distinct_symbols_in_rule: bool = False,
    distinct_rules_per_level: bool = True,
    seed: int = 0,
    name: str = "",
) -> Grammar:
    """A random layered CFG by the authors' recipe (`CFG_Config.build_graph` in PhysicsLM4).

    `sizes` = symbols per level from the root (1) down to the terminals. Each nonterminal gets
    U{rules_per_nt} rules, each of U{rule_len} symbols drawn uniformly from the next level.
    `distinct_symbols_in_rule` (the authors' `disallow_duplicate_sym`, used for cfg3b) redraws a
    symbol already in the rule; `distinct_rules_per_level` (`disallow_duplicate_seq`) redraws a
    rule that an NT of the same level already has. Uniform rule probabilities. Seeded with
    NumPy (the authors' generator is unseeded, so their exact draws cannot be reproduced).
    Nonterminals that no rule above happens to use are dropped (rare for the paper's sizes),
    so the grammar has no dead rules.
    """
    sizes = tuple(int(s) for s in sizes)
    _check_recipe(sizes, rules_per_nt, rule_len, distinct_symbols_in_rule, seed)
    rng = np.random.default_rng(seed)
    recipe = (rules_per_nt, rule_len, distinct_symbols_in_rule, distinct_rules_per_level)
    level_rules = []  # [level][k] -> the rules of symbol k (indices into the next level)
    for lev in range(len(sizes) - 1):
        _check_capacity(lev, sizes, *recipe)  # so that redrawing duplicates terminates
        level_rules.append(_draw_level(rng, sizes[lev], sizes[lev + 1], *recipe))
    g = grammar_from_authors_json(_authors_json(sizes, level_rules), name=name or f"random-{seed}")
    return _drop_unreachable(g)


def _check_recipe(
    sizes: tuple[int, ...],
    rules_per_nt: tuple[int, int],
    rule_len: tuple[int, int],
    distinct_symbols_in_rule: bool,
    seed: int,
) -> None:
    """GrammarError for a recipe that cannot be drawn, or not in bounded time."""
    if len(sizes) < 2 or sizes[0] != 1 or min(sizes) < 1:
        raise GrammarError(
            f"random_cfg: sizes {sizes} must start with 1 (the root) and list at "
            "least one more level, all >= 1"
        )
    lo, hi = rules_per_nt
    llo, lhi = rule_len
    if not (1 <= lo <= hi and 1 <= llo <= lhi):
        raise GrammarError(
            f"random_cfg: need 1 <= min <= max for rules_per_nt {rules_per_nt} "
            f"and rule_len {rule_len}"
        )
    if llo == 1 and len(sizes) > 2 and lhi == 1:
        raise GrammarError("random_cfg: rules of length 1 only would make every string one token")
    if isinstance(seed, int) and seed < 0:
        raise GrammarError(f"random_cfg: seed {seed} is negative: give a seed >= 0")
    # every rule is drawn symbol by symbol in Python: bound the work before starting
    most = sum(sizes[:-1]) * hi * lhi
    if most > MAX_RANDOM_SYMBOLS:
        raise GrammarError(
            f"random_cfg: up to {most:,} right-hand-side symbols ({sum(sizes[:-1]):,} "
            f"nonterminals x {hi} rules x {lhi} symbols), more than {MAX_RANDOM_SYMBOLS:,}: "
            "lower the level sizes, rules_per_nt or rule_len"
        )
    if distinct_symbols_in_rule and lhi > min(sizes[1:]):
        raise GrammarError(
            f"random_cfg: rules of length {lhi} cannot have distinct symbols "
            f"with a level of {min(sizes[1:])} symbols; lower rule_len"
        )


def _check_capacity(
    lev: int,
    sizes: tuple[int, ...],
    rules_per_nt: tuple[int, int],
    rule_len: tuple[int, int],
    distinct_symbols_in_rule: bool,
    distinct_rules_per_level: bool,
) -> None:
    """GrammarError if level `lev` may need more distinct rules than exist over the next level
    (then redrawing duplicates would never end)."""
    below = sizes[lev + 1]
    most = rules_per_nt[1]  # rules of one nonterminal, at most
    needed = sizes[lev] * most if distinct_rules_per_level else most
    capacity = 0  # summed only until it covers the need: below**n grows fast
    for n in range(rule_len[0], rule_len[1] + 1):
        capacity += perm(below, n) if distinct_symbols_in_rule else below**n
        if capacity >= needed:
            break
    if needed > capacity:
        raise GrammarError(
            f"random_cfg: level {lev} needs up to {needed} distinct rules but "
            f"only {capacity} exist; lower rules_per_nt or raise sizes"
        )


def _draw_level(
    rng: np.random.Generator,
    n_symbols: int,
    below: int,
    rules_per_nt: tuple[int, int],
    rule_len: tuple[int, int],
    distinct_symbols_in_rule: bool,
    distinct_rules_per_level: bool,
) -> list[list[tuple[int, ...]]]:
    """The rules of each of a level's `n_symbols` nonterminals: right-hand sides of indices
    into the `below` symbols of the next level, duplicates redrawn as the recipe says."""
    lo, hi = rules_per_nt
    llo, lhi = rule_len
    seen: set[tuple[int, ...]] = set()  # this level's rules so far
    per_nt = []
    for _ in range(n_symbols):
        rules: list[tuple[int, ...]] = []
        for _ in range(int(rng.integers(lo, hi + 1))):
            while True:
                length = int(rng.integers(llo, lhi + 1))
                rhs: list[int] = []
                while len(rhs) < length:
                    s = int(rng.integers(0, below))
                    if not (distinct_symbols_in_rule and s in rhs):
                        rhs.append(s)
                if tuple(rhs) not in seen and (distinct_rules_per_level or rhs not in rules):
                    break
            rules.append(tuple(rhs))
            if distinct_rules_per_level:
                seen.add(tuple(rhs))
        per_nt.append(rules)
    return per_nt


def _authors_json(
    sizes: tuple[int, ...], level_rules: list[list[list[tuple[int, ...]]]]
) -> dict[str, list]:
    """The drawn rules in the authors' layered JSON format, numbered as they number symbols:
    terminals 1..T, then (after the EOS, MASK and SEP ids) each level up to the root last."""
    n_levels = len(sizes)
    next_id = 1
    ids_per_level: list[list[int]] = [[] for _ in sizes]
    for lev in reversed(range(n_levels)):
        ids_per_level[lev] = list(range(next_id, next_id + sizes[lev]))
        next_id += sizes[lev] + (3 if lev == n_levels - 1 else 0)  # skip EOS, MASK, SEP ids
    symbols = [
        [{"children": [list(r) for r in level_rules[lev][k]]} for k in range(sizes[lev])]
        for lev in range(n_levels - 1)
    ] + [[{"children": None} for _ in range(sizes[-1])]]
    return {"idx": ids_per_level, "all": symbols}


def _drop_unreachable(g: Grammar) -> Grammar:
    """Remove nonterminals that the start symbol cannot reach (possible when a level could not
    be fully connected), renumbering the rest."""
    reach = {0}
    frontier = [0]
    while frontier:
        a = frontier.pop()
        for ri in g.rules_of[a]:
            for s in g.rules[ri].rhs:
                if not g.is_terminal(s) and s not in reach:
                    reach.add(s)
                    frontier.append(s)
    if len(reach) == g.n_nt:
        return g
    keep = sorted(reach)
    new = {a: i for i, a in enumerate(keep)}
    shift = g.n_nt - len(keep)
    rules = tuple(
        Rule(new[r.lhs], tuple(new[s] if s < g.n_nt else s - shift for s in r.rhs), r.prob)
        for r in g.rules
        if r.lhs in reach
    )
    return Grammar(tuple(g.nonterminals[a] for a in keep), g.terminals, rules, name=g.name)


def file_description(path: str | Path) -> str:
    """A grammar file's description: its first comment line (`# ...`) before any rule, as the
    built-ins' one-line descriptions ('' if it has none)."""
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip().startswith("#"):
                return line.strip().lstrip("#").strip()
            if line.strip():
                break
    return ""
