"""`cfglab sample`, `corrupt`, `parse` and `prob`: strings from a grammar, corrupted, judged and
scored. Strings files are read by `data.lines` (a blank line is the empty string, so verdicts
stay aligned with input lines); outputs are written by `data.lines.open_output` (a temporary
file renamed into place when complete). Defaults come from the config schema (SampleDefaults,
CorruptDefaults).
"""

from __future__ import annotations

import argparse
import json

from cfglab.cli.common import SEED, Bounded, config_range, write_lines
from cfglab.errors import CfglabError
from cfglab.exact.startup import one_shot


def add_sample(p: argparse.ArgumentParser) -> None:
    from cfglab.config.schema import SampleDefaults  # here: parse and prob never load it

    d = SampleDefaults()
    p.add_argument("grammar", help="built-in name or grammar file")
    p.add_argument(
        "-n", type=Bounded(int, 0, 10**12), default=d.n, help=f"number of strings (default {d.n})"
    )
    p.add_argument("--seed", type=SEED, default=d.seed)
    p.add_argument(
        "--max-len",
        type=config_range(int, "data.max_len"),
        default=d.max_len,
        help="resample strings longer than this many tokens",
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
    import numpy as np

    from cfglab.data.lines import check_output_file, open_output
    from cfglab.grammar import load

    if args.output:
        check_output_file(args.output)
    g = load(args.grammar)
    names = np.array(["<bos>", *g.terminals], dtype=object)  # token id -> terminal name
    # parts of bounded size (the fast sampler's ~10^6 tree nodes, the authors' ~10^5), each
    # written as soon as it is drawn: output starts at once, memory stays constant for any -n.
    # Every check (a grammar too long to sample, a weighted grammar for physicslm4) comes first.
    if args.compat == "physicslm4":
        from cfglab.data.physicslm4 import sample_physicslm4_parts

        if args.max_len is not None:
            raise CfglabError(
                "--max-len does not combine with --compat physicslm4 (the authors' stream has "
                "no length cap): drop one of them"
            )
        parts = sample_physicslm4_parts(g, args.n, args.seed, labels=args.labels)
    else:
        from cfglab.data.sampler import sample_parts

        parts = sample_parts(g, args.n, args.seed, max_len=args.max_len, labels=args.labels)
    with open_output(args.output) as f:
        for batch in parts:
            f.writelines(line + "\n" for line in _sample_lines(g, batch, names, args.labels))
    return 0


def _sample_lines(g, batch, names, labels: bool):
    """One part's output lines: strings, or JSON lines with their labels."""
    import numpy as np

    tokens = names[batch.ids].tolist()
    off = batch.offsets.tolist()
    strings = [tokens[a:b] for a, b in zip(off[:-1], off[1:], strict=True)]
    if not labels:
        return [" ".join(toks) for toks in strings]
    lines = []
    if getattr(batch, "labels", None) is not None:  # a language: its own per-token labels
        for i, toks in enumerate(strings):
            a, b = off[i], off[i + 1]
            own = {name: v[a:b].tolist() for name, v in batch.labels.items()}
            lines.append(json.dumps({"tokens": toks, **own}))
    elif batch.ancestors is not None:  # layered: per-level labels
        level_names = [np.array([g.nonterminals[a] for a in lev], dtype=object) for lev in g.levels]
        for i, toks in enumerate(strings):
            a, b = off[i], off[i + 1]
            anc = [
                level_names[lev][batch.ancestors[lev, a:b]].tolist() for lev in range(len(g.levels))
            ]
            bnd = batch.is_boundary[:, a:b].astype(int).tolist()
            lines.append(json.dumps({"tokens": toks, "ancestors": anc, "boundaries": bnd}))
    else:
        for toks, spans in zip(strings, batch.spans, strict=True):
            rows = [[g.nonterminals[nt], int(s), int(e)] for nt, s, e in spans.tolist()]
            lines.append(json.dumps({"tokens": toks, "spans": rows}))
    return lines


def add_corrupt(p: argparse.ArgumentParser) -> None:
    from cfglab.config import CORRUPTION_NAMES
    from cfglab.config.schema import CorruptDefaults

    d = CorruptDefaults()
    p.add_argument("file", help="strings, one per line, terminals separated by spaces")
    p.add_argument(
        "--rate", type=Bounded(float, 0, 1), required=True, help="per-token probability, in [0, 1]"
    )
    p.add_argument("--seed", type=SEED, default=d.seed)
    p.add_argument(
        "--kinds",
        nargs="+",
        default=d.kinds,
        choices=CORRUPTION_NAMES,  # data.noise.KINDS
        help=f"corruptions applied in this order (default: {' '.join(d.kinds)})",
    )
    p.add_argument(
        "--grammar",
        help="built-in name or grammar file giving the terminal set "
        "(default: the tokens seen in FILE)",
    )
    p.add_argument("-o", "--output", help="write here instead of stdout")


def run_corrupt(args: argparse.Namespace) -> int:
    import numpy as np

    from cfglab.data.lines import check_output_file, encode_lines, read_token_lines
    from cfglab.data.noise import corrupt
    from cfglab.data.vocab import Vocab
    from cfglab.grammar import load
    from cfglab.grammar.syntax import natural_key

    if args.output:
        check_output_file(args.output)
    lines = read_token_lines(args.file)  # a blank line is an empty string, kept as one
    if args.grammar:
        vocab = Vocab.from_grammar(load(args.grammar))
    else:  # the tokens seen, numbers first in numeric order (as the grammar reader orders them)
        seen = {tok for toks in lines for tok in toks}
        need = 2 if "substitute" in args.kinds else 1
        if len(seen) < need:
            raise CfglabError(
                f"{args.file} has {len(seen)} distinct token(s): "
                f"{'substitution' if need == 2 else 'corruption'} needs at least {need} "
                f"terminal{'s' if need == 2 else ''} to choose from; "
                "give the terminal set with --grammar"
            )
        vocab = Vocab(tuple(sorted(seen, key=natural_key)))
    strings = encode_lines(vocab, lines, args.file)
    noisy = corrupt(strings, len(vocab.terminals), args.rate, args.seed, tuple(args.kinds))
    names = np.array(vocab.token_names(), dtype=object)
    write_lines((" ".join(names[s].tolist()) for s in noisy), args.output)
    return 0


def _read_strings(grammar_arg: str, path: str):
    """(grammar, token-id strings) of a file of strings, one per line, terminals separated by
    spaces; a blank line is the empty string (so outputs stay aligned with input lines), an
    unknown token names its line."""
    from cfglab.data.lines import read_strings
    from cfglab.data.vocab import Vocab
    from cfglab.grammar import load

    g = load(grammar_arg)
    return g, read_strings(path, Vocab.from_grammar(g))


def add_parse(p: argparse.ArgumentParser) -> None:
    p.add_argument("grammar", help="built-in name or grammar file")
    p.add_argument(
        "file",
        help="strings, one per line, terminals separated by spaces (a blank line is the empty "
        "string: one verdict per line)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line; first_error_token counts tokens from 1, as the text "
        "verdict does (null when accepted or only incomplete)",
    )


@one_shot()  # a command that exits: Numba loads without scipy or garbage collection
def run_parse(args: argparse.Namespace) -> int:
    from cfglab.exact import cyk

    g, strings = _read_strings(args.grammar, args.file)
    ok, err = cyk.judge(g, strings)  # one sweep per string, in interruptible chunks
    out = []
    verdicts = zip(strings, ok.tolist(), err.tolist(), strict=True)
    for line_no, (x, accepted, e) in enumerate(verdicts, 1):
        if args.json:  # the text verdict's token number: 1-based, null when there is none
            first = e + 1 if e >= 0 else None
            row = {"line": line_no, "length": len(x), "accepted": accepted}
            out.append(json.dumps({**row, "first_error_token": first}))
        elif accepted:
            out.append("accepted")
        elif len(x) == 0:
            out.append("rejected: a blank line, the empty string (never a sentence)")
        elif e >= 0:
            out.append(f"rejected: no sentence has token {e + 1} ({g.terminals[x[e] - 1]!r}) there")
        else:
            out.append("rejected: a prefix of a sentence, but incomplete")
    if args.json:
        out.append(json.dumps({"accepted": int(ok.sum()), "of": len(strings)}))
    else:
        out.append(f"accepted {int(ok.sum())} of {len(strings)}")
    write_lines(out, None)
    return 0


def add_prob(p: argparse.ArgumentParser) -> None:
    p.add_argument("grammar", help="built-in name or grammar file")
    p.add_argument(
        "file",
        help="strings, one per line, terminals separated by spaces (a blank line is the empty "
        "string: one value per line)",
    )
    p.add_argument(
        "--next",
        action="store_true",
        help="also print the exact next-token distribution after every prefix",
    )


@one_shot()  # a command that exits: Numba loads without scipy or garbage collection
def run_prob(args: argparse.Namespace) -> int:
    import numpy as np

    from cfglab.exact import inside

    g, strings = _read_strings(args.grammar, args.file)
    if not args.next:
        write_lines((f"{v:.10g}" for v in inside.log_prob(g, strings)), None)
        return 0
    # whitespace-separated fields on every line: k, the next token, then one column per symbol.
    # A string's table is one %-format of all its fields (4x faster than a format per number;
    # "%10.6g" writes what f"{q:>10.6g}" writes)
    header = "k    next  " + " ".join(f"{c:>10}" for c in ["<eos>", *g.terminals])
    row_format = "%-4d %5s  " + " ".join(["%10.6g"] * (g.n_t + 1))
    names = np.array(["<eos>", *g.terminals], dtype=object)  # token id -> name, 0 = EOS

    def tables():
        pairs = inside.log_prob_and_next(g, strings)  # one sweep per string, as reached
        for line_no, (x, (log_p, rows)) in enumerate(zip(strings, pairs, strict=True), 1):
            fields = np.empty((len(x) + 1, g.n_t + 3), dtype=object)  # (n+1, 2 + T+1)
            fields[:, 0] = range(len(x) + 1)  # k
            fields[:, 1] = names[np.append(x, 0)]  # the token after the first k
            fields[:, 2:] = rows
            table = "\n".join([row_format] * len(fields)) % tuple(fields.ravel())
            yield f"# line {line_no}: log P = {log_p:.10g}\n{header}\n{table}"

    write_lines(tables(), None)  # one write per string
    return 0


# name: (help, add its arguments, run it), in `cfglab --help`'s order
COMMANDS = {
    "parse": ("accept or reject strings (one verdict per line)", add_parse, run_parse),
    "prob": (
        "log-probability of strings; --next: exact next-token distributions",
        add_prob,
        run_prob,
    ),
    "sample": (
        "sample strings (optionally with tree labels) from a grammar",
        add_sample,
        run_sample,
    ),
    "corrupt": ("corrupt strings: substitute, insert or delete tokens", add_corrupt, run_corrupt),
}
