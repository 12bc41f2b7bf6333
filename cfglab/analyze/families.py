"""The analysis families, in the order they run: one line per family (the protocol of
cfglab.evaluate.families, for what a model holds inside).

A family is a module with
- `TITLE`: its section heading in the run report;
- `DEFINITIONS`: metric name -> what exactly is averaged over what;
- `supports(ctx)`: None, or why this model cannot be analysed so (the family is then skipped
  and the stage says so in one line);
- `measure(ctx: AnalysisContext)` -> a JSON-ready result;
- `summary_rows(result)` -> tidy rows {metric, value, n, [qualifiers: target, window, level,
  layer, model, pattern, ...]} that the report and `cfglab compare` render without knowing the
  family;
- `tables(result)` and `figures(result)`: the run report's tables and figures as data
  ({"title", "header", "rows"}; {"name", "kind": "heatmaps" | "lines", "panels", ...}, drawn by
  cfglab.report.figures);
- `COMPARE`: the cross-run figures as data (which metric, which qualifier on the x axis, which
  as panels and line styles), drawn by `cfglab compare` over the runs' rows.
The analyze stage writes each family's result to analyze/<name>.json; the dynamics stage runs
the same families at every kept checkpoint. A new family is one new module and one line here.

`OPT_IN_ANALYSES` keeps the same protocol for families too costly to run by default: each has a
stage and a command of its own (`interventions`: the `intervene` stage, `cfglab intervene RUN`,
some hundreds of hooked forward passes); `cfglab analyze` and the dynamics stage do not run
them, and their files sit in analyze/ beside the others, after them in the report.
"""

from __future__ import annotations

from types import ModuleType

from cfglab.analyze import attention, embedding, interventions, probe_tree

ANALYSES: dict[str, ModuleType] = {
    "probe": probe_tree,  # linear probes for the parse tree per layer
    "attention": attention,  # position- and boundary-based attention, head scores
    "embedding": embedding,  # token geometry: cosine within and across bags
}
OPT_IN_ANALYSES: dict[str, ModuleType] = {
    "interventions": interventions,  # erasure, activation patching, head ablation (intervene)
}
