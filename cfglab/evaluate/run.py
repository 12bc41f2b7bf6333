"""One evaluation: every metric family on one model, then its files in the run directory.

`evaluate(ctx)` runs `FAMILIES` in order on an EvalContext (any model: a trained GPT, the
exact oracle, a baseline) and returns {"results": {family: result}, "rows": summary rows,
"timing", "settings"}; `write_eval(run_dir, out)` writes eval/<family>.json and
eval/summary.json through cfglab.rundir. The eval stage (cfglab.stages) builds the context from
a run; tests build it from the oracle.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cfglab import rundir
from cfglab.config import EvalConfig
from cfglab.evaluate.adapters import GenerateFn, LogProbFn
from cfglab.evaluate.context import EvalContext
from cfglab.evaluate.families import FAMILIES
from cfglab.grammar.cfg import Grammar


def evaluate(ctx: EvalContext, names: Sequence[str] | None = None) -> dict:
    """Every applicable family's (or the named families') result and summary rows; see the
    module docstring."""
    results, rows, seconds = {}, [], {}
    if names is None:
        names = list(FAMILIES)
        if ctx.in_context is not None:  # every window its own grammar: no family of one grammar
            names = [n for n in names if getattr(FAMILIES[n], "IN_CONTEXT", False)]
    for name in names:
        family = FAMILIES[name]
        t0 = time.perf_counter()
        result = family.measure(ctx)
        seconds[name] = time.perf_counter() - t0
        if result is None:  # not applicable (e.g. robustness without eval.corrupt)
            continue
        results[name] = result
        rows += [{"family": name, **row} for row in family.summary_rows(result)]
    settings = {
        **dataclasses.asdict(ctx.settings),
        "n_kl": ctx.n_kl,
        "max_len": ctx.max_len,
        "grammar": ctx.grammar.name,
    }
    timing = {"seconds": ctx.clock.seconds, "family_seconds": seconds}
    return {"results": results, "rows": rows, "timing": timing, "settings": settings}


def evaluate_model(
    grammar: Grammar,
    logprob: LogProbFn,
    make_generate: Callable[[float], GenerateFn],
    settings: EvalConfig,
    *,
    max_len: int | None = None,
    training: set[bytes] | None = None,
) -> dict:
    """`evaluate` on a context built from its parts (any model: the oracle, a baseline)."""
    return evaluate(
        EvalContext(grammar, logprob, make_generate, settings, max_len=max_len, training=training)
    )


def write_eval(run_dir: str | Path, out: dict) -> Path:
    """eval/<family>.json for each family measured (a family's earlier file that this
    evaluation did not rewrite is removed: it would be stale) and eval/summary.json."""
    for name, family in FAMILIES.items():
        kind = f"{rundir.EVAL}/{name}"
        if name not in out["results"]:
            rundir.remove_result(run_dir, kind)
            continue
        body = {
            "settings": out["settings"],
            name: out["results"][name],
            "definitions": family.DEFINITIONS,
        }
        rundir.write_result(run_dir, kind, body)
    summary = {"settings": out["settings"], "rows": out["rows"], "timing": out["timing"]}
    rundir.write_result(run_dir, f"{rundir.EVAL}/summary", summary)
    return Path(run_dir) / rundir.EVAL
