"""Hostile input, round 3 (issue 27): each class walked over every place it can occur, with the
places read from the CLI's own command table (`cfglab.cli.build_parser`), so a new command, a
new output flag or a new numeric flag is walked too, or fails a test loudly.

- class 1, full disks: every command with -o/--output/--out on /dev/full, the file writers on a
  real file system that refuses to grow (RLIMIT_FSIZE), and every command with its standard
  output full: one line `cfglab: error: ...`, exit 2, no partial file left;
- class 3, every numeric flag at and beyond its range (the config's keys: test_config_bounds);
- class 4, a NUL byte and a 256-byte name in every string argument, every path key of a config
  and every name of an experiment file: one line, before any work, nothing created;
- class 14: `parse --json` counts tokens as the text verdict does; no carriage-return progress
  redraws in a log.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cfglab.cli import build_parser, main
from cfglab.cli.common import Bounded

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY = [
    "model.preset=tiny",
    "model.block_size=48",
    "train.batch_size=4",
    "train.max_steps=4",
    "train.ckpt_every=2",
    "train.keep_steps=[2]",
    "train.eval_every=0",
    "train.tensorboard=false",
    "data.prefetch=0",
    "stages=[train]",
]
NUL, LONG = "run\x00x", "a" * 256
OUTPUT_FLAGS = {"-o", "--output", "--out"}


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every command as a user types it ("sample", "grammar random") and its parser."""

    def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    out = {}
    for name, p in subcommands(build_parser()).items():
        inner = subcommands(p)
        out.update({f"{name} {a}": q for a, q in inner.items()} if inner else {name: p})
    return out


COMMANDS = commands()


def one_line(capsys, code: int, phrase: str = "") -> str:
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.startswith("cfglab: error: ") and captured.err.count("\n") == 1, captured
    assert phrase in captured.err, captured.err
    return captured.err


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() if p.is_file() else b"/" for p in sorted(folder.rglob("*"))}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "good.txt").write_text("1 2 3\n" * 2000)  # 12 KB
    (tmp_path / "g.cfg").write_text("S -> A B\nA -> 'a' | 'b'\nB -> 'c'\n")
    (tmp_path / "existing.txt").write_text("precious\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: e\nbase: {QUICKSTART}\nout_dir: {tmp_path / 'runs'}\n")
    return {
        "good": str(tmp_path / "good.txt"),
        "grammar": str(tmp_path / "g.cfg"),
        "existing": str(tmp_path / "existing.txt"),
        "experiment": str(exp),
        "tmp": str(tmp_path),
    }


# ---- class 1: every writer on a full disk ----------------------------------------------------
# command -> argvs writing to {out}: every command with an output flag, its variants too
OUT_ARGV = {
    "sample": [
        ["sample", "cfg3f", "-n", "50", "-o", "{out}"],
        ["sample", "cfg3f", "-n", "50", "--labels", "-o", "{out}"],
        ["sample", "cfg3f", "-n", "50", "--compat", "physicslm4", "-o", "{out}"],
    ],
    "corrupt": [["corrupt", "{good}", "--rate", "0.1", "-o", "{out}"]],
    "grammar random": [["grammar", "random", "--levels", "1", *["100"] * 9, "-o", "{out}"]],
    "grammar implicit": [["grammar", "implicit", "cfg3f", "--tokens", "9000", "-o", "{out}"]],
    "data": [["data", QUICKSTART, "--out", "{out}", "-n", "2000"]],
    "train": [["train", QUICKSTART, "--no-progress", "--out", "{out}", "--set", *TINY]],
    "run": [["run", QUICKSTART, "--no-progress", "--out", "{out}", "--set", *TINY]],
    "compare": [["compare", "{run}", "--out", "{out}"]],
    "export": [["export", "{run}", "-o", "{out}"]],
}
FOLDER_WRITERS = {"data", "train", "run", "compare", "export"}  # --out is a folder


def test_every_command_with_an_output_flag_is_walked():
    writers = {
        name
        for name, p in COMMANDS.items()
        if any(set(a.option_strings) & OUTPUT_FLAGS for a in p._actions)
    }
    assert writers == set(OUT_ARGV), "add the new writing command to OUT_ARGV"


WRITES = [(name, i) for name, argvs in OUT_ARGV.items() for i in range(len(argvs))]


@pytest.mark.parametrize("name, i", WRITES)
def test_writing_to_dev_full_is_one_line(name, i, files, tmp_path, capsys, request):
    run = request.getfixturevalue("trained") if "{run}" in OUT_ARGV[name][i] else ""
    argv = [a.format(out="/dev/full", run=run, **files) for a in OUT_ARGV[name][i]]
    before = listing(tmp_path)
    code = main(argv)
    phrase = "/dev/full" if name in FOLDER_WRITERS else "cannot write /dev/full (No space left"
    one_line(capsys, code, phrase)
    assert listing(tmp_path) == before


def _small_disk() -> None:
    """In the child: files may not grow past 4 KB (EFBIG, as a full disk gives ENOSPC)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.parametrize(
    "name, i", [w for w in WRITES if w[0] not in {"train", "run", "compare", "export"}]
)
def test_a_disk_that_fills_leaves_nothing_behind(name, i, files, tmp_path):
    """On a real file system: the output goes through a temporary file (or folder) that is
    removed, and a file that was there before is unchanged."""
    target = files["existing"] if name not in FOLDER_WRITERS else str(tmp_path / "new")
    argv = [a.format(out=target, **files) for a in OUT_ARGV[name][i]]
    before = listing(tmp_path)
    _fails_on_a_small_disk(argv)
    assert listing(tmp_path) == before


def _fails_on_a_small_disk(argv: list[str]) -> None:
    """`cfglab argv` in a process whose files cannot grow past 4 KB: one line, exit 2."""
    result = subprocess.run(
        [sys.executable, "-m", "cfglab", *argv],
        capture_output=True,
        text=True,
        preexec_fn=_small_disk,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("cfglab: error: cannot write ") and (
        result.stderr.count("\n") == 1
    ), result.stderr


def test_an_export_on_a_disk_that_fills_leaves_nothing_behind(trained, tmp_path):
    """The Hugging Face writers (safetensors, the tokenizer's JSON) fill the disk too: one line,
    and the folder being written is removed."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    _fails_on_a_small_disk(["export", str(trained), "-o", str(tmp_path / "new")])
    assert listing(tmp_path) == {}


class FullStdout(io.TextIOBase):
    """Standard output on a full disk: every write fails as /dev/full's does."""

    def __init__(self) -> None:
        self.tries = 0

    def write(self, text: str) -> int:
        self.tries += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def isatty(self) -> bool:
        return False


# every command, as a valid invocation ({run}: a trained run with kept checkpoints)
STDOUT_ARGV = {
    "grammar list": ["grammar", "list"],
    "grammar show": ["grammar", "show", "cfg3f"],
    "grammar check": ["grammar", "check", "{grammar}"],
    "grammar random": ["grammar", "random"],
    "grammar implicit": ["grammar", "implicit", "cfg3f", "--tokens", "9"],
    "parse": ["parse", "cfg3f", "{good}"],
    "prob": ["prob", "cfg3f", "{good}"],
    "sample": ["sample", "cfg3f", "-n", "5"],
    "corrupt": ["corrupt", "{good}", "--rate", "0.1"],
    "train": ["train", QUICKSTART, "--out", "{tmp}/t", "--no-progress", "--set", *TINY],
    "run": ["run", QUICKSTART, "--out", "{tmp}/r", "--no-progress", "--set", *TINY],
    "data": ["data", QUICKSTART, "--out", "{tmp}/d", "-n", "5"],
    "generate": ["generate", "{run}", "-n", "2"],
    "sweep": ["sweep", "{experiment}", "--dry-run"],
    "compare": ["compare", "{run}", "--out", "{tmp}/c"],
    "eval": ["eval", "{run}", "--n", "2", "--n-kl", "2", "--cut", "0"],
    "analyze": ["analyze", "{run}", "--set", "probe.steps=1", "attention.n_strings=1"],
    "probe": ["probe", "{run}", "--steps", "1", "--n-train", "4", "--n-test", "2"],
    "attention": ["attention", "{run}", "--n-strings", "1"],
    "dynamics": ["dynamics", "{run}", "--n", "1", "--n-kl", "1", "--analyses", "attention"],
    "report": ["report", "{run}"],
    "export": ["export", "{run}", "-o", "{tmp}/hf"],
    "intervene": ["intervene", "{run}", "--n-fit", "8", "--n-strings", "4", "--n-pairs", "2"],
}
NEEDS_RUN = {name for name, argv in STDOUT_ARGV.items() if "{run}" in argv}  # slow: a trained run


def test_every_command_has_a_stdout_case():
    assert set(STDOUT_ARGV) == set(COMMANDS), "add the new command to STDOUT_ARGV"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("round3") / "run"
    assert main(["train", QUICKSTART, "--no-progress", "--out", str(run), "--set", *TINY]) == 0
    return run


def _stdout_full(name: str, files: dict, monkeypatch, capsys, run: str = "") -> None:
    argv = [a.format(run=run, **files) for a in STDOUT_ARGV[name]]
    capsys.readouterr()
    full = FullStdout()
    monkeypatch.setattr(sys, "stdout", full)
    code = main(argv)
    monkeypatch.undo()
    if full.tries:  # it printed: the failure is one line (after a stage's progress lines)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        errors = [line for line in err.splitlines() if line.startswith("cfglab: error: ")]
        assert errors == [err.splitlines()[-1]], err
        assert "cannot write standard output (No space left on device)" in errors[0]
    else:
        assert code == 0, capsys.readouterr()


@pytest.mark.parametrize("name", [n for n in STDOUT_ARGV if n not in NEEDS_RUN])
def test_a_full_stdout_is_one_line(name, files, monkeypatch, capsys):
    _stdout_full(name, files, monkeypatch, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEEDS_RUN))
def test_a_full_stdout_is_one_line_for_the_run_commands(name, files, trained, monkeypatch, capsys):
    _stdout_full(name, files, monkeypatch, capsys, run=str(trained))


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "cfg3f", "-n", "2000"],
        ["sample", "cfg3f", "--compat", "physicslm4", "-n", "20"],
        ["parse", "cfg3f", "{good}"],
        ["prob", "cfg3f", "{good}"],
        ["grammar", "list"],
        ["corrupt", "{good}", "--rate", "0.1"],
    ],
)
def test_a_real_dev_full_stdout_is_one_line_with_nothing_at_exit(argv, files):
    """A real process: the text still buffered when it exits fails no second time."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "cfglab", *[a.format(**files) for a in argv]],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=120,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "cfglab: error: cannot write standard output (No space left on device): free some "
        "space or redirect the output elsewhere\n"
    )


# ---- class 3: every numeric flag at and beyond its range -------------------------------------
def _filled(name: str, target: argparse.Action | None = None, words: list[str] | None = None):
    """argv for command `name`: every positional and required option given a plausible value,
    `target` given `words`."""
    argv = name.split()
    for a in COMMANDS[name]._actions:
        if isinstance(a, argparse._HelpAction) or (a.option_strings and not a.required):
            if a is not target:
                continue
        if a is target:
            given = list(words or [])
        else:
            one = str(a.type.lo) if isinstance(a.type, Bounded) else "x"
            one = str(next(iter(a.choices))) if a.choices else one
            given = [one] * (a.nargs if isinstance(a.nargs, int) else 1)
        argv += [a.option_strings[0], *given] if a.option_strings else given
    return argv


NUMERIC_FLAGS = [
    (name, a)
    for name, p in COMMANDS.items()
    for a in p._actions
    if a.type in (int, float) or isinstance(a.type, Bounded)
]


def test_every_numeric_flag_has_a_range():
    unbounded = [(n, a.option_strings) for n, a in NUMERIC_FLAGS if not isinstance(a.type, Bounded)]
    assert unbounded == [], "give these flags a range: type=Bounded(...)"
    flags = {(n, a.option_strings[0]) for n, a in NUMERIC_FLAGS}
    assert {("sample", "-n"), ("generate", "--temperature"), ("grammar implicit", "--tokens")} <= (
        flags
    )


@pytest.mark.parametrize(
    "name, action", NUMERIC_FLAGS, ids=[f"{n}{a.option_strings[0]}" for n, a in NUMERIC_FLAGS]
)
def test_every_numeric_flag_at_and_beyond_its_range(name, action, capsys):
    t: Bounded = action.type
    width = action.nargs if isinstance(action.nargs, int) else 1
    step = 1 if t.kind is int else 1e-9 * max(1.0, abs(t.lo))
    for value in (t.lo, t.hi):  # the bounds parse
        build_parser().parse_args(_filled(name, action, [str(value)] * width))
    beyond = [t.lo - step, t.hi + (1 if t.kind is int else 1e-6 * t.hi)]
    if t.kind is float:
        beyond += ["nan", "inf", "-inf"]
    for value in beyond:
        code = main(_filled(name, action, [str(value)] * width))
        one_line(capsys, code, f"argument {'/'.join(action.option_strings)}: ")


# ---- class 4: names the file system refuses ---------------------------------------------------
STRING_ARGS = [
    (name, a)
    for name, p in COMMANDS.items()
    for a in p._actions
    if a.type is None
    and a.nargs != 0
    and not a.choices
    and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    and a.dest not in ("overrides", "only")
]


@pytest.mark.parametrize(
    "name, action",
    STRING_ARGS,
    ids=[f"{n}:{a.option_strings[0] if a.option_strings else a.dest}" for n, a in STRING_ARGS],
)
def test_every_string_argument_refuses_nul_and_long_names(name, action, tmp_path, capsys):
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(tmp_path)
    try:
        for bad, phrase in ((NUL, "NUL byte"), (LONG, "a name of 256 bytes")):
            one_line(capsys, main(_filled(name, action, [bad])), phrase)
        assert list(tmp_path.iterdir()) == []
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize(
    "key", ["name", "out_dir", "grammar.name", "data.dataset", "report.compare"]
)
def test_config_names_refuse_nul_and_long_names(key, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad, phrase in ((NUL, "NUL byte"), (LONG, "a name of 256 bytes")):
        value = json.dumps([bad]) if key == "report.compare" else json.dumps(bad)
        code = main(["train", QUICKSTART, "--set", f"{key}={value}", "train.max_steps=2"])
        err = one_line(capsys, code, key)
        assert phrase in err or "NUL" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", NUL),
        ("name", LONG),
        ("out_dir", NUL),
        ("out_dir", LONG),
        ("grid", {"eval.device": [NUL]}),
        ("grid", {"eval.device": [LONG]}),
        ("grid", {"grammar.name": [LONG]}),
        ("set", {"grammar.name": LONG}),
    ],
)
def test_experiment_names_refuse_nul_and_long_names(field, value, tmp_path, capsys, monkeypatch):
    """An experiment's name, out_dir and grid values become folder names: one line before the
    plan is printed, nothing created."""
    monkeypatch.chdir(tmp_path)
    data = {"name": "e", "base": QUICKSTART, field: value}
    (tmp_path / "exp.yaml").write_text(json.dumps(data))
    before = listing(tmp_path)
    code = main(["sweep", str(tmp_path / "exp.yaml"), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured
    assert captured.err.startswith("cfglab: error: ") and captured.err.count("\n") == 1
    assert listing(tmp_path) == before


# ---- class 14: small things -----------------------------------------------------------------
def test_parse_json_counts_the_first_error_as_the_text_verdict_does(tmp_path, capsys):
    strings = tmp_path / "s.txt"
    strings.write_text("1 1 1 1 1 1 1 1 1\n\n1 2 3 2 1\n3 3 3\n1\n")  # cfg3b: last is a prefix
    assert main(["parse", "cfg3b", str(strings)]) == 0
    verdicts = capsys.readouterr().out.splitlines()[:-1]
    assert main(["parse", "cfg3b", str(strings), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()[:-1]]
    assert len(rows) == len(verdicts) == 5
    seen = set()
    for verdict, row in zip(verdicts, rows, strict=True):
        if "no sentence has token" in verdict:
            token = int(verdict.split("token ")[1].split()[0])
            assert row["first_error_token"] == token and 1 <= token <= row["length"]
            seen.add("error")
        else:
            assert row["first_error_token"] is None
            seen.add("accepted" if row["accepted"] else "other")
    assert seen >= {"error", "other"}


def test_progress_in_a_pipe_is_plain_lines(tmp_path):
    """`cfglab train` with its progress bar on, stdout and stderr pipes (a log): no carriage
    return redraws, the validation lines still printed."""
    sets = [s for s in TINY if not s.startswith("train.eval_every")] + ["train.eval_every=2"]
    result = subprocess.run(
        [sys.executable, "-m", "cfglab", "train", QUICKSTART, "--out", str(tmp_path / "r")]
        + ["--set", *sets],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr
    assert "step 2: loss" in result.stdout and "step 4: loss" in result.stdout
