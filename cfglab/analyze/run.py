"""One analysis: every analysis family on one model, then its files in the run directory.

`analyze(ctx, names)` runs the families of `ANALYSES` (all, or the named ones, which may also
be opt-in families of `OPT_IN_ANALYSES`: the intervene stage names its one) on an
AnalysisContext and returns {name: {"result", "rows", "tables", "figures", "compare",
"definitions"}}, skipping (with one line) the families that do not support the model;
`write_analyses(run_dir, out, header)` writes analyze/<name>.json through cfglab.rundir. The
analyze stage (cfglab.stages) builds the context from a run; the dynamics stage calls `analyze`
once per kept checkpoint; tests build the context from any model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from cfglab import rundir
from cfglab.analyze import families
from cfglab.analyze.context import AnalysisContext


def analyze(ctx: AnalysisContext, names: Sequence[str] | None = None) -> dict[str, dict]:
    """Every (named) family's result, rows, tables, figures and cross-run views."""
    out = {}
    every = _every()
    for name in names if names is not None else list(families.ANALYSES):
        family = every[name]
        why_not = family.supports(ctx)
        if why_not:
            ctx.log(f"{name}: skipped: {why_not}")
            continue
        t0 = time.perf_counter()
        result = family.measure(ctx)
        out[name] = {
            "title": family.TITLE,
            "result": result,
            "rows": family.summary_rows(result),
            "tables": family.tables(result),
            "figures": family.figures(result),
            "compare": family.COMPARE,
            "definitions": family.DEFINITIONS,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def _every() -> dict:
    """Every family by name, the report's order: the default ones, then the opt-in ones (read
    at each call: a test may plant a family in the registry)."""
    return {**families.ANALYSES, **families.OPT_IN_ANALYSES}


def write_analyses(run_dir: str | Path, out: dict[str, dict], header: dict) -> list[Path]:
    """analyze/<name>.json per family measured: the header (run, model, provenance, settings),
    the result under the family's name, and its rows, tables, figures, views, definitions."""
    paths = []
    for name, part in out.items():
        body = {
            **header,
            "order": list(_every()).index(name),
            name: part["result"],
            **{
                k: part[k] for k in ("title", "rows", "tables", "figures", "compare", "definitions")
            },
            "seconds": part["seconds"],
        }
        paths.append(rundir.write_result(run_dir, f"{rundir.ANALYZE}/{name}", body))
    return paths
