"""The line-level NLTK CFG/PCFG syntax that cfg.py reads and writes (no torch): quoting
terminals, comments, one line's alternatives with their optional [weights], and which
terminal names the one-string-per-line format can carry."""

from __future__ import annotations

import re

from cfglab.errors import GrammarError

# token names the vocabulary writes for its special ids (data/vocab.py): no terminal may take them
SPECIAL_TOKENS = ("<bos>", "<eos>", "<mask>", "<pad>")

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<arrow>->)
    | (?P<bar>\|)
    | \[(?P<prob>[^\]]*)\]
    | '(?P<sq>[^']*)'
    | "(?P<dq>[^"]*)"
    | (?P<nt>[\w/][\w/^<>-]*)
    | (?P<bad>\S)
    )""",
    re.VERBOSE,
)


def _quote(s: str) -> str:
    return f'"{s}"' if "'" in s else f"'{s}'"


def _fail(source: str, line_no: int, msg: str) -> GrammarError:
    where = f"{source}:{line_no}: " if line_no else f"{source}: "
    return GrammarError(where + msg)


def _check_terminal(name: str, source: str, line_no: int) -> None:
    """A terminal must survive the strings format: one string per line, split on whitespace."""
    if name.split() != [name]:
        what = "is empty" if not name.strip() else "contains whitespace"
        raise _fail(
            source,
            line_no,
            f"terminal {name!r} {what}: strings are written one per line with tokens "
            "separated by spaces, so it could not be read back; rename it (e.g. 'a_b')",
        )
    if name in SPECIAL_TOKENS:
        raise _fail(
            source,
            line_no,
            f"terminal {name!r} is the name of a special token ({', '.join(SPECIAL_TOKENS)}): "
            "rename it",
        )


def physical_lines(text: str) -> list[str]:
    """The lines of a text file as Python's universal newlines read them (\n, \r\n or \r ends
    a line), where str.splitlines() also splits at \f, \x1c-\x1e, \x85, U+2028 and U+2029:
    its n-th line would not be the file's n-th line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no line of its own
    return lines


def natural_key(name: str) -> tuple:
    """The vocabulary's order of terminal names: numbers by value ('1' < '2' < '10'), then the
    other names; a total order (ties such as '1' / '01' broken by the text), so the ids never
    depend on where a terminal first appears (a run's grammar.cfg reads back with its ids).
    isdecimal, not isdigit: '²' is a digit that int() refuses."""
    return (0, int(name), name) if name.isdecimal() else (1, 0, name)


def _strip_comment(line: str) -> str:
    """Drop a '#' comment that is not inside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def _read_line(body: str, source: str, line_no: int):
    tokens = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        kind = m.lastgroup
        if kind == "bad":
            raise _fail(
                source,
                line_no,
                f"unexpected character {m.group('bad')!r} at column "
                f"{m.start('bad') + 1}: terminals are quoted ('a'), nonterminals are "
                "words, alternatives are separated by '|'",
            )
        tokens.append((kind, m.group(kind)))
    if len(tokens) < 2 or tokens[0][0] != "nt" or tokens[1][0] != "arrow":
        raise _fail(
            source,
            line_no,
            "expected a rule 'LHS -> RHS' with a nonterminal on the "
            f"left, e.g. S -> A 'b'; got {body!r}",
        )
    lhs = tokens[0][1]
    alts: list[list[tuple[str, str]]] = [[]]
    for kind, val in tokens[2:]:
        if kind == "arrow":
            raise _fail(source, line_no, "a second '->' on one line: write one rule per line")
        if kind == "bar":
            alts.append([])
        else:
            alts[-1].append((kind, val))
    out = []
    for alt in alts:
        prob = None
        if alt and alt[-1][0] == "prob":
            text = alt.pop()[1]
            try:
                prob = float(text)
            except ValueError:
                raise _fail(
                    source, line_no, f"probability [{text}] is not a number: write it like [0.25]"
                ) from None
            if not (0.0 < prob <= 1.0):
                raise _fail(
                    source,
                    line_no,
                    f"probability [{text}] must be in (0, 1]: drop "
                    "rules with probability 0 and fix the rest",
                )
        if any(k == "prob" for k, _ in alt):
            raise _fail(
                source,
                line_no,
                "a probability [p] must come last in its alternative, "
                "e.g. S -> A B [0.5] | 'a' [0.5]",
            )
        if not alt:
            raise _fail(
                source,
                line_no,
                f"empty right-hand side for {lhs!r}: cfglab does not "
                "support epsilon rules; rewrite the grammar without them (inline the "
                "empty alternative into the rules that use it)",
            )
        out.append((lhs, [(k in ("sq", "dq"), v) for k, v in alt], prob, line_no))
    return out
