"""The `cfglab` tool commands that work on grammars and strings, not on a run's stages:
grammar, sample, corrupt, parse, prob, generate, data. Each is a pair (add its arguments, run it)
that `cli.COMMANDS` lists; library errors become exit codes in `cli.main`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from cfglab.errors import CfglabError, GrammarWarning


def _write_lines(lines, path: str | None) -> None:
    """Write lines to `path`, or to stdout (left open)."""
    if path:
        with open(path, "w") as f:
            f.writelines(line + "\n" for line in lines)
    else:
        sys.stdout.writelines(line + "\n" for line in lines)


def _read_lines(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise CfglabError(f"no such file: {path}; give a text file with one string per line")
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


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
        layered = f"layered, {len(g.levels) + 1} levels" if g.levels else "not layered"
        print(
            f"{args.grammar}: ok ({g.n_nt} nonterminals, {g.n_t} terminals, {len(g.rules)} "
            f"rules, {layered}, mean length {g.mean_length:.1f})"
        )
    elif args.action == "random":
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


def add_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("grammar", help="built-in name or grammar file")
    p.add_argument("-n", type=int, default=10, help="number of strings (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-len", type=int, default=None, help="resample strings longer than this many tokens"
    )
    p.add_argument(
        "--labels",
        action="store_true",
        help="JSON lines: tokens plus, per level, ancestor NT names and boundaries "
        "(layered grammars) or [nt, start, end] spans (other grammars)",
    )
    p.add_argument(
        "--compat",
        choices=["physicslm4"],
        help="physicslm4: the authors' generator's strings for --seed, seed for seed",
    )
    p.add_argument("-o", "--output", help="write here instead of stdout")


def run_sample(args: argparse.Namespace) -> int:
    if args.compat == "physicslm4":
        return _run_sample_physicslm4(args)
    import numpy as np

    from cfglab.data.sampler import sample
    from cfglab.grammar import load

    g = load(args.grammar)
    batch = sample(g, args.n, args.seed, max_len=args.max_len, labels=args.labels)
    names = np.array(["<bos>", *g.terminals], dtype=object)  # token id -> terminal name
    strings = [names[s].tolist() for s in batch.strings()]
    if not args.labels:
        _write_lines((" ".join(s) for s in strings), args.output)
        return 0
    lines = []
    if batch.ancestors is not None:  # layered: per-level labels
        level_names = [np.array([g.nonterminals[a] for a in lev], dtype=object) for lev in g.levels]
        for i, toks in enumerate(strings):
            a, b = batch.offsets[i], batch.offsets[i + 1]
            anc = [
                level_names[lev][batch.ancestors[lev, a:b]].tolist() for lev in range(len(g.levels))
            ]
            bnd = batch.is_boundary[:, a:b].astype(int).tolist()
            lines.append(json.dumps({"tokens": toks, "ancestors": anc, "boundaries": bnd}))
    else:
        for toks, spans in zip(strings, batch.spans, strict=True):
            rows = [[g.nonterminals[nt], int(s), int(e)] for nt, s, e in spans.tolist()]
            lines.append(json.dumps({"tokens": toks, "spans": rows}))
    _write_lines(lines, args.output)
    return 0


def _run_sample_physicslm4(args: argparse.Namespace) -> int:
    """`sample --compat physicslm4`: the first N strings of the authors' stream for --seed."""
    from cfglab.data.physicslm4 import sample_physicslm4
    from cfglab.grammar import load

    if args.max_len is not None:
        raise CfglabError(
            "--max-len does not combine with --compat physicslm4 (the authors' stream has no "
            "length cap): drop one of them"
        )
    g = load(args.grammar)
    batch = sample_physicslm4(g, args.n, args.seed, labels=args.labels)
    lines = []
    for i, s in enumerate(batch.strings()):
        toks = [g.terminals[t - 1] for t in s.tolist()]
        if not args.labels:
            lines.append(" ".join(toks))
        elif batch.ancestors is not None:  # layered: the same JSON lines as `sample --labels`
            lo, hi = batch.offsets[i], batch.offsets[i + 1]
            anc = [
                [g.nonterminals[lev[a]] for a in batch.ancestors[k, lo:hi].tolist()]
                for k, lev in enumerate(g.levels)
            ]
            bnd = batch.is_boundary[:, lo:hi].astype(int).tolist()
            lines.append(json.dumps({"tokens": toks, "ancestors": anc, "boundaries": bnd}))
        else:
            rows = [[g.nonterminals[nt], a, b] for nt, a, b in batch.spans[i].tolist()]
            lines.append(json.dumps({"tokens": toks, "spans": rows}))
    _write_lines(lines, args.output)
    return 0


def add_corrupt(p: argparse.ArgumentParser) -> None:
    from cfglab.data.noise import KINDS

    p.add_argument("file", help="strings, one per line, terminals separated by spaces")
    p.add_argument("--rate", type=float, required=True, help="per-token probability, in [0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--kinds",
        nargs="+",
        default=["substitute"],
        choices=KINDS,
        help="corruptions applied in this order (default: substitute)",
    )
    p.add_argument(
        "--grammar",
        help="built-in name or grammar file giving the terminal set "
        "(default: the tokens seen in FILE)",
    )
    p.add_argument("-o", "--output", help="write here instead of stdout")


def run_corrupt(args: argparse.Namespace) -> int:
    import numpy as np

    from cfglab.data.noise import corrupt
    from cfglab.data.vocab import Vocab
    from cfglab.grammar import load

    lines = [line.split() for line in _read_lines(args.file)]
    if args.grammar:
        vocab = Vocab.from_grammar(load(args.grammar))
    else:  # the tokens seen, numbers first in numeric order (as the grammar reader orders them)
        seen = {tok for toks in lines for tok in toks}
        vocab = Vocab(
            tuple(sorted(seen, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s)))
        )
    strings = [vocab.encode(toks, where=f"{args.file}:{i + 1}: ") for i, toks in enumerate(lines)]
    noisy = corrupt(strings, len(vocab.terminals), args.rate, args.seed, tuple(args.kinds))
    names = np.array(vocab.token_names(), dtype=object)
    _write_lines((" ".join(names[s].tolist()) for s in noisy), args.output)
    return 0


def add_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (runs/<name>)")
    p.add_argument(
        "-n",
        type=int,
        default=10,
        help="generations from BOS, or completions per prompt with --prompts",
    )
    p.add_argument(
        "--prompts", metavar="FILE", help="prompts, one per line, terminals separated by spaces"
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the run's train.device)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: train.threads)")


def run_generate(args: argparse.Namespace) -> int:
    from cfglab.evaluate.metrics import generate_from_run

    prompts = labels = None
    if args.prompts:
        p = Path(args.prompts)
        if not p.is_file():
            raise CfglabError(
                f"no such file: {args.prompts}; give a text file with one prompt per line"
            )
        numbered = [
            (i + 1, line.split())
            for i, line in enumerate(p.read_text().splitlines())
            if line.strip()
        ]
        prompts = [toks for _, toks in numbered]
        labels = [f"{args.prompts}:{i}" for i, _ in numbered]
    strings = generate_from_run(
        args.run_dir,
        args.n,
        prompts=prompts,
        prompt_labels=labels,
        temperature=args.temperature,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )
    sys.stdout.writelines(" ".join(s) + "\n" for s in strings)
    return 0


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="experiment YAML, e.g. configs/quickstart.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. train.max_steps=200",
    )


def add_data(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--out", metavar="DIR", required=True, help="dataset folder to write")
    p.add_argument("-n", type=int, required=True, help="number of strings")


def run_data(args: argparse.Namespace) -> int:
    from cfglab.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.n < 1:
        raise CfglabError(f"-n {args.n}: give at least one string")
    from cfglab.data.dataset import write_dataset

    out = write_dataset(
        cfg.grammar.load(), args.out, args.n, seed=cfg.data.seed, max_len=cfg.data.max_len
    )
    meta = json.loads((out / "meta.json").read_text())
    print(
        f"wrote {out}: {args.n} strings, {meta['n_tokens']} tokens (tokens.npy, offsets.npy, "
        "labels, meta.json); train on it with --set data.dataset=" + str(out)
    )
    return 0


def _read_strings(grammar_arg: str, path: str):
    """(grammar, file line numbers, token-id strings) of a file of strings, one per line, terminals
    separated by spaces; blank lines are skipped, an unknown token names its line."""
    from cfglab.data.vocab import Vocab
    from cfglab.grammar import load

    g = load(grammar_arg)
    p = Path(path)
    if not p.is_file():
        raise CfglabError(f"no such file: {path}; give a text file with one string per line")
    vocab = Vocab.from_grammar(g)
    line_nos, strings = [], []
    for i, line in enumerate(p.read_text().splitlines(), start=1):
        if line.strip():
            line_nos.append(i)
            strings.append(vocab.encode(line.split(), where=f"{path}:{i}: "))
    return g, line_nos, strings


def add_parse(p: argparse.ArgumentParser) -> None:
    p.add_argument("grammar", help="built-in name or grammar file")
    p.add_argument("file", help="strings, one per line, terminals separated by spaces")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def run_parse(args: argparse.Namespace) -> int:
    from cfglab.exact import cyk

    g, line_nos, strings = _read_strings(args.grammar, args.file)
    ok = cyk.recognize(g, strings)
    err = cyk.first_error(g, strings)
    for line_no, x, accepted, e in zip(line_nos, strings, ok, err, strict=True):
        if args.json:
            print(
                json.dumps(
                    {
                        "line": line_no,
                        "length": len(x),
                        "accepted": bool(accepted),
                        "first_error": int(e),
                    }
                )
            )
        elif accepted:
            print("accepted")
        elif e >= 0:
            print(f"rejected: no sentence has token {e + 1} ({g.terminals[x[e] - 1]!r}) there")
        else:
            print("rejected: a prefix of a sentence, but incomplete")
    if args.json:
        print(json.dumps({"accepted": int(ok.sum()), "of": len(strings)}))
    else:
        print(f"accepted {int(ok.sum())} of {len(strings)}")
    return 0


def add_prob(p: argparse.ArgumentParser) -> None:
    p.add_argument("grammar", help="built-in name or grammar file")
    p.add_argument("file", help="strings, one per line, terminals separated by spaces")
    p.add_argument(
        "--next",
        action="store_true",
        help="also print the exact next-token distribution after every prefix",
    )


def run_prob(args: argparse.Namespace) -> int:
    from cfglab.exact import inside

    g, line_nos, strings = _read_strings(args.grammar, args.file)
    log_p = inside.log_prob(g, strings)
    if not args.next:
        for v in log_p:
            print(f"{v:.10g}")
        return 0
    header = "k  next  " + " ".join(f"{c:>10}" for c in ["<eos>", *g.terminals])
    for line_no, x, v, rows in zip(
        line_nos, strings, log_p, inside.next_token_dist(g, strings), strict=True
    ):
        print(f"# line {line_no}: log P = {v:.10g}")
        print(header)
        for k, row in enumerate(rows):
            nxt = g.terminals[x[k] - 1] if k < len(x) else "<eos>"
            print(f"{k:<3}{nxt:>5}  " + " ".join(f"{q:>10.6g}" for q in row))
    return 0
