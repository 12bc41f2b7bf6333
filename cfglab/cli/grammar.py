"""`cfglab grammar`: list, show, check, random and implicit grammars. Defaults come from the
config schema (RandomGrammarDefaults, ImplicitConfig)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from cfglab.cli.common import SEED, Bounded, config_range, write_lines
from cfglab.errors import GrammarWarning

# grammar random: each number's range (their product is bounded by random_cfg itself)
LEVEL_SIZE = Bounded(int, 1, 100_000)  # symbols in one level
RECIPE_COUNT = Bounded(int, 1, 1000)  # rules per nonterminal, symbols per rule


def add_grammar(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = sub.add_parser(
        "list", help="the built-in grammars (and files under PATH): levels, NTs, rules, mean length"
    )
    lst.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="also list these grammar files, or every *.cfg in these folders (configs/grammars)",
    )
    show = sub.add_parser("show", help="print a grammar in NLTK syntax")
    show.add_argument("grammar", help="built-in name or grammar file")
    check = sub.add_parser("check", help="validate a grammar file")
    check.add_argument("grammar", help="grammar file (NLTK CFG/PCFG syntax)")
    _add_random(sub.add_parser("random", help="a random layered CFG by the paper's recipe"))
    _add_implicit(
        sub.add_parser(
            "implicit",
            help="an implicit CFG: each terminal emits a token from its bag (Result 10)",
        )
    )


def _add_random(rnd: argparse.ArgumentParser) -> None:
    from cfglab.config.schema import RandomGrammarDefaults  # here: only this command loads it

    d = RandomGrammarDefaults()
    rnd.add_argument(
        "--levels",
        type=LEVEL_SIZE,
        nargs="+",
        default=d.levels,
        help="symbols per level from the root (1) to the terminals",
    )
    rnd.add_argument(
        "--rules",
        type=RECIPE_COUNT,
        nargs=2,
        default=d.rules,
        metavar=("MIN", "MAX"),
        help="rules per nonterminal",
    )
    rnd.add_argument(
        "--length",
        type=RECIPE_COUNT,
        nargs=2,
        default=d.length,
        metavar=("MIN", "MAX"),
        help="symbols per rule",
    )
    rnd.add_argument(
        "--distinct-symbols",
        action="store_true",
        help="no symbol twice in one rule (the paper's cfg3b)",
    )
    rnd.add_argument("--seed", type=SEED, default=d.seed)
    rnd.add_argument("-o", "--output", help="write here instead of stdout")


def _add_implicit(imp: argparse.ArgumentParser) -> None:
    from cfglab.config.schema import ImplicitConfig

    d = ImplicitConfig()
    imp.add_argument("grammar", help="built-in name or grammar file")
    imp.add_argument("--mode", default=d.mode, help=f"bags: {d.mode} (default) or overlap")
    imp.add_argument(
        "--tokens",
        type=config_range(int, "grammar.implicit.tokens"),
        required=True,
        help="observable tokens 1..V",
    )
    imp.add_argument("--weights", default=d.weights, help="within a bag: uniform or nu1")
    imp.add_argument("--seed", type=SEED, default=d.seed, help="seeds the overlap bags")
    imp.add_argument("-o", "--output", help="write here instead of stdout")


def run_grammar(args: argparse.Namespace) -> int:
    {"list": _list, "show": _show, "check": _check, "random": _random, "implicit": _implicit}[
        args.action
    ](args)
    return 0


def _list(args: argparse.Namespace) -> None:
    from cfglab.grammar import BUILTIN_GRAMMARS, load
    from cfglab.grammar.builtin import file_description

    # every file is loaded before the first line is printed: a bad one is an error, not a
    # half-printed table
    rows = [(name, load(name), desc) for name, desc in BUILTIN_GRAMMARS.items()]
    rows += [(str(f), load(str(f)), file_description(f)) for f in _grammar_files(args.paths)]
    width = max(8, *(len(name) for name, _, _ in rows))
    print(
        f"{'name':{width}} {'levels':>6} {'NTs':>5} {'rules':>6} {'terminals':>9} {'mean len':>9}"
        "  description"
    )
    for name, g, desc in rows:
        levels = "-" if g.levels is None else str(len(g.levels) + 1)
        print(
            f"{name:{width}} {levels:>6} {g.n_nt:>5} {len(g.rules):>6} {g.n_t:>9} "
            f"{g.mean_length:>9.1f}  {desc}"
        )


def _grammar_files(paths: list[str]) -> list[Path]:
    """The grammar files PATHs name: a file itself, a folder's *.cfg sorted by name."""
    from cfglab.errors import GrammarError

    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.cfg"))
            if not found:
                raise GrammarError(f"{p} holds no *.cfg grammar file: give a folder that does")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise GrammarError(f"{p} does not exist: give a grammar file or a folder of them")
    return files


def _show(args: argparse.Namespace) -> None:
    from cfglab.grammar import load

    print(load(args.grammar).to_text(), end="")


def _check(args: argparse.Namespace) -> None:
    from cfglab.data.sampler import check_length
    from cfglab.errors import SamplingError
    from cfglab.grammar import BUILTIN_GRAMMARS, Grammar, load

    if args.grammar in BUILTIN_GRAMMARS:
        g = load(args.grammar)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GrammarWarning)
            g = load(args.grammar)
        for w in caught:
            print(f"cfglab: warning: {w.message}", file=sys.stderr)
    if not isinstance(g, Grammar):  # a language beyond context-free (cfglab.languages)
        print(
            f"{args.grammar}: ok (a language beyond context-free: {g.spec}; {g.n_t} terminals, "
            f"length mean {g.mean_length:.4g} sd {g.length_sd:.4g})"
        )
        return
    layered = f"layered, {len(g.levels) + 1} levels" if g.levels else "not layered"
    print(
        f"{args.grammar}: ok ({g.n_nt} nonterminals, {g.n_t} terminals, {len(g.rules)} "
        f"rules, {layered}, length mean {g.mean_length:.4g} sd {g.length_sd:.4g})"
    )
    try:  # usable, but not without a length cap: say so now rather than at `sample`
        check_length(g)
    except SamplingError as exc:
        print(f"cfglab: warning: {exc}", file=sys.stderr)


def _random(args: argparse.Namespace) -> None:
    from cfglab.data.lines import check_output_file
    from cfglab.grammar import Grammar, random_cfg

    if args.output:
        check_output_file(args.output)
    g = random_cfg(
        sizes=tuple(args.levels),
        rules_per_nt=tuple(args.rules),
        rule_len=tuple(args.length),
        distinct_symbols_in_rule=args.distinct_symbols,
        seed=args.seed,
    )
    text = g.to_text()
    Grammar.from_text(text)  # what we write must read back
    write_lines(text.splitlines(), args.output)


def _implicit(args: argparse.Namespace) -> None:
    from cfglab.data.lines import check_output_file
    from cfglab.grammar import Grammar, load, make_implicit

    if args.output:
        check_output_file(args.output)
    g = make_implicit(load(args.grammar), args.mode, args.tokens, args.weights, args.seed)
    text = g.to_text()
    Grammar.from_text(text)  # what we write must read back
    write_lines(text.splitlines(), args.output)


COMMANDS = {"grammar": ("list, show, check and generate grammars", add_grammar, run_grammar)}
