"""The intervene stage: the interventions family (cfglab.analyze.interventions: erasure and its
cost in generation accuracy, activation patching of the residual stream and of single heads,
head ablation) on a run's model -> analyze/interventions.json.

`cfglab intervene RUN` runs it on a trained run; `stages: [..., intervene]` runs it in `cfglab
run`. It is never a default stage (hundreds of hooked forward passes and, with the defaults,
64 sampled strings per eraser: ~35 s wall, 23 CPU s, on the quickstart on 2 busy cores). The
context's sampler (cfglab.stages.common.analysis_context) is the eval family's. Everything
it can refuse (an encoder, probe targets the grammar lacks) is refused by `check_intervene`
before any work; the file has the shape of every analysis family's
(cfglab.analyze.run.write_analyses), so `cfglab report` and `cfglab compare` render it.
"""

from __future__ import annotations

from pathlib import Path

from cfglab import rundir
from cfglab.config import ExperimentConfig
from cfglab.errors import ConfigError
from cfglab.stages.common import analysis_context, checkpoint_step, load_run_model, run_header

NAME = "interventions"  # the family (cfglab.analyze.families.OPT_IN_ANALYSES) and its file


def check_intervene(cfg: ExperimentConfig, grammar) -> None:
    """Before any work: a causal model (an encoder has no next-token distribution), and
    intervene.targets known probe targets the grammar has."""
    from cfglab.stages.analysis import check_target_names

    if cfg.train.objective == "mlm":
        raise ConfigError(
            "the intervene stage scores next-token predictions against the exact distribution, "
            "and a masked-LM encoder (train.objective mlm) makes none; drop intervene from stages"
        )
    check_target_names(cfg.intervene.targets or [], grammar, "intervene.targets")


def run_intervene(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """The interventions family on the run's latest model -> analyze/interventions.json;
    prints its tables."""
    from cfglab.analyze.families import OPT_IN_ANALYSES
    from cfglab.analyze.run import analyze, write_analyses
    from cfglab.report.tables import table_markdown

    model, grammar = load_run_model(run_dir, cfg, cfg.analyze)
    check_intervene(cfg, grammar)
    ctx = analysis_context(cfg, model, grammar)
    why_not = OPT_IN_ANALYSES[NAME].supports(ctx)
    if why_not:
        raise ConfigError(f"cfglab intervene {run_dir}: {why_not}")
    out = analyze(ctx, [NAME])  # the analyze stage's own measure and write, for this family
    (path,) = write_analyses(
        run_dir, out, run_header(run_dir, cfg, model, checkpoint_step(run_dir))
    )
    for table in out[NAME]["tables"]:
        print("\n".join(table_markdown(table)))
    print(f"wrote {path} ({out[NAME]['seconds']} s)")
    return Path(run_dir) / rundir.ANALYZE
