"""`python -m cfglab ...` as a child process the way a terminal starts it, for the tests that
send it signals.

A shell that runs the tests in the background (`pytest &`, some CI runners) hands its children
SIGINT ignored, and Python keeps an inherited SIG_IGN, as every Unix program should: such a
child would never see the test's Ctrl-C. The child here gets SIGINT at its default, as a
terminal's foreground job has it, and is killed when the test ends, failed or not, so a failure
never leaves a process working on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def cfglab_process(argv: list[str], **popen_kwargs) -> Iterator[subprocess.Popen]:
    """Popen of `python -m cfglab ARGV` (this checkout first on the path), killed on exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **popen_kwargs.pop("env", {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cfglab", *argv],
        env=env,
        preexec_fn=as_in_a_terminal,
        **popen_kwargs,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            if popen_kwargs.get("start_new_session"):
                os.killpg(proc.pid, signal.SIGKILL)  # its workers too
            else:
                proc.kill()
        proc.communicate()
