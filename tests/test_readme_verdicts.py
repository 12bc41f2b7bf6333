"""Every verdict table in the README says what the tool wrote: the table that follows a line naming
`results/<experiment>/verdicts.csv` has one row per row of that file, in its order, with the
same verdict word and the same paired difference and 95% interval, to the digits shown (3
decimals, or whole numbers for values of 10 and more such as training steps).

A verdict is the tool's, never a sentence written by hand: when an experiment is rerun and its
verdicts.csv changes, this test fails until the README's table is brought up to date.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"[-+]?\d+(?:\.\d+)?"


def verdict_tables(readme: str) -> list[tuple[str, list[list[str]]]]:
    """(experiment, rows of cells) for each markdown table after a line naming its
    verdicts.csv (the header and the |---| line dropped)."""
    lines = readme.splitlines()
    found = []
    for i, line in enumerate(lines):
        m = re.search(r"results/([\w.-]+)/verdicts\.csv", line)
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("|"):
            if lines[j].startswith("#"):  # the next section began: no table here
                break
            j += 1
        table = []
        while j < len(lines) and lines[j].startswith("|"):
            table.append([c.strip() for c in lines[j].strip("|").split("|")])
            j += 1
        if table:
            found.append((m.group(1), table[2:]))
    return found


def parse_row(cells: list[str]) -> tuple[str, tuple[float, float, float]]:
    """(verdict word, (difference, low, high)) of a row `claim | verdict | d [low, high] ...`."""
    verdict = cells[1].strip("* ")
    text = cells[2].replace("\u2212", "-")  # the typographic minus reads as one
    m = re.search(rf"({NUMBER}) \[({NUMBER}), ({NUMBER})\]", text)
    assert m, f"no 'difference [low, high]' in {cells[2]!r}"
    return verdict, tuple(float(g) for g in m.groups())


def test_the_readme_names_verdict_tables():
    # the parser must find the tables it checks (a renamed marker would skip them all)
    assert verdict_tables((ROOT / "README.md").read_text())


@pytest.mark.parametrize(
    "experiment,rows",
    verdict_tables((ROOT / "README.md").read_text()),
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_readme_verdict_row_is_the_tools(experiment, rows):
    path = ROOT / "results" / experiment / "verdicts.csv"
    assert path.exists(), f"the README cites {path.relative_to(ROOT)}, which is not committed"
    with open(path, newline="") as f:
        tool = list(csv.DictReader(f))
    assert len(rows) == len(tool), (
        f"{experiment}: README has {len(rows)} rows, the tool {len(tool)}"
    )
    for cells, want in zip(rows, tool, strict=True):
        verdict, numbers = parse_row(cells)
        assert verdict == want["verdict"], (cells[0], want["claim"])
        expected = (float(want["mean_diff"]), float(want["ci_low"]), float(want["ci_high"]))
        text = cells[2].replace("\u2212", "-")
        shown_digits = re.search(rf"({NUMBER}) \[({NUMBER}), ({NUMBER})\]", text).groups()
        for shown, exact, digits in zip(numbers, expected, shown_digits, strict=True):
            # the value rounded to the digits shown (at least 3 decimals below 1: 0.1 would
            # not say 0.104), never a different number
            decimals = len(digits.partition(".")[2])
            assert decimals >= 3 or abs(exact) >= 10, (cells[0], "show 3 decimals")
            tol = 0.5 * 10.0**-decimals + 1e-9
            assert shown == pytest.approx(exact, abs=tol), (cells[0], want["claim"])


def test_the_checker_reads_words_and_intervals():
    """The row parser itself, on the forms the README uses (bold words, a trailing "lower")."""
    readme = (
        "as `results/x/verdicts.csv` states them:\n\n| claim | verdict | d |\n|---|---|---|\n"
        "| a better than b | holds | +0.500 [0.100, 0.900] |\n"
    )
    ((_, rows),) = verdict_tables(readme)
    assert parse_row(rows[0]) == ("holds", (0.5, 0.1, 0.9))
    assert parse_row(["c", "**not shown**", "0.299 [0.225, 0.373] lower"])[0] == "not shown"
