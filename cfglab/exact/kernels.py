"""The compiled parts of the chart sweep (`sweep.py` describes the algorithm and drives them):
`advance` sweeps span ends of one string, `batch` whole strings, `new_state` allocates what
persists between calls, `grow_chart` makes room in the chart; below them, the steps of one
span end and small helpers (sorted short lists, a max-heap of ints). Nopython mode, no torch.

The steps of one span end are separate functions for reading, which `inline="always"`
compiles into `advance`. Numba gives each array passed to an inlined function a reference of
its own (an atomic increment, and a decrement after the call) and LLVM removes the pair only
when all such arrays die at one point; so that no cell or end pays for it: (1) a step calls no
compiled function (a call adds an exception exit: the sorting and heap pushes happen in
`advance`, between the steps) and uses no array for the last time inside an `if`; (2)
`advance` never reassigns an array, so the chart arrays do not grow inside it: it stops when
they lack room for one more cell, its caller grows them (`grow_chart`) and calls it again,
and it resumes inside the same end. Measured on cfg3f: breaking a rule costs +12% to +90%;
keeping them makes the sweep ~2x faster than the single 200-line function it replaced, whose
growing chart arrays paid that toll on every cell.

The entry points called from Python (`advance`, `batch`, `new_state`, `grow_chart`) release
the GIL (`nogil=True`), so `sweep.py` can sweep different strings in threads at once.

Everything compiled lives in this one file because Numba's cache notices only a change of the
file that holds the cached function: a helper edited in another file would leave stale
machine code behind.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def advance(x, j0, budget, max_entries, is_prob, want_rows, state, grammar):
    """Sweep span ends j = j0, j0+1, ... of the string x (n,) of token ids 1..T until the end,
    or until more than `budget` inner steps were taken or more than `max_entries` chart entries
    stored (then it stops after a whole end), or until the chart arrays lack room for one more
    cell (then it stops inside end j, sets count[4] = 1 and resumes there on the next call).
    `state` = `new_state(...)` (updated in place), `grammar` = `sweep._grammar_args(nf)`.
    Returns the next j: n+1 when the string is done (or dead: count[2] >= 0)."""
    log_c, eos, rows, out, acc, acc_sym, acc_cnt, end_off, count = state[:9]
    cell_start, ent_off, ent_sym, ent_val = state[9:]
    n_sym, n_t, lex_off, lex_sym, lex_p, bin_off, bin_parent, bin_right, bin_p = grammar[:9]
    up_off, up_sym, up_p, lc_off, lc_sym, lc_p = grammar[9:]
    n = x.shape[0]
    fin = np.zeros(n_sym)  # the cell (k, j) being closed, densely, and its symbols
    fin_sym = np.empty(n_sym, np.int64)
    rv = np.zeros(n_sym)  # the cell (k, j) scattered densely while it is combined
    base = np.zeros(n_sym)  # right children made pending at j, densely, and their symbols
    base_sym = np.empty(n_sym, np.int64)
    heap = np.empty(max(n, 1), np.int64)  # starts k with a non-empty acc[k] at the current end
    fresh = np.empty(max(n, 1), np.int64)  # starts that a combination made non-empty
    chart = (end_off, cell_start, ent_off, ent_sym, ent_val)  # (never reassigned here)
    cap_cells = min(cell_start.shape[0], ent_off.shape[0] - 1)
    cap_entries = min(ent_sym.shape[0], ent_val.shape[0])
    n_cells, n_ent, steps0, steps = count[0], count[1], count[3], 0
    inside = count[4] == 1  # resuming inside end j0
    count[4] = 0
    if j0 == 0:
        # k = 0: only the start symbol is pending, closed over its left corners
        for q in range(lc_off[0], lc_off[1]):
            out[0, lc_sym[q]] = lc_p[q] if is_prob else 1.0
    for j in range(j0, n + 1):
        if j > 0:
            if inside:  # seeded before it stopped: the starts with sums still to close
                n_heap = _heap_of_starts(acc_cnt, j, heap)
                inside = False
            else:  # ---- cells ending at j: seed the lexical cell (j-1, j), divided by c_{j-1}
                scale = np.exp(-log_c[j - 1]) if is_prob else 1.0
                _seed_leaf(x[j - 1], j - 1, scale, is_prob, out, acc, acc_sym, acc_cnt, grammar)
                n_heap = _heap_push(heap, 0, j - 1) if acc_cnt[j - 1] > 0 else 0
                end_off[j] = n_cells
            # starts k from right to left (a max-heap of the non-empty ones): every cell (k, j)
            # is complete before any cell (i < k, j) that it feeds
            while n_heap > 0:
                if n_cells + 1 > cap_cells or n_ent + n_sym > cap_entries:
                    count[0], count[1], count[3], count[4] = n_cells, n_ent, steps0 + steps, 1
                    return j  # no room for one more cell: the caller grows the chart arrays
                k, n_heap = _heap_pop(heap, n_heap)
                m = acc_cnt[k]
                acc_cnt[k] = 0
                if m > 1:  # (a view costs reference counting: only when there is work)
                    _sort_small(acc_sym[k], m)
                n_fin, s = _close_cell(k, m, is_prob, out, acc, acc_sym, fin, fin_sym, grammar)
                steps += 1 + s
                if n_fin > m:
                    _sort_small(fin_sym, n_fin)
                # store the cell (k, j), then combine it with every cell (i, k) ending at k
                first = n_ent
                n_ent = _store_cell(n_fin, is_prob, fin, fin_sym, ent_sym, ent_val, n_ent)
                cell_start[n_cells] = k
                ent_off[n_cells] = first
                ent_off[n_cells + 1] = n_ent
                n_cells += 1
                n_fresh, s = _combine(
                    k, first, n_ent, is_prob, rv, out, acc, acc_sym, acc_cnt, fresh, chart, grammar
                )
                steps += s
                for p in range(n_fresh):
                    n_heap = _heap_push(heap, n_heap, fresh[p])
            end_off[j + 1] = n_cells
            # ---- pending symbols after j tokens, closed over left corners
            n_base, s = _right_children(j, is_prob, out, eos, base, base_sym, chart, grammar)
            if n_base > 1:
                _sort_small(base_sym, n_base)
            steps += s + _left_corners(j, n_base, is_prob, out, base, base_sym, grammar)
        # ---- the next-symbol weights after j tokens; c_j = the weight of the actual token
        if want_rows:
            rows[j, 0] = eos[j]
            for t in range(1, n_t + 1):
                rows[j, t] = _token_weight(j, t, out, lex_off, lex_sym, lex_p)
            steps += n_t
        if j < n:
            c = _token_weight(j, x[j], out, lex_off, lex_sym, lex_p)
            if c <= 0.0:
                count[2] = j
                j = n  # dead prefix: done
            else:
                log_c[j] = np.log(c) if is_prob else 0.0
        count[0], count[1], count[3] = n_cells, n_ent, steps0 + steps
        if j >= n:
            return n + 1
        if steps > budget or n_ent > max_entries:  # back to Python: signals, memory checks
            return j + 1
    return n + 1


# ---- the steps of one span end j, compiled into `advance` (rules: module docstring) ----------
@njit(cache=True, inline="always")
def _seed_leaf(tok, k, scale, is_prob, out, acc, acc_sym, acc_cnt, grammar):
    """The lexical cell (k, k+1) of token `tok` into acc[k] (weights times `scale`), for the
    symbols pending at k; acc_sym[k] lists the symbols touched."""
    lex_off, lex_sym, lex_p = grammar[2], grammar[3], grammar[4]
    for q in range(lex_off[tok], lex_off[tok + 1]):
        a = lex_sym[q]
        if out[k, a] > 0.0:
            was = acc[k, a]
            acc[k, a] += lex_p[q] * scale if is_prob else 1.0
            if was == 0.0 and acc[k, a] != 0.0:
                acc_sym[k, acc_cnt[k]] = a
                acc_cnt[k] += 1


@njit(cache=True, inline="always")
def _close_cell(k, m, is_prob, out, acc, acc_sym, fin, fin_sym, grammar):
    """The cell (k, j) from the pre-unary sums acc[k] of its m symbols acc_sym[k, :m] (sorted):
    fin = U* acc[k], kept where the symbol is pending at k, its symbols in fin_sym (the first m
    in order, those the unary rules add after them). Clears acc[k]. Returns (symbols, steps)."""
    up_off, up_sym, up_p = grammar[9], grammar[10], grammar[11]
    for p in range(m):
        a = acc_sym[k, p]
        fin[a] = acc[k, a]
        fin_sym[p] = a
    n_fin, steps = m, 0
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
    for p in range(m):
        acc[k, acc_sym[k, p]] = 0.0
    return n_fin, steps


@njit(cache=True, inline="always")
def _store_cell(n_fin, is_prob, fin, fin_sym, ent_sym, ent_val, n_ent):
    """The closed cell's entries appended at ent_sym / ent_val[n_ent:] (room made); clears
    fin. Returns the new entry count."""
    for p in range(n_fin):
        a = fin_sym[p]
        ent_sym[n_ent] = a
        ent_val[n_ent] = fin[a] if is_prob else 1.0
        fin[a] = 0.0
        n_ent += 1
    return n_ent


@njit(cache=True, inline="always")
def _combine(k, first, last, is_prob, rv, out, acc, acc_sym, acc_cnt, fresh, chart, grammar):
    """A -> B C with B over a cell (i, k) and C in the cell (k, j) (the entries first..last-1,
    scattered densely in rv meanwhile) adds to acc[i, A] when A is pending at i; the starts i
    it makes non-empty go to fresh, in order. Returns (their number, steps)."""
    end_off, cell_start, ent_off, ent_sym, ent_val = chart
    bin_off, bin_parent, bin_right, bin_p = grammar[5], grammar[6], grammar[7], grammar[8]
    for e in range(first, last):
        rv[ent_sym[e]] = ent_val[e]
    n_fresh, steps = 0, 0
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
                                fresh[n_fresh] = i
                                n_fresh += 1
                            acc_sym[i, acc_cnt[i]] = a
                            acc_cnt[i] += 1
    for e in range(first, last):
        rv[ent_sym[e]] = 0.0
    return n_fresh, steps


@njit(cache=True, inline="always")
def _right_children(j, is_prob, out, eos, base, base_sym, chart, grammar):
    """A -> B C pending at i and B over a cell (i, j) make C pending at j: base[C] sums their
    weights, base_sym lists the C touched; eos[j] = the root's weight over (0, j). Returns
    (their number, steps)."""
    end_off, cell_start, ent_off, ent_sym, ent_val = chart
    bin_off, bin_parent, bin_right, bin_p = grammar[5], grammar[6], grammar[7], grammar[8]
    n_base, steps = 0, 0
    for c in range(end_off[j], end_off[j + 1]):
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
    return n_base, steps


@njit(cache=True, inline="always")
def _left_corners(j, n_base, is_prob, out, base, base_sym, grammar):
    """out[j] = the right children base (their symbols sorted in base_sym[:n_base]) closed over
    left corners, added in increasing symbol order (in boolean mode every weight is 1); clears
    base. Returns the steps taken."""
    lc_off, lc_sym, lc_p = grammar[12], grammar[13], grammar[14]
    steps = 0
    for p in range(n_base):
        cc = base_sym[p]
        w = base[cc]
        base[cc] = 0.0
        for q in range(lc_off[cc], lc_off[cc + 1]):
            steps += 1
            if is_prob:
                out[j, lc_sym[q]] += w * lc_p[q]
            else:
                out[j, lc_sym[q]] = 1.0
    return steps


@njit(cache=True, inline="always")
def _token_weight(j, t, out, lex_off, lex_sym, lex_p):
    """The weight of token t after j tokens: sum over A -> t of out[j, A] P(A -> t)."""
    s = 0.0
    for q in range(lex_off[t], lex_off[t + 1]):
        s += out[j, lex_sym[q]] * lex_p[q]
    return s


# ---- the tables of one string, many strings ---------------------------------------------------
@njit(cache=True, nogil=True)
def new_state(n, n_sym, n_t, want_rows):
    """The arrays `advance` keeps between calls for one string of n tokens, in this order:
    log_c (n,) = log c_m (0 in boolean mode, -inf from the first error on); eos (n+1,) scaled
    P(the string ends after k tokens); rows (n+1 or 0, T+1) unnormalised next-symbol weights
    [EOS, t=1..T]; out (n+1, N) pending weights; acc (n, N) pre-unary sums of the cells (k, j)
    of the current end, with their touched symbols acc_sym (n, N) and counts acc_cnt (n,) (all
    zero between ends); end_off (n+2,); count = [cells, entries, first_error, steps, stopped
    inside an end]; then the chart: cells (cell_start[c], j) for c in end_off[j] ..
    end_off[j+1]-1, with entries ent_off[c] .. ent_off[c+1]-1 of (ent_sym, ent_val), sized for
    ~4 cells per token (the cfg3 grammars need fewer) and grown by `grow_chart`."""
    log_c = np.full(n, -np.inf)
    eos = np.zeros(n + 1)
    rows = np.zeros((n + 1 if want_rows else 0, n_t + 1))
    out = np.zeros((n + 1, n_sym))  # pending left-corner weights, (n+1, N)
    acc = np.zeros((max(n, 1), n_sym))  # (n, N)
    acc_sym = np.zeros((max(n, 1), n_sym), np.int32)  # (n, N)
    acc_cnt = np.zeros(max(n, 1), np.int64)
    end_off = np.zeros(n + 2, np.int64)
    count = np.array([0, 0, -1, 0, 0], np.int64)  # cells, entries, first_error, steps, inside
    cell_start = np.empty(4 * n + 64, np.int64)
    ent_off = np.zeros(4 * n + 65, np.int64)
    ent_sym = np.empty(4 * n + 256 + n_sym, np.int64)
    ent_val = np.empty(4 * n + 256 + n_sym)
    chart = (cell_start, ent_off, ent_sym, ent_val)
    return (log_c, eos, rows, out, acc, acc_sym, acc_cnt, end_off, count) + chart


@njit(cache=True, nogil=True)
def grow_chart(cell_start, ent_off, ent_sym, ent_val, count, n_sym):
    """The chart arrays with room for at least one more cell of up to n_sym entries (sizes
    doubled, so a string's growth costs amortised O(1) per entry)."""
    n_cells, n_ent = count[0], count[1]
    return (
        _grow(cell_start, n_cells + 1),
        _grow(ent_off, n_cells + 2),
        _grow(ent_sym, n_ent + n_sym),
        _grow(ent_val, n_ent + n_sym),
    )


@njit(cache=True, nogil=True)
def batch(ids, offsets, s0, budget, max_entries, is_prob, res_err, res_end, res_logc, grammar):
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
    st = new_state(n_max, grammar[0], grammar[1], False)
    log_c, eos, rows, out, acc, acc_sym, acc_cnt, end_off, count = st[:9]
    chart = st[9:]  # (cell_start, ent_off, ent_sym, ent_val): shared, grown when full
    for s in range(s0, offsets.shape[0] - 1):
        x = ids[offsets[s] : offsets[s + 1]]
        n = x.shape[0]
        count[:] = 0
        count[2] = -1
        k = max(n, 1)
        # this string's corner of the tables
        corner = (log_c[:n], eos[: n + 1], rows, out[: n + 1], acc[:k], acc_sym[:k], acc_cnt[:k])
        j = 0
        while j <= n:
            state = corner + (end_off[: n + 2], count) + chart
            left = budget - spent - count[3]
            j = advance(x, j, left, max_entries, is_prob, False, state, grammar)
            if count[4] == 0:  # done, or out of budget
                break
            chart = grow_chart(chart[0], chart[1], chart[2], chart[3], count, grammar[0])
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


# ---- small helpers ---------------------------------------------------------------------------
@njit(cache=True)
def _grow(a, need):
    # one body serves int64 and float64 arrays: numba compiles a specialisation per dtype
    if need <= a.shape[0]:
        return a
    b = np.empty(max(need, 2 * a.shape[0]), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _sort_small(a, n):
    """Sort a[:n] in place: insertion sort for the usual handful of touched symbols."""
    if n > 32:
        a[:n].sort()
        return
    for p in range(1, n):
        v = a[p]
        q = p - 1
        while q >= 0 and a[q] > v:
            a[q + 1] = a[q]
            q -= 1
        a[q + 1] = v


@njit(cache=True)
def _heap_push(h, size, v):
    """Push v on the max-heap h[:size]; returns the new size."""
    h[size] = v
    i = size
    while i > 0:
        p = (i - 1) // 2
        if h[p] >= h[i]:
            break
        h[p], h[i] = h[i], h[p]
        i = p
    return size + 1


@njit(cache=True)
def _heap_pop(h, size):
    """Pop the largest value of the max-heap h[:size]; returns (value, new size)."""
    top = h[0]
    size -= 1
    h[0] = h[size]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and h[c + 1] > h[c]:
            c += 1
        if h[i] >= h[c]:
            break
        h[i], h[c] = h[c], h[i]
        i = c
    return top, size


@njit(cache=True)
def _heap_of_starts(acc_cnt, j, heap):
    """The max-heap of the starts k < j with pre-unary sums still to close (resuming inside an
    end: the pops come in the same order, largest start first). Returns its size."""
    n_heap = 0
    for k in range(j):
        if acc_cnt[k] > 0:
            n_heap = _heap_push(heap, n_heap, k)
    return n_heap
