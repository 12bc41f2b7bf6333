"""torch CPU threads: a number as given, or `auto`, chosen by measuring the real work.

More threads are not always faster on a laptop: measured on a quiet 2-core machine, the
quickstart's training step ran 1.4x faster with 2 threads than with 1, but with another process
busy on one core, 2 threads were 2x *slower* than 1 (two threads fight for one free core). So
`auto` does not guess: it times a few calls of the work itself (a training step's forward and
backward on the run's own batch, or a stage's forward pass) at every thread count from 1 to the
cores this process may use, and keeps the fastest (the fewer threads within 3%: the sampler's
prefetch thread needs a core too). It costs about a second and changes no number: the timed
calls run on a copy of the model, and torch's random state is restored after.

The cores a process may use: its CPU affinity, capped by $CFGLAB_MAX_THREADS (a local sweep
gives each worker its share).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

AUTO = "auto"
TIE = 0.03  # within 3% of the fastest, fewer threads win


def max_threads() -> int:
    """Cores this process may use, capped by $CFGLAB_MAX_THREADS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    cap = int(os.environ.get("CFGLAB_MAX_THREADS") or 0)
    return max(1, min(cores, cap) if cap else cores)


def seconds_per_call(work: Callable[[], object], threads: int, repeats: int = 3) -> float:
    """The fastest of `repeats` calls of `work` at `threads` threads (after one warm-up)."""
    torch.set_num_threads(threads)
    work()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - t0)
    return best


def choose_threads(work: Callable[[], object]) -> tuple[int, dict[int, float]]:
    """Time `work` at 1..max_threads() threads; set and return the fastest (fewer on a tie)
    with every timing {threads: seconds per call}. torch's random state is left as it was."""
    state = torch.get_rng_state()
    try:
        times = {n: seconds_per_call(work, n) for n in range(1, max_threads() + 1)}
    finally:
        torch.set_rng_state(state)
    fastest = min(times.values())
    best = min(n for n, s in times.items() if s <= fastest * (1 + TIE))
    torch.set_num_threads(best)
    return best, times


def apply_threads(
    setting: int | str | None,
    work: Callable[[], object] | None = None,
    resumed: int | None = None,
) -> str:
    """Set torch's threads from a config value: a number (capped by $CFGLAB_MAX_THREADS), None
    (torch's default, capped), or "auto" (measured on `work`; without work: every core this
    process may use; a resumed run's `resumed` count, recorded in its checkpoint, is kept: the
    last digits of float sums depend on the thread count, and a resume must be exact). Returns
    a line saying what was chosen and why."""
    if setting == AUTO and resumed:
        torch.set_num_threads(int(resumed))
        return f"threads: {int(resumed)} (auto, as the run started with)"
    if setting == AUTO:
        if work is None or max_threads() == 1:
            torch.set_num_threads(max_threads())
            return f"threads: {max_threads()} (auto: the cores this process may use)"
        best, times = choose_threads(work)
        timed = ", ".join(f"{n}: {1000 * s:.1f} ms" for n, s in times.items())
        return f"threads: {best} (auto, measured per call: {timed})"
    cap = int(os.environ.get("CFGLAB_MAX_THREADS") or 0)
    threads = min(setting or cap, cap) if cap else setting
    if threads:
        torch.set_num_threads(threads)
    return f"threads: {torch.get_num_threads()}"
