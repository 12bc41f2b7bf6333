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
long: `_advance` counts its inner-loop steps and returns to Python after the span end at which
they pass `WORK_PER_CALL` (tens of milliseconds), and the sweep resumes there (everything that
persists between ends lives in the `_Sweep` arrays). Many short strings run in one compiled
call (`judge_many`, `log_prob_many`) under the same budget, so the per-call overhead is paid
once per chunk, not once per string. A chart that outgrows `MAX_CHART_ENTRIES` (a highly
ambiguous grammar on a long string) or dense tables larger than `MAX_TABLE_BYTES` stop with an
ExactError that says what to shorten, instead of exhausting memory.

Only the touched symbols of a cell or a row are visited (short symbol lists beside the dense
tables), always in increasing symbol order, so the floating-point sums happen in exactly the
order of a dense loop over all symbols.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from cfglab.errors import ExactError
from cfglab.exact.kernels import _grow, _heap_pop, _heap_push, _sort_small
from cfglab.exact.normal_form import NormalForm

# Inner-loop steps one compiled call may take before it returns to Python (~10-50 ms), so
# Ctrl-C is seen within a fraction of a second whatever the grammar or string.
WORK_PER_CALL = 20_000_000
# Chart entries (cell, symbol) one string may hold: 16 bytes each, so about 1.6 GB.
MAX_CHART_ENTRIES = 100_000_000
# The dense per-string tables: out (n+1, N) and acc (n, N) float64 plus acc lists (n, N) int32,
# and rows (n+1, T+1) float64 when the next-token rows are wanted.
MAX_TABLE_BYTES = 2 * 1024**3


@njit(cache=True)
def _advance(x, j0, budget, is_prob, want_rows, state, grammar):
    """Sweep span ends j = j0, j0+1, ... of the string x (n,) of token ids 1..T, until the end
    or until more than `budget` inner steps were taken (then it stops after a whole end).
    `grammar` = `_grammar_args(nf)`.

    State (allocated by `_new_state`, updated in place, in this order): log_c (n,) = log c_m
    (0 in boolean mode, -inf from the first error on); eos (n+1,) scaled P(the string ends
    after k tokens); rows (n+1 or 0, T+1) unnormalised next-symbol weights [EOS, t=1..T]; out
    (n+1, N) pending weights; acc (n, N) pre-unary sums of the cells (k, j) of the current end,
    with their touched symbols acc_sym (n, N) and counts acc_cnt (n,) (all zero between ends);
    end_off (n+2,); count = [cells, entries, first_error, steps]; then the chart: cells
    (cell_start[c], j) for c in end_off[j] .. end_off[j+1]-1, with entries ent_off[c] ..
    ent_off[c+1]-1 of (ent_sym, ent_val). Those four arrays grow, so they are returned: (next j,
    cell_start, ent_off, ent_sym, ent_val). The next j is n+1 when the string is done (or dead:
    count[2] >= 0).
    """
    log_c, eos, rows, out, acc, acc_sym, acc_cnt, end_off, count = state[:9]
    cell_start, ent_off, ent_sym, ent_val = state[9:]
    n_sym, n_t, lex_off, lex_sym, lex_p, bin_off, bin_parent, bin_right, bin_p = grammar[:9]
    up_off, up_sym, up_p, lc_off, lc_sym, lc_p = grammar[9:]
    n = x.shape[0]
    nn = n_sym
    has_unary = up_sym.shape[0] > 0
    fin = np.zeros(nn)
    fin_sym = np.empty(nn, np.int64)
    rv = np.zeros(nn)  # the cell (k, j) scattered densely while it is combined
    base = np.zeros(nn)
    base_sym = np.empty(nn, np.int64)
    row_sym = np.empty(nn, np.int64)
    heap = np.empty(max(n, 1), np.int64)  # starts k with a non-empty acc[k] at the current end
    n_heap = 0
    n_cells = count[0]
    n_ent = count[1]
    steps0 = count[3]
    steps = 0

    if j0 == 0:
        # k = 0: only the start symbol is pending, closed over its left corners
        for q in range(lc_off[0], lc_off[1]):
            out[0, lc_sym[q]] = lc_p[q] if is_prob else 1.0
    for j in range(j0, n + 1):
        if j > 0:
            # ---- cells ending at j: seed the lexical cell (j-1, j), divided by c_{j-1}
            tok = x[j - 1]
            scale = np.exp(-log_c[j - 1]) if is_prob else 1.0
            for q in range(lex_off[tok], lex_off[tok + 1]):
                a = lex_sym[q]
                if out[j - 1, a] > 0.0:
                    was = acc[j - 1, a]
                    acc[j - 1, a] += lex_p[q] * scale if is_prob else 1.0
                    if was == 0.0 and acc[j - 1, a] != 0.0:
                        if acc_cnt[j - 1] == 0:
                            n_heap = _heap_push(heap, n_heap, j - 1)
                        acc_sym[j - 1, acc_cnt[j - 1]] = a
                        acc_cnt[j - 1] += 1
            end_off[j] = n_cells
            # starts k from right to left (a max-heap of the non-empty ones): every cell (k, j)
            # is complete before any cell (i < k, j) that it feeds
            while n_heap > 0:
                k, n_heap = _heap_pop(heap, n_heap)
                steps += 1
                m = acc_cnt[k]
                acc_cnt[k] = 0
                if m > 1:  # (a view costs reference counting: only when there is work)
                    _sort_small(acc_sym[k], m)
                # unary closure fin = U* pre, kept only where the symbol is pending at k
                n_fin = 0
                for p in range(m):
                    a = acc_sym[k, p]
                    fin[a] = acc[k, a]
                    fin_sym[n_fin] = a
                    n_fin += 1
                if has_unary:
                    for p in range(m):
                        b = acc_sym[k, p]
                        v = acc[k, b]
                        for q in range(up_off[b], up_off[b + 1]):
                            a = up_sym[q]
                            steps += 1
                            if out[k, a] > 0.0:
                                was = fin[a]
                                fin[a] += up_p[q] * v if is_prob else 1.0
                                if was == 0.0 and fin[a] != 0.0:
                                    fin_sym[n_fin] = a
                                    n_fin += 1
                    if n_fin > m:
                        _sort_small(fin_sym, n_fin)
                for p in range(m):
                    acc[k, acc_sym[k, p]] = 0.0
                # store the cell (k, j)
                # (calls only when full: a call costs reference counting)
                if n_cells + 1 > cell_start.shape[0]:
                    cell_start = _grow(cell_start, n_cells + 1)
                if n_cells + 2 > ent_off.shape[0]:
                    ent_off = _grow(ent_off, n_cells + 2)
                if n_ent + n_fin > ent_sym.shape[0]:
                    ent_sym = _grow(ent_sym, n_ent + n_fin)
                    ent_val = _grow(ent_val, n_ent + n_fin)
                first = n_ent
                for p in range(n_fin):
                    a = fin_sym[p]
                    v = fin[a] if is_prob else 1.0
                    fin[a] = 0.0
                    ent_sym[n_ent] = a
                    ent_val[n_ent] = v
                    rv[a] = v
                    n_ent += 1
                cell_start[n_cells] = k
                ent_off[n_cells] = first
                ent_off[n_cells + 1] = n_ent
                n_cells += 1
                # combine (i, k) x (k, j) -> (i, j) for every cell (i, k) ending at k
                for c2 in range(end_off[k], end_off[k + 1]):  # end_off[j] is set: k + 1 <= j
                    i = cell_start[c2]
                    for e in range(ent_off[c2], ent_off[c2 + 1]):
                        b = ent_sym[e]
                        vb = ent_val[e]
                        for r in range(bin_off[b], bin_off[b + 1]):
                            steps += 1
                            vc = rv[bin_right[r]]
                            if vc != 0.0:
                                a = bin_parent[r]
                                if out[i, a] > 0.0:
                                    was = acc[i, a]
                                    acc[i, a] += bin_p[r] * vb * vc if is_prob else 1.0
                                    if was == 0.0 and acc[i, a] != 0.0:
                                        if acc_cnt[i] == 0:
                                            n_heap = _heap_push(heap, n_heap, i)
                                        acc_sym[i, acc_cnt[i]] = a
                                        acc_cnt[i] += 1
                for e in range(first, n_ent):
                    rv[ent_sym[e]] = 0.0
            end_off[j + 1] = n_cells
            # ---- pending symbols after j tokens: A -> B C pending at i, B spans (i, j) => C
            n_base = 0
            for c in range(end_off[j], n_cells):
                i = cell_start[c]
                for e in range(ent_off[c], ent_off[c + 1]):
                    b = ent_sym[e]
                    vb = ent_val[e]
                    if i == 0 and b == 0:
                        eos[j] = vb
                    for r in range(bin_off[b], bin_off[b + 1]):
                        steps += 1
                        w = out[i, bin_parent[r]]
                        if w > 0.0:
                            cc = bin_right[r]
                            was = base[cc]
                            base[cc] += w * bin_p[r] * vb if is_prob else 1.0
                            if was == 0.0 and base[cc] != 0.0:
                                base_sym[n_base] = cc
                                n_base += 1
            if n_base > 1:
                _sort_small(base_sym, n_base)
            n_row = 0
            for p in range(n_base):
                cc = base_sym[p]
                w = base[cc]
                base[cc] = 0.0
                for q in range(lc_off[cc], lc_off[cc + 1]):
                    steps += 1
                    d = lc_sym[q]
                    was = out[j, d]
                    out[j, d] += w * lc_p[q] if is_prob else 1.0
                    if was == 0.0 and out[j, d] != 0.0:
                        row_sym[n_row] = d
                        n_row += 1
            if not is_prob:
                for p in range(n_row):
                    out[j, row_sym[p]] = 1.0
        # ---- the next-symbol weights after j tokens; c_j = the weight of the actual token
        if want_rows:
            rows[j, 0] = eos[j]
            for t in range(1, n_t + 1):
                s = 0.0
                for q in range(lex_off[t], lex_off[t + 1]):
                    s += out[j, lex_sym[q]] * lex_p[q]
                rows[j, t] = s
            steps += n_t
        if j < n:
            tok = x[j]
            s = 0.0
            for q in range(lex_off[tok], lex_off[tok + 1]):
                s += out[j, lex_sym[q]] * lex_p[q]
            if s <= 0.0:
                count[2] = j
                j = n  # dead prefix: done
            else:
                log_c[j] = np.log(s) if is_prob else 0.0
        count[0] = n_cells
        count[1] = n_ent
        count[3] = steps0 + steps
        if j >= n:
            return n + 1, cell_start, ent_off, ent_sym, ent_val
        if steps > budget or n_ent > MAX_CHART_ENTRIES:  # back to Python: signals, memory checks
            return j + 1, cell_start, ent_off, ent_sym, ent_val
    return n + 1, cell_start, ent_off, ent_sym, ent_val


@njit(cache=True)
def _new_state(n, n_sym, n_t, want_rows):
    """The arrays `_advance` keeps between calls for one string of n tokens."""
    log_c = np.full(n, -np.inf)
    eos = np.zeros(n + 1)
    rows = np.zeros((n + 1 if want_rows else 0, n_t + 1))
    out = np.zeros((n + 1, n_sym))  # pending left-corner weights, (n+1, N)
    acc = np.zeros((max(n, 1), n_sym))  # (n, N)
    acc_sym = np.zeros((max(n, 1), n_sym), np.int32)  # (n, N)
    acc_cnt = np.zeros(max(n, 1), np.int64)
    end_off = np.zeros(n + 2, np.int64)
    count = np.array([0, 0, -1, 0], np.int64)  # cells, entries, first_error, steps
    cell_start = np.empty(64, np.int64)
    ent_off = np.zeros(65, np.int64)
    ent_sym = np.empty(256, np.int64)
    ent_val = np.empty(256)
    return (
        log_c,
        eos,
        rows,
        out,
        acc,
        acc_sym,
        acc_cnt,
        end_off,
        count,
        cell_start,
        ent_off,
        ent_sym,
        ent_val,
    )


@njit(cache=True)
def _batch(ids, offsets, s0, budget, is_prob, res_err, res_end, res_logc, grammar):
    """Whole strings s0, s0+1, ... of the concatenation ids / offsets in one compiled call, until
    `budget` steps are spent. Per string s: res_err[s] = first error, res_end[s] = scaled EOS
    weight after the last token, res_logc[s] = sum of log c_m. Returns the first string not
    done: one that ran out of budget is left unfinished, to be swept alone (resumably)."""
    spent = 0
    n_max = 0
    for s in range(s0, offsets.shape[0] - 1):
        n_max = max(n_max, offsets[s + 1] - offsets[s])
    # one set of tables for the whole chunk (fresh pages cost more than the sweep of a short
    # string); each string uses their top-left corner and leaves it zeroed again
    st = _new_state(n_max, grammar[0], grammar[1], False)
    log_c, eos, rows, out, acc, acc_sym, acc_cnt, end_off, count = st[:9]
    cell_start, ent_off, ent_sym, ent_val = st[9:]
    for s in range(s0, offsets.shape[0] - 1):
        x = ids[offsets[s] : offsets[s + 1]]
        n = x.shape[0]
        count[0] = 0
        count[1] = 0
        count[2] = -1
        count[3] = 0
        k = max(n, 1)
        # this string's corner of the tables, then the chart arrays (shared, reused)
        view = (
            log_c[:n],
            eos[: n + 1],
            rows,
            out[: n + 1],
            acc[:k],
            acc_sym[:k],
            acc_cnt[:k],
            end_off[: n + 2],
            count,
            cell_start,
            ent_off,
            ent_sym,
            ent_val,
        )
        j, cell_start, ent_off, ent_sym, ent_val = _advance(
            x, 0, budget - spent, is_prob, False, view, grammar
        )
        last = n if count[2] == -1 else count[2]  # rows of out written
        out[: last + 1] = 0.0
        if j <= n:  # out of budget inside this string: it is swept alone
            return s
        res_err[s] = count[2]
        res_end[s] = eos[n]
        eos[: n + 1] = 0.0
        total = 0.0
        if count[2] == -1:
            for m in range(n):
                total += log_c[m]
        log_c[:n] = -np.inf
        res_logc[s] = total
        spent += count[3]
        if spent > budget:
            return s + 1
    return offsets.shape[0] - 1


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


def run(
    nf: NormalForm, x: np.ndarray, *, is_prob: bool, want_rows: bool = False, where: str = ""
) -> tuple:
    """Sweep one string (token ids 1..T), returning to Python every WORK_PER_CALL steps.

    Returns (log_c (n,), eos (n+1,), rows (n+1 or 0, T+1), first_error, cell_start, end_off,
    ent_off, ent_sym, ent_val) as documented in `_advance`."""
    if is_prob and nf.underflow:
        raise ExactError(nf.underflow)
    x = np.ascontiguousarray(x, dtype=np.int64)
    n = len(x)
    check_size(nf, n, want_rows, where)
    st = list(call_compiled(_new_state, n, nf.n_sym, nf.n_t, want_rows))
    g = _grammar_args(nf)
    j = 0
    while j <= n:  # each call returns within ~WORK_PER_CALL steps: Ctrl-C is seen between them
        j, st[9], st[10], st[11], st[12] = call_compiled(
            _advance, x, j, WORK_PER_CALL, is_prob, want_rows, tuple(st), g
        )
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
    call, a string that does not fit in one call's budget swept alone by `run`."""
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
    s = 0
    while s < b:
        nxt = call_compiled(_batch, ids, offsets, s, WORK_PER_CALL, is_prob, err, end, logc, g)
        if nxt == s:  # string s alone needs more than one call
            log_c, eos, _, e, *_ = run(nf, strings[s], is_prob=is_prob, where=f"string {s}: ")
            err[s], end[s] = e, eos[len(strings[s])]
            logc[s] = sum_log_c(log_c) if e == -1 else 0.0
            nxt = s + 1
        s = nxt
    return err, end, logc


def sum_log_c(log_c: np.ndarray) -> float:
    """The sum of log c_m added left to right, as `_batch` adds them (np.sum adds pairwise,
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
