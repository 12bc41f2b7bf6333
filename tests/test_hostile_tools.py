"""Hostile input to the tool commands (grammar, sample, corrupt, parse, prob, generate, data).

Every case is something a new user does by mistake. Each must end with exit 2 and exactly one
line `cfglab: error: ...` on stderr that names the problem, no traceback, no partial output,
and any file that was there before unchanged. A few run as real processes (the contract is
about what a terminal shows); one long parse and one endless sample are interrupted with
SIGINT, which must end them with exit 130 within 2 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfglab.cli import main
from cfglab.grammar import random_cfg
from tests.processes import cfglab_process

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def deep_text() -> str:
    """The paper's recipe with 300 levels: mean length ~1e120 tokens, yet a valid grammar."""
    return random_cfg(sizes=(1, *[3] * 299), seed=0).to_text()


@pytest.fixture
def files(tmp_path: Path, deep_text: str) -> dict[str, str]:
    """Named hostile inputs, written fresh for each test."""
    made = {
        "non_utf8": b"1 2 3\n\xff\xfe 1\n",
        "unknown_token": b"1 2 3\n1 x 2\n",
        "blank_only": b"\n  \n\t\n",
        "empty": b"",
        "one_token": b"a a a\n",
        "good": b"1 2 3\n",
        "spaced_terminal.cfg": b"S -> 'a b' 'c'\n",
        "empty_terminal.cfg": b"S -> '' 'c'\n",
        "special_terminal.cfg": b"S -> '<eos>' 'c'\n",
        "non_utf8.cfg": b"S -> '\xff'\n",
        "heavy.cfg": b"S -> S S [0.4999] | 'a' [0.5001]\n",
        "existing.txt": b"precious\n",
    }
    for name, data in made.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep\n")
    (tmp_path / "deep.cfg").write_text(deep_text)
    names = [*made, "folder", "full", "deep.cfg"]
    return {name.replace(".", "_"): str(tmp_path / name) for name in names}  # keys for format


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# (argv with {file} placeholders, a phrase the message must contain)
CASES = {
    "parse_non_utf8": (["parse", "cfg3f", "{non_utf8}"], "not UTF-8"),
    "prob_non_utf8": (["prob", "cfg3f", "{non_utf8}"], "not UTF-8"),
    "corrupt_non_utf8": (["corrupt", "{non_utf8}", "--rate", "0.1"], "not UTF-8"),
    "generate_prompts_non_utf8": (["generate", "{folder}", "--prompts", "{non_utf8}"], "UTF-8"),
    "parse_folder": (["parse", "cfg3f", "{folder}"], "is a folder"),
    "parse_missing": (["parse", "cfg3f", "{folder}/nope.txt"], "no such file"),
    "parse_endless_device": (["parse", "cfg3f", "/dev/zero"], "is a device"),
    "parse_unknown_token": (["parse", "cfg3f", "{unknown_token}"], ":2: unknown token 'x'"),
    "parse_unknown_grammar": (["parse", "cfg3zz", "{good}"], "unknown grammar"),
    "prob_grammar_folder": (["prob", "{folder}", "{good}"], "directory"),
    "sample_negative_n": (["sample", "cfg3f", "-n", "-5"], "argument -n: -5"),
    "sample_negative_seed": (["sample", "cfg3f", "--seed", "-1"], "argument --seed: -1"),
    "sample_max_len_zero": (["sample", "cfg3f", "--max-len", "0"], "argument --max-len: 0"),
    "sample_max_len_too_short": (["sample", "cfg3f", "--max-len", "5"], "shortest string"),
    "sample_out_folder": (["sample", "cfg3f", "-o", "{folder}"], "is a folder"),
    "sample_out_missing_folder": (["sample", "cfg3f", "-o", "{folder}/a/b.txt"], "mkdir -p"),
    "sample_astronomical": (["sample", "{deep_cfg}", "-o", "{existing_txt}"], "--max-len"),
    "sample_heavy_tail": (["sample", "{heavy_cfg}", "-n", "3"], "too long to sample"),
    "corrupt_rate_nan": (["corrupt", "{good}", "--rate", "nan"], "argument --rate: nan"),
    "corrupt_rate_inf": (["corrupt", "{good}", "--rate", "inf"], "argument --rate: inf"),
    "corrupt_rate_negative": (["corrupt", "{good}", "--rate", "-0.1"], "[0, 1]"),
    "corrupt_negative_seed": (["corrupt", "{good}", "--rate", "0.1", "--seed", "-3"], "--seed"),
    "corrupt_out_folder": (["corrupt", "{good}", "--rate", "0.1", "-o", "{folder}"], "folder"),
    "corrupt_one_token": (["corrupt", "{one_token}", "--rate", "0.1"], "--grammar"),
    "corrupt_blank_only": (["corrupt", "{blank_only}", "--rate", "0.1"], "--grammar"),
    "corrupt_bad_keeps_output": (
        ["corrupt", "{non_utf8}", "--rate", "0.1", "-o", "{existing_txt}"],
        "UTF-8",
    ),
    "check_spaced_terminal": (["grammar", "check", "{spaced_terminal_cfg}"], "whitespace"),
    "check_empty_terminal": (["grammar", "check", "{empty_terminal_cfg}"], "is empty"),
    "check_special_terminal": (["grammar", "check", "{special_terminal_cfg}"], "special token"),
    "check_non_utf8": (["grammar", "check", "{non_utf8_cfg}"], "UTF-8"),
    "check_folder": (["grammar", "check", "{folder}"], "directory"),
    "random_zero_level": (["grammar", "random", "--levels", "1", "0"], "--levels: 0"),
    "random_negative_seed": (["grammar", "random", "--seed", "-1"], "seed"),
    "random_huge_rules": (["grammar", "random", "--length", "1", "100000000"], "--length"),
    "random_out_folder": (["grammar", "random", "-o", "{folder}"], "is a folder"),
    "random_out_missing_folder": (["grammar", "random", "-o", "{folder}/x/g.cfg"], "mkdir"),
    "generate_blank_prompts": (["generate", "{folder}", "--prompts", "{blank_only}"], "no prompts"),
    "generate_empty_prompts": (["generate", "{folder}", "--prompts", "{empty}"], "no prompts"),
    "generate_prompts_folder": (["generate", "{folder}", "--prompts", "{folder}"], "is a folder"),
    "generate_temperature_nan": (["generate", "{folder}", "--temperature", "nan"], "finite"),
    "generate_temperature_zero": (["generate", "{folder}", "--temperature", "0"], "[0.01, 100]"),
    "generate_zero_n": (["generate", "{folder}", "-n", "0"], "argument -n: 0"),
    "generate_zero_threads": (["generate", "{folder}", "--threads", "0"], "--threads: 0"),
    "data_out_is_file": (["data", QUICKSTART, "--out", "{existing_txt}", "-n", "5"], "is a file"),
    "data_out_not_empty": (["data", QUICKSTART, "--out", "{full}", "-n", "5"], "already holds"),
    "data_zero_n": (["data", QUICKSTART, "--out", "{folder}/d", "-n", "0"], "argument -n: 0"),
    "data_metadata": (
        ["data", QUICKSTART, "--out", "{folder}/d", "-n", "5", "--set", "data.metadata.levels=[0]"],
        "without metadata tokens",
    ),
    "data_in_context": (
        [
            "data",
            QUICKSTART,
            "--out",
            "{folder}/d",
            "-n",
            "5",
            "--set",
            "data.max_len=27",
            'data.in_context={{"family": "permute"}}',
        ],
        "without a fresh grammar per window",
    ),  # fmt: skip
    "list_missing_path": (["grammar", "list", "{folder}/none"], "does not exist"),
    "list_folder_without_grammars": (["grammar", "list", "{folder}"], "holds no *.cfg"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_gives_one_line_and_exit_2(case, files, tmp_path, capsys):
    argv, phrase = CASES[case]
    argv = [a.format(**files) for a in argv]
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("cfglab: error: ") and err.count("\n") == 1, err
    assert phrase in err, err
    assert out == ""
    assert snapshot(tmp_path) == before  # nothing written, nothing changed, no temp files


def run_cli(*argv: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cfglab", *argv], capture_output=True, text=True, env=env, **kw
    )


def test_real_processes_print_one_line_without_traceback(files):
    for argv in (
        ["parse", "cfg3f", files["non_utf8"]],
        ["sample", files["deep_cfg"]],
        ["sample", "cfg3f", "-o", files["folder"]],
    ):
        result = run_cli(*argv, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("cfglab: error: ") and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr


def test_grammar_check_reports_length_and_warns_on_astronomical(files, capsys):
    assert main(["grammar", "check", files["deep_cfg"]]) == 0
    out, err = capsys.readouterr()
    assert "length mean " in out and "e+120 sd " in out
    assert err.startswith("cfglab: warning: ") and "--max-len" in err


def test_sample_output_replaces_a_file_only_when_complete(files, tmp_path):
    target = Path(files["existing_txt"])
    assert main(["sample", "cfg3f", "-n", "4", "-o", str(target)]) == 0
    assert len(target.read_text().splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _interrupt(proc: subprocess.Popen, cpu: float) -> tuple[float, str]:
    """SIGINT once the process has done `cpu` seconds of work (past start-up, inside the
    long loop); returns (seconds until it exited, stderr)."""
    deadline = time.monotonic() + 120
    while _cpu_seconds(proc.pid) < cpu:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return time.monotonic() - t0, err


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
# the parse (in a compiled loop) with the slow tests: the default suite keeps the sample and eval
@pytest.mark.parametrize("what", [pytest.param("parse", marks=pytest.mark.slow), "sample"])
def test_ctrl_c_exits_130_within_2_seconds(what, tmp_path):
    """Inside a compiled O(n^3) parse of a highly ambiguous grammar (minutes of work), and
    inside `sample -n 100000000 -o FILE` (which must then leave no file behind)."""
    if what == "parse":
        grammar = tmp_path / "amb.cfg"
        grammar.write_text("S -> S S [0.3] | 'a' [0.7]\n")
        strings = tmp_path / "amb.txt"
        strings.write_text(" ".join(["a"] * 2000) + "\n")
        argv = ["parse", str(grammar), str(strings)]
    else:
        argv = ["sample", "cfg3f", "-n", "100000000", "-o", str(tmp_path / "out.txt")]
    with cfglab_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        seconds, err = _interrupt(proc, cpu=2.5)
    assert proc.returncode == 130, err
    assert seconds < 2.0
    assert err == "cfglab: interrupted\n"
    assert [p.name for p in tmp_path.iterdir() if "out" in p.name] == []
