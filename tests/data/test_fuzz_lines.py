"""Property-based fuzzing of the strings reader (data/lines.py, hypothesis): any bytes either
read as one string per line or raise PathError / VocabError naming the problem, never anything
else, in bounded time; and well-formed files read back exactly, whatever the spacing, line
endings, blank lines or byte-order mark."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfglab.data.lines import encode_lines, encode_one_char_tokens, read_prompts, read_strings
from cfglab.data.vocab import Vocab
from cfglab.errors import PathError, VocabError
from cfglab.grammar.syntax import physical_lines

VOCAB = Vocab(("1", "2", "3", "a", "é"))
FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=6),
            st.sampled_from([b"1", b"2 3", b" ", b"\t", b"\n", b"\r\n", b"\xef\xbb\xbf", b"x"]),
            st.sampled_from([b"\xff", b"\xc3", b"\xe9", b"\x00", b"\xc3\xa9", b"\xe2\x80\xa8"]),
        ),
        max_size=20,
    )
)
def test_any_bytes_read_or_raise_a_clear_error(tmp_path: Path, parts):
    path = tmp_path / "s.txt"
    data = b"".join(parts)
    path.write_bytes(data)
    try:
        strings = read_strings(path, VOCAB)
    except PathError as exc:
        assert "UTF-8" in str(exc) and str(path) in str(exc)
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8-sig")
        return
    except VocabError as exc:
        assert str(path) in str(exc) and "unknown token" in str(exc)
        return
    text = data.decode("utf-8-sig")
    # one string per line as Python's universal newlines count them (not str.splitlines, which
    # also splits at \f, \x85, U+2028 ...), blank lines kept
    file_lines = io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8", newline=None)
    file_lines = [line.removesuffix("\n") for line in file_lines]
    assert len(strings) == len(file_lines)
    for x, line in zip(strings, file_lines, strict=True):
        assert x.dtype == np.int64 and len(x) == len(line.split())


TOKENS = st.lists(st.lists(st.sampled_from(VOCAB.terminals), max_size=6), max_size=12)


@FUZZ
@given(
    TOKENS,
    st.sampled_from([" ", "  ", "\t", " \t "]),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.booleans(),
    st.booleans(),
)
def test_well_formed_files_read_back_exactly(tmp_path: Path, lines, space, newline, bom, pad):
    edge = space if pad else ""
    text = "".join(edge + space.join(toks) + edge + newline for toks in lines)
    path = tmp_path / "s.txt"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    strings = read_strings(path, VOCAB)
    assert [VOCAB.decode(x) for x in strings] == lines
    prompts = [(i, toks) for i, toks in enumerate(lines, start=1) if toks]
    if prompts:
        assert read_prompts(path) == prompts  # blank lines skipped, real line numbers kept
    else:
        with pytest.raises(PathError, match="no prompts"):
            read_prompts(path)


ONE_CHAR = Vocab(("1", "2", "3", "a"))  # every terminal one ASCII character: the NumPy reader


@FUZZ
@given(
    st.lists(
        st.sampled_from(
            ["1", "2", "3", "a", " ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c"]
            + ["\x1f", "\x85", "\u2028", "\xa0", "x", "12", "a1", "\x00", "é", "\ufeff"]
        ),
        max_size=40,
    )
)
def test_one_char_reader_is_the_general_reader(parts):
    """The NumPy reader of one-character vocabularies gives exactly the arrays of the general
    reader (split each universal-newline line at whitespace, look every token up), or declines
    (None) on text it does not handle: non-ASCII characters, or a token that is no terminal,
    which the general reader then names."""
    text = "".join(parts)
    lines = [line.split() for line in physical_lines(text)]
    fast = encode_one_char_tokens(text, ONE_CHAR)
    try:
        want = encode_lines(ONE_CHAR, lines, "s.txt")
    except VocabError:
        assert fast is None
        return
    if fast is None:
        assert not text.isascii()
        return
    assert len(fast) == len(want)
    for a, b in zip(fast, want, strict=True):
        assert a.dtype == b.dtype == np.int64 and a.tolist() == b.tolist()
