"""Small compiled helpers of the chart sweep (sweep.py): growable buffers, sorted short lists and
a binary heap of ints, all in nopython mode (no torch)."""

from __future__ import annotations

import numpy as np
from numba import njit


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
