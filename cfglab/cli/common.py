"""What the command groups share: numeric flags with their ranges, argument checks, --set, and
line output.

Every numeric flag is declared with its range (`Bounded`: `type=Bounded(int, 0, SEED_MAX)`), so
argparse refuses a value outside it with one line `cfglab: error: argument --seed: ...` before
any work; a test walks every numeric flag of every command at and beyond its bounds. Every
string argument is checked by `check_arguments` (no NUL byte, no path component over 255
bytes) before any command runs, and every run_* checks the rest of its arguments before
anything is written.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable
from pathlib import Path

from cfglab.errors import PathError
from cfglab.paths import check_path_text


class Bounded:
    """An argparse `type` that parses an int or a float and refuses values outside [lo, hi]
    (or (lo, hi] with open_lo), naming the range; floats must be finite."""

    def __init__(
        self, kind: type, lo: float, hi: float, *, open_lo: bool = False, hint: str = ""
    ) -> None:
        self.kind, self.lo, self.hi, self.open_lo, self.hint = kind, lo, hi, open_lo, hint
        self.__name__ = kind.__name__  # argparse's "invalid int value" names the kind

    def interval(self) -> str:
        return f"{'(' if self.open_lo else '['}{_number(self.lo)}, {_number(self.hi)}]"

    def __call__(self, text: str):
        value = self.kind(text)  # ValueError: argparse says "invalid int value: 'x'"
        above_lo = value > self.lo if self.open_lo else value >= self.lo
        if not (math.isfinite(value) and above_lo and value <= self.hi):
            what = "a whole number" if self.kind is int else "a finite number"
            hint = f" ({self.hint})" if self.hint else ""
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: give {what} in {self.interval()}{hint}"
            )
        return value


class ConfigRange(Bounded):
    """Bounded by a config key's range (cfglab.config.validate.RANGES), looked up at first use:
    the flags of every command are defined at import, and `cfglab parse` should not import the
    config machinery for the flags of other commands."""

    def __init__(self, kind: type, key: str) -> None:
        self.kind, self.key, self.hint = kind, key, ""
        self.__name__ = kind.__name__

    def _range(self):
        from cfglab.config.validate import RANGES

        return RANGES[self.key]

    @property
    def lo(self) -> float:
        return self._range().lo

    @property
    def hi(self) -> float:
        return self._range().hi

    @property
    def open_lo(self) -> bool:
        return self._range().open_lo


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def config_range(kind: type, key: str) -> Bounded:
    """The range of config key `key` (cfglab.config.validate.RANGES) for a flag that means the
    same thing, so the flag and the key accept the same values."""
    return ConfigRange(kind, key)


SEED = config_range(int, "train.seed")  # every --seed: 63-bit, as a config's seeds
THREADS = config_range(int, "train.threads")  # torch CPU threads


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """ConfigError for a string argument the file system would refuse: a NUL byte anywhere, or
    (in anything but KEY=VALUE lists) a path component over 255 bytes. Called before any
    command runs, so no command meets such a name half-way through its work."""
    names = _flag_names(parser)
    for dest, value in vars(args).items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, str):
                continue
            if dest in ("overrides", "only"):  # KEY=VALUE: the config checks its own paths
                if "\x00" in item:
                    raise PathError(f"{item!r} holds a NUL byte; remove it")
                continue
            check_path_text(names.get(dest, dest), item)


def _flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the flag as a user types it (-o/--output, FILE), over every subcommand."""
    names: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for dest, name in _flag_names(sub).items():
                    names.setdefault(dest, name)
        else:
            label = "/".join(action.option_strings) or action.metavar or action.dest.upper()
            names.setdefault(action.dest, str(label))
    return names


def check_output_folder(flag: str, path: str) -> Path:
    """PathError unless `path` can become a folder cfglab writes (a run, a dataset, a compare
    folder): not an existing file, and an existing parent that is a folder. Before any work."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise PathError(f"{flag} {path} is a file: give a folder")
    parent = next((a for a in p.absolute().parents if a.exists()), Path("/"))
    if not parent.is_dir():
        raise PathError(f"{flag} {path}: {parent} is a file, not a folder; give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PathError(f"{flag} {path}: cannot write in {parent} (permission denied)")
    return p


def write_lines(lines: Iterable[str], path: str | None) -> None:
    """Write lines to `path` (atomically, data.lines.open_output), or to stdout (left open)."""
    from cfglab.data.lines import open_output

    with open_output(path) as f:
        f.writelines(line + "\n" for line in lines)


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
