"""Text files of strings, one per line, tokens separated by spaces: the one reader and writer.

`cfglab parse / prob / corrupt` read strings and `cfglab generate --prompts` reads prompts
through `read_token_lines`; `cfglab sample / corrupt / grammar random` write through
`open_output` after `check_output_file`. Everything a user can get wrong about a file is a
PathError (or a VocabError for an unknown token) that names the file, the line and the fix,
raised before any work and before anything is written:

- the path is missing, a folder, unreadable, or not UTF-8 text (a byte-order mark is allowed);
- **blank lines**: in a strings file a blank line is the empty string and is judged as one, so
  the n-th verdict always answers the n-th line; in a prompts file blank lines separate
  prompts and are skipped (each generation carries its prompt, and errors name the prompt's
  real line), but a file with no prompt at all is an error, not a silent generation from BOS.

Output files are written to a temporary file beside the target and renamed into place when
complete, so a failed or interrupted command leaves an existing file as it was. A write that
fails (a full disk, `/dev/full`, a quota, a file size limit) is a PathError naming the target,
for files and for standard output alike (`guard_output`); the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from cfglab.data.vocab import Vocab
from cfglab.errors import PathError
from cfglab.grammar.syntax import physical_lines
from cfglab.paths import check_path_text


def read_text(path: str | Path, what: str = "a text file with one string per line") -> str:
    """The whole file as text; PathError for a missing path, a folder, or bytes that are not
    UTF-8 (naming the line and the byte)."""
    p = Path(path)
    if p.is_dir():
        raise PathError(f"{path} is a folder: give {what}")
    if not p.exists():
        raise PathError(f"no such file: {path}; give {what}")
    if p.is_char_device() or p.is_block_device():  # /dev/zero never ends; pipes are fine
        raise PathError(f"{path} is a device, not a file: give {what}")
    try:
        data = p.read_bytes()
    except OSError as exc:  # permission denied, a device that cannot be read, ...
        raise PathError(f"cannot read {path} ({exc.strerror or exc}): give {what}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PathError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); give {what}, "
            "saved as UTF-8"
        ) from None


def read_token_lines(path: str | Path) -> list[list[str]]:
    """Tokens of every line of a strings file; a blank line is the empty string."""
    what = "a text file with one string per line, terminals separated by spaces"
    return [line.split() for line in physical_lines(read_text(path, what))]


def read_prompts(path: str | Path) -> list[tuple[int, list[str]]]:
    """(line number, tokens) of every prompt of a prompts file, blank lines skipped; a file
    without any prompt is a PathError."""
    what = "a text file with one prompt per line, terminals separated by spaces"
    lines = physical_lines(read_text(path, what))
    prompts = [(i, line.split()) for i, line in enumerate(lines, start=1) if line.strip()]
    if not prompts:
        raise PathError(
            f"{path} holds no prompts ({'only blank lines' if lines else 'it is empty'}): give "
            f"{what}, or leave out --prompts to generate from BOS"
        )
    return prompts


def encode_lines(vocab: Vocab, lines: list[list[str]], path: str | Path) -> list[np.ndarray]:
    """Token names -> id arrays, one per line; an unknown token is a VocabError naming the file,
    line and position. One dictionary lookup per token (no per-string NumPy work)."""
    index = vocab.index
    try:
        flat = np.fromiter(
            (index[t] for toks in lines for t in toks),
            dtype=np.int64,
            count=sum(len(toks) for toks in lines),
        )
    except KeyError:
        for i, toks in enumerate(lines, start=1):
            vocab.encode(toks, where=f"{path}:{i}: ")  # raises, naming the token
        raise AssertionError("unreachable") from None
    lengths = np.fromiter((len(toks) for toks in lines), dtype=np.int64, count=len(lines))
    return np.split(flat, np.cumsum(lengths)[:-1]) if lines else []


def read_strings(path: str | Path, vocab: Vocab) -> list[np.ndarray]:
    """Token-id arrays of a strings file, one per line (blank lines are empty strings)."""
    text = read_text(path, "a text file with one string per line, terminals separated by spaces")
    strings = encode_one_char_tokens(text, vocab)
    if strings is None:  # other vocabularies, other characters, or a token to name in an error
        strings = encode_lines(vocab, [line.split() for line in physical_lines(text)], path)
    return strings


# byte -> 0 for the ASCII characters that str.split() splits at (\t \n \v \f \r \x1c-\x1f and
# space), 255 for every other byte; terminals get their ids over it
_SPACE_OR_OTHER = bytes(0 if chr(c).isspace() else 255 for c in range(128)) + bytes([255] * 128)


def encode_one_char_tokens(text: str, vocab: Vocab) -> list[np.ndarray] | None:
    """What `encode_lines` gives for the lines of `text` split at whitespace, with one byte
    translation and NumPy over the characters instead of Python over the tokens (3,000 cfg3f
    strings in ~5 ms instead of ~35), when every terminal is one ASCII character (the cfg3
    family: '1', '2', '3') and the text is ASCII; None otherwise, or when a token is not a
    terminal (the caller names it)."""
    one_char = all(len(t) == 1 and t.isascii() and not t.isspace() for t in vocab.terminals)
    if not one_char or not text.isascii():
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines
    table = bytearray(_SPACE_OR_OTHER)  # byte -> token id (<= 118 terminals: below 255)
    for tok, tid in vocab.index.items():
        table[ord(tok)] = tid
    raw = text.encode("ascii")
    ids = np.frombuffer(raw.translate(table), dtype=np.uint8)  # (C,)
    is_token = ids != 0
    # every token is one terminal character: no other character, no two characters touching
    if (ids == 255).any() or (is_token[1:] & is_token[:-1]).any():
        return None
    at = np.flatnonzero(is_token)  # (N,) positions of the tokens
    tokens = ids[at].astype(np.int64)  # (N,)
    # line i ends at its newline (the last line may have none): the tokens before each newline
    ends = np.searchsorted(at, np.flatnonzero(np.frombuffer(raw, np.uint8) == 10)).tolist()
    if text and not text.endswith("\n"):
        ends.append(len(tokens))
    return [tokens[a:b] for a, b in zip([0, *ends], ends, strict=False)]


# ---- output -----------------------------------------------------------------------------------
class GuardedOutput:
    """A text stream whose write failures are PathErrors naming `target` ("standard output",
    a file), so a command ends with one line `cfglab: error: cannot write ...` instead of an
    OSError traceback. A closed pipe (BrokenPipeError) passes through unchanged: `cfglab sample
    | head` ends quietly. `failed` is set once a write has failed."""

    def __init__(self, stream: TextIO, target: str) -> None:
        self.stream, self.target, self.failed = stream, target, False

    def _guard(self, method: str, *args):
        try:
            return getattr(self.stream, method)(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            self.failed = True
            raise write_error(self.target, exc) from None

    def write(self, text: str) -> int:
        return self._guard("write", text)

    def writelines(self, lines) -> None:
        self._guard("writelines", lines)

    def flush(self) -> None:
        self._guard("flush")

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self.stream, name)


def write_error(target: str | Path, exc: OSError) -> PathError:
    """The one message of a failed write: what, why, and what to do."""
    if target == "standard output":
        advice = "free some space or redirect the output elsewhere"
    else:
        advice = "free some space or give another path; nothing incomplete was kept"
    return PathError(f"cannot write {target} ({exc.strerror or exc}): {advice}")


def check_output_file(path: str | Path) -> Path:
    """PathError unless `path` can be written as a file: a name the file system accepts, not
    a folder, in a folder that exists and is writable. Call it before any work."""
    check_path_text("output", str(path))
    p = Path(path)
    if str(path).endswith(os.sep) or p.is_dir():
        raise PathError(f"{path} is a folder: give a file name for -o, e.g. {p / 'out.txt'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        kind = "is not a folder" if parent.exists() else "does not exist"
        raise PathError(
            f"cannot write {path}: {parent} {kind}; create the folder first "
            f"(mkdir -p {parent}) or give another path"
        )
    if p.exists() and not p.is_file():  # /dev/null and other devices: written in place
        return p
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise PathError(f"cannot write {path}: permission denied; give another path")
    return p


@contextlib.contextmanager
def open_output(path: str | Path | None) -> Iterator[TextIO]:
    """A text stream for the command's output: stdout (left open) when `path` is None, else a
    temporary file beside `path` that replaces it only when the block finishes without error,
    so an interrupted or failed command never leaves a half-written or emptied file."""
    if path is None:
        yield (
            sys.stdout
            if isinstance(sys.stdout, GuardedOutput)
            else GuardedOutput(sys.stdout, "standard output")
        )
        return
    p = check_output_file(path)
    if p.exists() and not p.is_file():  # a device (/dev/null, /dev/full): written in place
        with _closing(open(p, "w", encoding="utf-8"), path) as f:
            yield f
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or ".")
    try:
        with _closing(os.fdopen(fd, "w", encoding="utf-8"), path) as f:
            yield f
        if p.exists():  # keep the permissions the user gave the file
            os.chmod(tmp, p.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _closing(f: TextIO, path: str | Path) -> Iterator[GuardedOutput]:
    """`f` guarded, closed at the end: the last flush failing (a disk that filled at the end) is
    a PathError too; after a failure inside the block, close quietly and let that one out."""
    try:
        yield GuardedOutput(f, str(path))
    except BaseException:
        with contextlib.suppress(OSError):
            f.close()
        raise
    try:
        f.close()
    except OSError as exc:
        raise write_error(path, exc) from None


@contextlib.contextmanager
def new_output_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` (in its nearest existing ancestor) that becomes `out`
    when the block finishes; on any failure it is removed, so a full disk or an interrupted
    command leaves nothing behind (a failed write is one PathError). `out` must be missing or
    an empty folder (the caller checks, before any work)."""
    anchor = next(a for a in out.absolute().parents if a.is_dir())
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=anchor))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private; an output folder is not
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)  # onto a missing or an empty folder
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            raise write_error(out, exc) from None
        raise


def discard_output(stream: TextIO) -> None:
    """After a failed write to `stream` (stdout), point its file descriptor at /dev/null, so the
    text still buffered cannot fail a second time, with a second message, when Python exits."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)
