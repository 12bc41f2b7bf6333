"""The `cfglab` command: one dispatch table, argparse, and the only place errors become exit codes.

Every command is a triple (help, add its arguments, run it) in COMMANDS, gathered from one
module per command group, each holding argument definitions and dispatch only:

    cli/grammar.py      grammar (list, show, check, random, implicit)
    cli/strings.py      parse, prob, sample, corrupt
    cli/runs.py         train, run, data, generate
    cli/experiments.py  sweep, compare (the sweep's policy: cfglab.experiment.sweep)
    cli/stages.py       eval, analyze, probe, attention, intervene, dynamics, report (flags as
                        --set)
    cli/common.py       what they share: argument checks naming the flag, --set, line output

Library code raises `CfglabError`; here it becomes `cfglab: error: <message>` on stderr and
exit 2, with no traceback unless CFGLAB_DEBUG=1; Ctrl-C exits 130. Before a command runs, every
numeric flag is in its range (argparse, `common.Bounded`) and every string argument is a name
the file system accepts (`common.check_arguments`). Standard output is guarded
(`data.lines.GuardedOutput`): a full disk or `> /dev/full` is one error line, not a traceback,
and a file name the file system refuses anywhere (ENAMETOOLONG) is one line too. Heavy imports
(torch) happen inside the commands that need them, so `cfglab grammar list` starts fast.
"""

from __future__ import annotations

import argparse
import errno
import gc
import os
import sys
import warnings
from collections.abc import Callable

from cfglab.cli import experiments, grammar, runs, stages, strings
from cfglab.cli.common import check_arguments
from cfglab.data.lines import GuardedOutput, discard_output
from cfglab.errors import CfglabError, GrammarWarning

# name: (help, add_arguments, run), in `cfglab --help`'s order
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    **grammar.COMMANDS,
    **strings.COMMANDS,
    **runs.COMMANDS,
    **experiments.COMMANDS,
    **stages.COMMANDS,
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2 like every other cfglab error."""

    def error(self, message: str):
        self.exit(2, f"cfglab: error: {message}; see `{self.prog} --help`\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; or, for a known `command`, the parser of that command alone (its flags'
    defaults import the config schema: `cfglab parse` need not pay for `cfglab sample`'s)."""
    parser = _Parser(
        prog="cfglab",
        description="Physics-of-language-models experiments on synthetic context-free grammars. "
        "Start with: cfglab run configs/quickstart.yaml",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        if command in (None, name) or command not in COMMANDS:
            add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """cfglab's own warnings (GrammarWarning: an unreachable nonterminal, ...) as one line in
    the CLI's voice; others as Python prints them."""
    if issubclass(category, GrammarWarning):
        print(f"cfglab: warning: {message}", file=file or sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    stdout = sys.stdout
    sys.stdout = guarded = GuardedOutput(stdout, "standard output")
    try:
        argv = sys.argv[1:] if argv is None else argv
        parser = build_parser(argv[0] if argv else None)
        args = parser.parse_args(argv)
        check_arguments(args, parser)
        code = COMMANDS[args.command][2](args)
        sys.stdout.flush()  # a full stdout fails here, as one error line, not at exit
        return code
    except CfglabError as exc:
        if os.environ.get("CFGLAB_DEBUG") == "1":
            raise
        if guarded.failed:
            discard_output(stdout)
        print(f"cfglab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cfglab: interrupted", file=sys.stderr)
        gc.freeze()  # interpreter shutdown then skips collecting torch's and Numba's objects
        return 130
    except BrokenPipeError:  # `cfglab sample ... | head`
        sys.stderr.close()
        return 0
    except SystemExit as exc:  # argparse: --help (0) or a usage error, already printed (2)
        return exc.code if isinstance(exc.code, int) else 2
    except OSError as exc:
        # a name the file system refuses, met where no check could see it first
        if exc.errno != errno.ENAMETOOLONG or os.environ.get("CFGLAB_DEBUG") == "1":
            raise
        print(
            f"cfglab: error: {_short(exc.filename)}: a file or folder name is longer than the "
            "file system allows (255 bytes); give a shorter one",
            file=sys.stderr,
        )
        return 2
    finally:
        sys.stdout = stdout


def _short(name) -> str:
    text = os.fsdecode(name) if name is not None else "a path"
    return repr(text) if len(text) <= 60 else f"{text[:40]!r}... ({len(os.fsencode(text))} bytes)"
