"""The one left-to-right chart sweep behind recognition, inside and prefix probabilities.

A CYK-class DP on the binarised grammar (`normal_form.py`) that visits the chart by span end
j = 1..n and, at each end, by start k = j-1 .. 0, so every cell (k, j) is complete before it is
combined with the cells (i, k) to its left. Two things make it fast and safe:

- **Top-down filtering** (as in Earley's predictor): alongside the chart it keeps the
  *pending left-corner* weights out[k, A] = P(the first k tokens are derived and A is the next
  symbol to expand) -- the second step of the authors' two-step DP (RESEARCH.md §4.3), closed
  over left corners with LC = (I - P_L)^-1 (Jelinek & Lafferty 1991; Stolcke 1995), which also
  handles left recursion. A cell entry (i, j, A) is kept only if A is pending at i, so only
  constituents that can sit in some sentence starting with the prefix are ever built.
- **Scaling instead of logs**: the lexical leaf of token m is divided by the conditional
  probability c_m = P(x_m | x_<m) (known before token m is combined), so every stored value is a
  conditional probability. out[k] sums (with the EOS weight) to 1 and inside values stay near 1:
  no underflow on strings of any length, and log P = sum log c_m + log inside(0, n, S).

In *boolean* mode (recognition, parsing) every weight is 1 and every sum is clipped to 1: exact
membership with no floating-point question at all. The prefix dies at the first token m with
c_m = 0: that is `first_error`.

**Bounded, interruptible work.** Compiled code does not see Ctrl-C, so no compiled call runs
long: `kernels.advance` counts its inner-loop steps and returns to Python after the span end at
which they pass `WORK_PER_CALL` (tens of milliseconds), and the sweep resumes there (everything
that persists between ends lives in the arrays of `kernels.new_state`). Many short strings run
in one compiled call (`judge_many`, `log_prob_many`) under the same budget, so the per-call
overhead is paid once per chunk, not once per string. A chart that outgrows
`MAX_CHART_ENTRIES` (a highly ambiguous grammar on a long string) or dense tables larger than
`MAX_TABLE_BYTES` stop with an ExactError that says what to shorten, instead of exhausting
memory.

**Threads.** The compiled calls release the GIL, and strings are independent: a batch with
enough work (`MIN_TOKENS_PER_THREAD` tokens per thread) is cut into one contiguous range of
strings per usable core (`threads`), each swept by its own thread through the same chunked,
budgeted calls, and every string's numbers are the ones a single thread computes. Ctrl-C
reaches the main thread, which tells the workers to stop after their current call.

Only the touched symbols of a cell or a row are visited (short symbol lists beside the dense
tables), always in increasing symbol order, so the floating-point sums happen in exactly the
order of a dense loop over all symbols.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import pairwise

import numpy as np

from cfglab.errors import ExactError
from cfglab.exact import kernels
from cfglab.exact.normal_form import NormalForm

# Inner-loop steps one compiled call may take before it returns to Python (~10-50 ms), so
# Ctrl-C is seen within a fraction of a second whatever the grammar or string.
WORK_PER_CALL = 20_000_000
# Chart entries (cell, symbol) one string may hold: 16 bytes each, so about 1.6 GB.
MAX_CHART_ENTRIES = 100_000_000
# The dense per-string tables: out (n+1, N) and acc (n, N) float64 plus acc lists (n, N) int32,
# and rows (n+1, T+1) float64 when the next-token rows are wanted.
MAX_TABLE_BYTES = 2 * 1024**3
# Below this many tokens per thread, starting a thread costs more than it saves (a cfg3f string
# of 250 tokens sweeps in ~0.1 ms; a thread starts in ~0.1 ms).
MIN_TOKENS_PER_THREAD = 20_000


def threads(n_tokens: int) -> int:
    """Threads for sweeping n_tokens in all: one per core this process may run on (its CPU
    affinity: a SLURM task or `taskset` limits it), fewer when there is too little work."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, n_tokens // MIN_TOKENS_PER_THREAD))


def call_compiled(fn, *args):
    """fn(*args) for a compiled function, with Ctrl-C kept a KeyboardInterrupt: a signal that
    lands while numba runs Python code on the way out (boxing the returned arrays) surfaces as
    a SystemError chained to the KeyboardInterrupt."""
    try:
        return fn(*args)
    except SystemError as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            cause = cause.__cause__ or cause.__context__
        raise


def _grammar_args(nf: NormalForm) -> tuple:
    return (
        nf.n_sym,
        nf.n_t,
        nf.lex_off,
        nf.lex_sym,
        nf.lex_p,
        nf.bin_off,
        nf.bin_parent,
        nf.bin_right,
        nf.bin_p,
        nf.up_off,
        nf.up_sym,
        nf.up_p,
        nf.lc_off,
        nf.lc_sym,
        nf.lc_p,
    )


def check_size(nf: NormalForm, n: int, want_rows: bool = False, where: str = "") -> None:
    """ExactError, before any work, when the dense tables of a string of n tokens would pass
    MAX_TABLE_BYTES."""
    need = (n + 1) * nf.n_sym * (8 + 8 + 4) + (8 * (n + 1) * (nf.n_t + 1) if want_rows else 0)
    if need > MAX_TABLE_BYTES:
        longest = int(MAX_TABLE_BYTES / (nf.n_sym * 20 + (8 * (nf.n_t + 1) if want_rows else 0)))
        raise ExactError(
            f"{where}a string of {n:,} tokens needs {need / 1024**3:.1f} GiB of tables with this "
            f"grammar ({nf.n_sym} symbols after binarisation): give strings of at most "
            f"{longest:,} tokens, or split this one"
        )


def _check_chart(count: np.ndarray, n: int, where: str) -> None:
    if count[1] > MAX_CHART_ENTRIES:
        raise ExactError(
            f"{where}the chart of a string of {n:,} tokens grew past {MAX_CHART_ENTRIES:,} "
            "entries (the grammar is highly ambiguous on it, memory grows with the number of "
            "parses): give shorter strings"
        )


class Stopped(Exception):
    """A sweep in a worker thread saw its `stop` event (the caller is gone: Ctrl-C, an error)."""


def run(
    nf: NormalForm,
    x: np.ndarray,
    *,
    is_prob: bool,
    want_rows: bool = False,
    where: str = "",
    stop: threading.Event | None = None,
) -> tuple:
    """Sweep one string (token ids 1..T), returning to Python every WORK_PER_CALL steps (and
    raising Stopped there once `stop` is set).

    Returns (log_c (n,), eos (n+1,), rows (n+1 or 0, T+1), first_error, cell_start, end_off,
    ent_off, ent_sym, ent_val) as documented in `kernels.new_state`."""
    if is_prob and nf.underflow:
        raise ExactError(nf.underflow)
    x = np.ascontiguousarray(x, dtype=np.int64)
    n = len(x)
    check_size(nf, n, want_rows, where)
    st = list(call_compiled(kernels.new_state, n, nf.n_sym, nf.n_t, want_rows))
    g = _grammar_args(nf)
    j = 0
    while j <= n:  # each call returns within ~WORK_PER_CALL steps: Ctrl-C is seen between them
        if stop is not None and stop.is_set():
            raise Stopped
        args = (x, j, WORK_PER_CALL, MAX_CHART_ENTRIES, is_prob, want_rows, tuple(st), g)
        j = call_compiled(kernels.advance, *args)
        if st[8][4]:  # it stopped inside end j: no room in the chart arrays for one more cell
            st[9:] = call_compiled(kernels.grow_chart, *st[9:], st[8], nf.n_sym)
        _check_chart(st[8], n, where)
    log_c, eos, rows, _, _, _, _, end_off, count, cell_start, ent_off, ent_sym, ent_val = st
    n_cells, n_ent = int(count[0]), int(count[1])
    return (
        log_c,
        eos,
        rows,
        int(count[2]),
        cell_start[:n_cells],
        end_off,
        ent_off[: n_cells + 1],
        ent_sym[:n_ent],
        ent_val[:n_ent],
    )


def _many(nf: NormalForm, strings: Sequence[np.ndarray], is_prob: bool):
    """(first_error, end weight, sum log c) per string: chunks of whole strings per compiled
    call, a string that does not fit in one call's budget swept alone by `run`; contiguous
    ranges of strings in threads when there is enough work."""
    if is_prob and nf.underflow:
        raise ExactError(nf.underflow)
    b = len(strings)
    lengths = np.fromiter((len(x) for x in strings), dtype=np.int64, count=b)
    offsets = np.zeros(b + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(strings).astype(np.int64) if b else np.zeros(0, np.int64)
    if b:
        check_size(nf, int(lengths.max()))
    err = np.full(b, -1, np.int64)
    end = np.zeros(b)
    logc = np.zeros(b)
    g = _grammar_args(nf)

    def sweep_range(lo: int, hi: int, stop: threading.Event) -> None:
        s = lo
        while s < hi and not stop.is_set():
            # offsets[: hi + 1]: the compiled call sees strings up to hi only
            args = (ids, offsets[: hi + 1], s, WORK_PER_CALL, MAX_CHART_ENTRIES, is_prob)
            nxt = call_compiled(kernels.batch, *args, err, end, logc, g)
            if nxt == s:  # string s alone needs more than one call
                where = f"string {s}: "
                log_c, eos, _, e, *_ = run(nf, strings[s], is_prob=is_prob, where=where, stop=stop)
                err[s], end[s] = e, eos[len(strings[s])]
                logc[s] = sum_log_c(log_c) if e == -1 else 0.0
                nxt = s + 1
            s = nxt

    # cut where the running token count passes each thread's share: ranges of equal work
    n_threads = threads(int(offsets[-1]))
    cuts = np.searchsorted(offsets, np.arange(1, n_threads) * offsets[-1] / n_threads)
    bounds = [0, *cuts.tolist(), b]
    _in_threads([partial(sweep_range, lo, hi) for lo, hi in pairwise(bounds)])
    return err, end, logc


def _in_threads(jobs: list[Callable[[threading.Event], None]]) -> None:
    """Run each job(stop) in a thread of its own (the first in this one when it is alone); on
    an exception or Ctrl-C here, set `stop`, wait for the others to see it, and re-raise."""
    stop = threading.Event()
    if len(jobs) == 1:
        jobs[0](stop)
        return
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(job, stop) for job in jobs]
        try:
            for f in futures:
                f.result()
        finally:
            stop.set()


def sum_log_c(log_c: np.ndarray) -> float:
    """The sum of log c_m added left to right, as `kernels.batch` adds them (np.sum adds pairwise,
    which can differ in the last bit): a string's log P never depends on how it was swept."""
    return float(np.add.accumulate(log_c)[-1]) if len(log_c) else 0.0


def judge_many(nf: NormalForm, strings: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Boolean sweep of every string once: ((B,) bool accepted, (B,) int64 first error)."""
    err, end, _ = _many(nf, strings, is_prob=False)
    lengths = np.fromiter((len(x) for x in strings), dtype=np.int64, count=len(strings))
    return (err == -1) & (end > 0) & (lengths > 0), err


def log_prob_many(nf: NormalForm, strings: Sequence[np.ndarray]) -> np.ndarray:
    """(B,) natural-log probability of every string; -inf outside the language."""
    err, end, logc = _many(nf, strings, is_prob=True)
    with np.errstate(divide="ignore"):
        res = logc + np.log(end)
    res[(err != -1) | ~(end > 0)] = -np.inf
    return res
