"""The start-up of a process that runs the exact algorithms once and exits (`cfglab parse`,
`cfglab prob`): `with one_shot(): ...` around the command.

Such a command's fixed cost is mostly Numba's (measured on cfg3f, 2 shared cores: Python and
NumPy ~60 ms, `import numba` ~125 ms, the first load of a cached kernel ~250 ms, exit ~150
ms). Three parts of it do no work for us, and `one_shot` skips them:

- Numba's first cache load imports its whole library of implementations, among them
  `numba.np.arraymath`, whose import-time BLAS probe imports `scipy.linalg` (~140 ms) when
  scipy is installed (the `bench` extra brings it). Our kernels call no BLAS; the probe only
  decides whether `np.correlate` / `np.convolve` in compiled code call BLAS or a plain loop,
  so the probe runs with scipy hidden (the process compiles nothing else);
- Python's cyclic garbage collector runs dozens of times while Numba builds its ~100,000
  objects and frees nothing (~50 ms): it is paused for the command;
- interpreter shutdown collects every object that is still alive (~100 ms): they are frozen
  when the command ends (`gc.freeze`), so shutdown skips them. (A caller that goes on, such
  as a test calling `cli.main`, keeps those objects out of later collections: harmless.)
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def one_shot() -> Iterator[None]:
    """Run the block with the garbage collector paused and Numba loading without scipy; the
    objects alive at its end are frozen (never collected again: for a command that exits)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _numba_without_scipy()
        yield
        gc.freeze()
    finally:
        if was_enabled:
            gc.enable()


def _numba_without_scipy() -> None:
    """Load Numba's implementations as its first cache load would (`refresh`, in Numba's own
    order) with scipy hidden, so the BLAS probe finds none instead of importing scipy.linalg.
    (Numba imports the scipy package itself, which is cheap: it is put back afterwards.)"""
    from numba.core.registry import cpu_target

    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return  # probed already, or scipy.linalg is loaded and costs nothing more
    scipy = sys.modules.get("scipy")
    sys.modules["scipy"] = None  # `import scipy.linalg...` raises ImportError
    try:
        cpu_target.target_context.refresh()
    finally:
        if scipy is None:
            del sys.modules["scipy"]
        else:
            sys.modules["scipy"] = scipy
