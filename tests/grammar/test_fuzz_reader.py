"""Property-based fuzzing of the grammar reader (hypothesis): any text either reads as a
Grammar or raises GrammarError, never anything else, in bounded time; and whatever it accepts
round-trips through `to_text`, and its own samples, written one per line, read back and parse.
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfglab.data.lines import encode_lines
from cfglab.data.sampler import sample
from cfglab.data.vocab import Vocab
from cfglab.errors import GrammarError, SamplingError
from cfglab.exact import cyk
from cfglab.grammar.cfg import Grammar
from cfglab.grammar.syntax import SPECIAL_TOKENS

# deadline: bounded time per example, generous for a loaded 2-core machine
FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow],
)

FRAGMENTS = [
    "S", "A", "B", "S2", "->", "|", " ", " ", "\n", "\t", "'a'", "'b'", '"c"', "'1'", "' '",
    "''", "'<eos>'", "'a b'", "[0.5]", "[0.25]", "[1]", "[0]", "[nan]", "[inf]", "[-1]",
    "[1e-320]", "[0.5", "%start S", "%start", "#", "# c", "'", '"', "é", "\x00", "\r",
    "\u2028", "\x1c", "'\u00a0'", "'x#y'", "S -> S S [0.6] | 'a' [0.4]", "S -> 'a'\n",
    "S -> A 'b' | 'c'\nA -> 'd' | S 'e'\n", "S -> A B\nA -> 'x'\nB -> 'y' | 'z'\n",
]  # fmt: skip


def check_accepted(g: Grammar) -> None:
    """What the reader accepted is usable: representable terminals, a faithful text form, and
    samples that survive the strings format and parse."""
    for t in g.terminals:
        assert t.split() == [t] and t not in SPECIAL_TOKENS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert Grammar.from_text(g.to_text()) == g
    try:
        batch = sample(g, 4, seed=0, max_len=40, labels=False, max_tries=20)
    except SamplingError:
        return  # strings too long for the cap: a clear refusal is the right answer
    text = "".join(" ".join(g.terminals[t - 1] for t in x) + "\n" for x in batch.strings())
    lines = [line.split() for line in text.splitlines()]
    strings = encode_lines(Vocab.from_grammar(g), lines, "<samples>")
    assert len(strings) == len(batch)
    for x, y in zip(strings, batch.strings(), strict=True):
        assert np.array_equal(x, y)
    assert cyk.recognize(g, strings).all()


def read(text: str) -> Grammar | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreachable-rule warnings are fine
        try:
            return Grammar.from_text(text, name="fuzz")
        except GrammarError as exc:
            assert str(exc)  # a message, naming something
            return None


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=30))
def test_any_text_reads_or_raises_grammar_error(parts):
    g = read("".join(parts))
    if g is not None:
        check_accepted(g)


NT_NAME = st.from_regex(r"[A-Z][a-z0-9_]{0,3}", fullmatch=True)
ODD_TERMINAL = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=3
) | st.sampled_from(["<eos>", "<pad>", "<bos>", "<mask>", "a b", "", " ", "\t", "a\u00a0b"])
PLAIN_TERMINAL = st.from_regex(r"[a-z0-9#%'\"<>|\[\]-]{1,3}", fullmatch=True)
TERMINAL = st.one_of(PLAIN_TERMINAL, PLAIN_TERMINAL, PLAIN_TERMINAL, ODD_TERMINAL)


@st.composite
def grammar_texts(draw) -> tuple[str, bool]:
    """A structurally plausible grammar with arbitrary terminal names, as NLTK text; and
    whether every terminal name is one the strings format can carry."""
    nts = draw(st.lists(NT_NAME, min_size=1, max_size=4, unique=True))
    lines, representable = [], True
    for k, a in enumerate(nts):
        alts = []
        for _ in range(draw(st.integers(1, 3))):
            rhs = []
            for _ in range(draw(st.integers(1, 3))):
                # later nonterminals only, so recursion is rare and mostly finite
                if k + 1 < len(nts) and draw(st.booleans()):
                    rhs.append(draw(st.sampled_from(nts[k + 1 :])))
                else:
                    t = draw(TERMINAL)
                    if "'" in t and '"' in t:
                        t = t.replace("'", "")
                    if any(c in t for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
                        t = "x"  # a line break ends the rule: not a terminal test
                    representable &= t.split() == [t] and t not in SPECIAL_TOKENS
                    rhs.append(f'"{t}"' if "'" in t else f"'{t}'")
            alts.append(" ".join(rhs))
        lines.append(f"{a} -> " + " | ".join(dict.fromkeys(alts)))
    return "\n".join(lines) + "\n", representable


@FUZZ
@given(grammar_texts())
def test_terminals_the_strings_format_cannot_carry_are_refused(text_and_ok):
    text, representable = text_and_ok
    g = read(text)
    if not representable:
        assert g is None
    if g is not None:
        check_accepted(g)
