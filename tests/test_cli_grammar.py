"""The `cfglab grammar ...` commands and the CLI error contract: exit 2, one line, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from cfglab.cli import main
from cfglab.grammar import BUILTIN_GRAMMARS, Grammar, load

BAD = sorted((Path(__file__).parent / "grammar" / "bad").glob("*.cfg"))


def test_grammar_list_has_every_builtin_with_its_facts(capsys):
    assert main(["grammar", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(BUILTIN_GRAMMARS)
    g = load("cfg3f")
    assert rows["cfg3f"][1:6] == ["7", "16", str(len(g.rules)), "3", f"{g.mean_length:.1f}"]


def test_grammar_show_prints_readable_nltk_text(capsys):
    assert main(["grammar", "show", "cfg3b"]) == 0
    text = capsys.readouterr().out
    assert Grammar.from_text(text) == load("cfg3b")
    assert "22 -> 21 20 | 20 19" in text  # the paper's figure, verbatim


def test_grammar_random_writes_a_file_that_checks(tmp_path, capsys):
    out = tmp_path / "g.cfg"
    assert (
        main(["grammar", "random", "--levels", "1", "3", "3", "3", "--seed", "5", "-o", str(out)])
        == 0
    )
    g = load(str(out))
    assert g.levels is not None and len(g.levels) == 3
    assert main(["grammar", "check", str(out)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_grammar_gives_exit_2_and_one_line(path, capsys):
    assert main(["grammar", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cfglab: error: ")


def test_real_process_prints_no_traceback_and_does_not_hang():
    for path in BAD[:4]:
        result = subprocess.run(
            [sys.executable, "-m", "cfglab", "grammar", "check", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("cfglab: error: ")


def test_unknown_grammar_name(capsys):
    assert main(["grammar", "show", "cfg3q"]) == 2
    assert "unknown grammar 'cfg3q'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["sample", "-n", "1"], ["parse"], ["prob"]])
def test_a_grammar_warning_is_one_line_in_every_command(tmp_path, command):
    """An unreachable nonterminal is a warning: one `cfglab: warning:` line (not Python's
    two-line 'file:line: GrammarWarning' form), and the command still works."""
    g = tmp_path / "g.cfg"
    g.write_text("S -> 'a' | 'b'\nU -> 'c'\n")
    (tmp_path / "s.txt").write_text("a\n")
    args = [command[0], str(g), *command[1:]]
    if command[0] != "sample":
        args.append(str(tmp_path / "s.txt"))
    result = subprocess.run(
        [sys.executable, "-m", "cfglab", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"cfglab: warning: {g}:2: nonterminal 'U' is not reachable from the start symbol 'S'; "
        "its rules are never used"
    ]


GRAMMAR_DIR = Path(__file__).parents[1] / "configs" / "grammars"


def test_grammar_list_adds_the_files_of_a_folder_with_their_facts(tmp_path, capsys):
    made = tmp_path / "mine.cfg"
    made.write_text("# my own grammar: two rules\n%start S\nS -> 'a' S | 'b'\n")
    (tmp_path / "notes.txt").write_text("not a grammar")
    assert main(["grammar", "list", str(tmp_path), str(GRAMMAR_DIR / "deep3.cfg")]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(BUILTIN_GRAMMARS) | {str(made), str(GRAMMAR_DIR / "deep3.cfg")}
    g = load(str(made))  # recursive, not layered: no level count
    assert rows[str(made)].split()[1:6] == ["-", "1", "2", "2", f"{g.mean_length:.1f}"]
    assert rows[str(made)].endswith("my own grammar: two rules")
    deep = load(str(GRAMMAR_DIR / "deep3.cfg"))
    assert rows[str(GRAMMAR_DIR / "deep3.cfg")].split()[1:6] == [
        "5", "10", "20", "3", f"{deep.mean_length:.1f}"
    ]  # fmt: skip


@pytest.mark.parametrize("what", ["missing", "empty folder", "bad file"])
def test_grammar_list_refuses_a_bad_path_before_printing(tmp_path, capsys, what):
    path = {"missing": tmp_path / "nope", "empty folder": tmp_path, "bad file": tmp_path / "b.cfg"}
    if what == "bad file":
        path[what].write_text("S -> -> 'a'\n")
    assert main(["grammar", "list", str(path[what])]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("cfglab: error:") and len(err.splitlines()) == 1


@pytest.mark.parametrize("path", sorted(GRAMMAR_DIR.glob("*.cfg")), ids=lambda p: p.name)
def test_a_shipped_grammar_is_what_its_recorded_recipe_draws(path, tmp_path):
    """A grammar file that names the `cfglab grammar random` line it came from must be exactly
    that line's grammar (its selection record is about this grammar, not a hand-edited one)."""
    recipe = [line for line in path.read_text().splitlines() if "cfglab grammar random" in line]
    if not recipe:
        pytest.skip("not drawn by the random recipe")
    args = recipe[0].split("cfglab grammar random", 1)[1].split(" -o ")[0].split()
    assert main(["grammar", "random", *args, "-o", str(tmp_path / "g.cfg")]) == 0
    assert load(str(tmp_path / "g.cfg")).rules == load(str(path)).rules
