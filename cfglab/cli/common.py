"""What the command groups share: argument checks that name the flag, --set, and line output.

Every run_* checks its arguments before any work and before anything is written; a bad value is
one line `cfglab: error: ...` naming the flag as typed and the fix (`check_int`, `check_float`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable

from cfglab.errors import CfglabError


def write_lines(lines: Iterable[str], path: str | None) -> None:
    """Write lines to `path` (atomically, data.lines.open_output), or to stdout (left open)."""
    from cfglab.data.lines import open_output

    with open_output(path) as f:
        f.writelines(line + "\n" for line in lines)


def check_int(flag: str, value: int | None, lo: int, advice: str) -> None:
    """CfglabError unless value is None or >= lo, naming the flag and value as typed."""
    if value is not None and value < lo:
        raise CfglabError(f"{flag} {value}: {advice}")


def check_float(flag: str, value: float, lo: float, hi: float, *, open_lo: bool) -> None:
    """CfglabError unless value is a finite number in [lo, hi] (or (lo, hi] with open_lo)."""
    ok = math.isfinite(value) and (value > lo if open_lo else value >= lo) and value <= hi
    if not ok:
        interval = (
            f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
            if math.isfinite(hi)
            else (f"> {lo:g}" if open_lo else f">= {lo:g}")
        )
        raise CfglabError(f"{flag} {value}: give a finite number {interval}")


def add_set(p: argparse.ArgumentParser, example: str) -> None:
    """--set KEY=VALUE ... (repeatable): dotted config overrides, e.g. `example`."""
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"override config keys, e.g. {example}",
    )


def add_config_args(p: argparse.ArgumentParser) -> None:
    """CONFIG and --set, for the commands that start from an experiment config."""
    p.add_argument("config", metavar="CONFIG", help="experiment YAML, e.g. configs/quickstart.yaml")
    add_set(p, "train.max_steps=200")
