"""The `cfglab grammar` command: list, show, check, random and implicit grammars (see cli.py for
the dispatch table; errors become exit codes in cli.main)."""

from __future__ import annotations

import argparse
import sys
import warnings

from cfglab.cli_tools import _write_lines
from cfglab.errors import GrammarWarning


def add_grammar(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="the built-in grammars: name, levels, NTs, rules, mean length")
    show = sub.add_parser("show", help="print a grammar in NLTK syntax")
    show.add_argument("grammar", help="built-in name or grammar file")
    check = sub.add_parser("check", help="validate a grammar file")
    check.add_argument("grammar", help="grammar file (NLTK CFG/PCFG syntax)")
    rnd = sub.add_parser("random", help="a random layered CFG by the paper's recipe")
    rnd.add_argument(
        "--levels",
        type=int,
        nargs="+",
        default=[1, 3, 3, 3, 3, 3, 3],
        help="symbols per level from the root (1) to the terminals",
    )
    rnd.add_argument(
        "--rules",
        type=int,
        nargs=2,
        default=[2, 3],
        metavar=("MIN", "MAX"),
        help="rules per nonterminal",
    )
    rnd.add_argument(
        "--length",
        type=int,
        nargs=2,
        default=[2, 3],
        metavar=("MIN", "MAX"),
        help="symbols per rule",
    )
    rnd.add_argument(
        "--distinct-symbols",
        action="store_true",
        help="no symbol twice in one rule (the paper's cfg3b)",
    )
    rnd.add_argument("--seed", type=int, default=0)
    rnd.add_argument("-o", "--output", help="write here instead of stdout")
    imp = sub.add_parser(
        "implicit", help="an implicit CFG: each terminal emits a token from its bag (Result 10)"
    )
    imp.add_argument("grammar", help="built-in name or grammar file")
    imp.add_argument("--mode", default="disjoint", help="bags: disjoint (default) or overlap")
    imp.add_argument("--tokens", type=int, required=True, help="observable tokens 1..V")
    imp.add_argument("--weights", default="uniform", help="within a bag: uniform or nu1")
    imp.add_argument("--seed", type=int, default=0, help="seeds the overlap bags")
    imp.add_argument("-o", "--output", help="write here instead of stdout")


def run_grammar(args: argparse.Namespace) -> int:
    from cfglab.grammar import BUILTIN_GRAMMARS, Grammar, load, random_cfg

    if args.action == "list":
        print(
            f"{'name':8} {'levels':>6} {'NTs':>5} {'rules':>6} {'terminals':>9} {'mean len':>9}"
            "  description"
        )
        for name, desc in BUILTIN_GRAMMARS.items():
            g = load(name)
            print(
                f"{name:8} {len(g.levels) + 1:>6} {g.n_nt:>5} {len(g.rules):>6} {g.n_t:>9} "
                f"{g.mean_length:>9.1f}  {desc}"
            )
    elif args.action == "show":
        print(load(args.grammar).to_text(), end="")
    elif args.action == "check":
        if args.grammar in BUILTIN_GRAMMARS:
            g = load(args.grammar)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", GrammarWarning)
                g = load(args.grammar)
            for w in caught:
                print(f"cfglab: warning: {w.message}", file=sys.stderr)
        from cfglab.data.sampler import check_length
        from cfglab.errors import SamplingError

        layered = f"layered, {len(g.levels) + 1} levels" if g.levels else "not layered"
        print(
            f"{args.grammar}: ok ({g.n_nt} nonterminals, {g.n_t} terminals, {len(g.rules)} "
            f"rules, {layered}, length mean {g.mean_length:.4g} sd {g.length_sd:.4g})"
        )
        try:  # usable, but not without a length cap: say so now rather than at `sample`
            check_length(g)
        except SamplingError as exc:
            print(f"cfglab: warning: {exc}", file=sys.stderr)
    elif args.action == "random":
        from cfglab.data.lines import check_output_file

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
        _write_lines(text.splitlines(), args.output)
    elif args.action == "implicit":
        from cfglab.grammar import make_implicit

        g = make_implicit(load(args.grammar), args.mode, args.tokens, args.weights, args.seed)
        text = g.to_text()
        Grammar.from_text(text)  # what we write must read back
        _write_lines(text.splitlines(), args.output)
    return 0
