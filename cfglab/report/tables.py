"""Summary rows as tables, whatever family they come from (no torch).

A row is {family, metric, value, n, [ci_low, ci_high], [qualifiers: cut, temperature, gamma,
level, layer, ...]} (cfglab.evaluate.families); its label is the metric followed by its
qualifiers, so a new metric family appears in the CLI table and the report with no code here.
"""

from __future__ import annotations

import math

NOT_QUALIFIERS = {"family", "metric", "value", "n", "ci_low", "ci_high"}


def qualifiers(row: dict) -> dict:
    """The keys that say which number of its metric a row is (cut, temperature, ...)."""
    return {k: v for k, v in row.items() if k not in NOT_QUALIFIERS}


def row_label(row: dict) -> str:
    quals = " ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in qualifiers(row).items()
    )
    return f"{row['metric']} {quals}".strip()


def _num(v, digits: int = 5) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _ci(row: dict) -> str:
    if row.get("ci_low") is None or row.get("ci_high") is None:
        return ""
    return f"[{_num(row['ci_low'], 4)}, {_num(row['ci_high'], 4)}]"


def rows_text(rows: list[dict]) -> str:
    """An aligned text table (the eval command's output)."""
    lines = [f"{'metric':42} {'value':>10}  {'95% CI':>21} {'n':>6}"]
    for r in rows:
        lines.append(f"{row_label(r):42} {_num(r['value']):>10}  {_ci(r):>21} {r['n']:>6}")
    return "\n".join(lines)


def rows_markdown(rows: list[dict]) -> list[str]:
    """The same rows as a Markdown table."""
    out = ["| metric | value | 95% CI | n |", "|---|---|---|---|"]
    out += [f"| {row_label(r)} | {_num(r['value'])} | {_ci(r)} | {r['n']} |" for r in rows]
    return out


def table_markdown(table: dict) -> list[str]:
    """A table spec {"title", "header", "rows", ["note"]} (cfglab.analyze.families) as
    Markdown lines: the title in bold, the table, a blank line."""
    out = [f"**{table['title']}**", ""] if table.get("title") else []
    out += [
        "| " + " | ".join(table["header"]) + " |",
        "|" + "---|" * len(table["header"]),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in table["rows"]),
        "",
    ]
    if table.get("note"):
        out += [table["note"], ""]
    return out


def fmt_interval(mean: float | None, low: float | None = None, high: float | None = None) -> str:
    """`mean [low, high]` with the same decimals for all three, enough that the interval's
    width shows (never "1.576 [1.58, 1.58]") and at least 3 significant digits of the mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if mean == 0 and low is None:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(mean)))) if mean else 3
    if low is not None and high is not None and high > low:
        digits = max(digits, 1 - math.floor(math.log10(high - low)))
    digits = min(digits, 12)
    text = f"{mean:.{digits}f}"
    if low is not None and high is not None:
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text
