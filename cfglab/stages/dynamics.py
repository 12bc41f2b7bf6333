"""The dynamics stage: the eval and analysis families at every kept checkpoint of a run.

A loop over the checkpoints that train.keep_steps kept (and the last): each checkpoint's model
gets the eval families of `dynamics.eval` (cut0 only, dynamics.n_samples generations and
dynamics.n_kl KL strings; the eval section's seeds and first temperature), the training loop's
own validation loss (cfglab.train.steps.validation_loss) and the analysis families of
`dynamics.analyses` (the probe section's settings, its first window, and the layers of
`dynamics.probe_layers`: by default the last, the one emergence reads). Every row they give is
tagged with the checkpoint's `step`. What does not depend on the model (true strings, exact
distributions, labelled strings, the random-init twin's numbers) is computed once and shared.
At the final checkpoint the numbers are the eval and analyze stages' for the same sizes and
seeds. An encoder (masked LM) does not generate: it gets the analysis families only.

Writes analyze/dynamics.json: the rows, the emergence table computed from them with its
bootstrap intervals (cfglab.analyze.dynamics; the probes' per-string counts of every checkpoint
resampled), and the figures, tables and cross-run views as data.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cfglab import rundir
from cfglab.config import ExperimentConfig
from cfglab.stages.analysis import check_families
from cfglab.stages.common import analysis_context, load_run_model, run_header, say

SHOWN = ("val_loss", "accuracy", "kl")  # the progress line's numbers per checkpoint


def check_dynamics(cfg: ExperimentConfig) -> None:
    """Before any work: the families the dynamics section names exist, and an encoder is not
    asked for eval families (it does not generate)."""
    from cfglab.analyze.families import ANALYSES
    from cfglab.errors import ConfigError
    from cfglab.evaluate.families import FAMILIES

    d = cfg.dynamics
    check_families(d.eval, FAMILIES, "dynamics.eval")
    check_families(d.analyses, ANALYSES, "dynamics.analyses")
    if d.eval and not cfg.model.causal:
        raise ConfigError(
            f"dynamics.eval {d.eval}: a masked-LM encoder does not generate; set dynamics.eval "
            "to [] (its analysis families still run at every checkpoint)"
        )


def dynamics_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The settings every checkpoint is measured with: the eval section at the dynamics sizes
    (cut0, the first temperature), the probe section with its first window."""
    from cfglab.config.schema import resolved_seeds

    cfg = resolved_seeds(cfg)
    d = cfg.dynamics
    evals = dataclasses.replace(
        cfg.eval,
        n_samples=d.n_samples,
        n_kl=d.n_kl,
        cuts=[0],
        temperatures=cfg.eval.temperatures[:1],
    )
    probe = dataclasses.replace(cfg.probe, windows=cfg.probe.windows[:1], layers=d.probe_layers)
    return dataclasses.replace(cfg, eval=evals, probe=probe)


def _collect_per_string(result: dict, step: int, per_string: dict) -> None:
    """The probe family's last-layer counts per test string, keyed as the emergence table
    keys its curves (cfglab.analyze.dynamics.probe_key), for the bootstrap interval."""
    from cfglab.analyze.dynamics import probe_key

    for t in result["tables"]:
        counts = t["last_layer_per_string"]
        for i, column in enumerate(t["columns"]):
            key = probe_key({"target": t["target"], "window": t["window"], **column})
            twin = counts["correct"].get("random_init")
            entry = per_string.setdefault(
                key,
                {"tokens": counts["tokens"][i], "twin": twin[i] if twin else None, "correct": {}},
            )
            entry["correct"][step] = counts["correct"]["model"][i]


def _measure_checkpoint(cfg, model, grammar, step: int, shared: dict) -> list[dict]:
    """Every row of one checkpoint, tagged with its step (the probes' per-string counts go to
    shared["per_string"])."""
    from cfglab.analyze.run import analyze
    from cfglab.evaluate.run import evaluate
    from cfglab.stages.evaluation import eval_context
    from cfglab.train.steps import validation_loss

    rows = []
    if cfg.dynamics.eval and cfg.model.causal:
        ctx = eval_context(
            cfg, model, grammar, cfg.eval, memo=shared["eval"], run_dir=shared["run_dir"], step=step
        )
        rows += [
            {k: v for k, v in r.items() if k != "family"}
            for r in evaluate(ctx, cfg.dynamics.eval)["rows"]
        ]
    device = next(model.parameters()).device
    val = validation_loss(model, cfg, grammar, device=device, windows=shared["windows"])
    rows.append({"metric": "val_loss", "value": val, "n": cfg.train.eval_batches})
    ctx = analysis_context(cfg, model, grammar, memo=shared["memo"], strings=shared["strings"])
    for name, part in analyze(ctx, cfg.dynamics.analyses).items():
        rows += part["rows"]
        if name == "probe":
            _collect_per_string(part["result"], step, shared["per_string"])
    return [{**r, "step": step} for r in rows]


def run_dynamics(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """Measure every kept checkpoint -> analyze/dynamics.json."""
    from cfglab.analyze import dynamics
    from cfglab.analyze.families import ANALYSES
    from cfglab.evaluate.families import FAMILIES
    from cfglab.seeds import stream_seed
    from cfglab.train import checkpoint as ckpt
    from cfglab.train.steps import validation_windows

    check_dynamics(cfg)
    kept = ckpt.list_checkpoints(run_dir)
    if not kept:
        raise ckpt.CheckpointError(f"no checkpoint in {run_dir}; train it first")
    cfg = dynamics_config(cfg)
    t_start = time.perf_counter()
    rows: list[dict] = []
    shared = {"eval": {}, "memo": {}, "strings": {}, "windows": None, "per_string": {}}
    shared["run_dir"] = run_dir  # memorisation (if in dynamics.eval): seen before each step
    for step, path in kept:
        t0 = time.perf_counter()
        model, grammar = load_run_model(run_dir, cfg, cfg.eval, checkpoint=path)
        if shared["windows"] is None:
            shared["windows"] = validation_windows(cfg, grammar)
        mine = _measure_checkpoint(cfg, model, grammar, step, shared)
        rows += mine
        said = {r["metric"]: r["value"] for r in mine if r["metric"] in SHOWN}
        cells = ", ".join(f"{k} {v:.4f}" for k, v in said.items())
        say(f"dynamics: step {step}: {cells} ({time.perf_counter() - t0:.1f} s)")
    seed = stream_seed(cfg.probe.seed, "emergence_bootstrap")
    table = dynamics.emergence_table(rows, shared["per_string"], seed=seed)
    definitions = {}
    for name in cfg.dynamics.eval:
        definitions.update(FAMILIES[name].DEFINITIONS)
    for name in cfg.dynamics.analyses:
        definitions.update(ANALYSES[name].DEFINITIONS)
    body = {
        **run_header(run_dir, cfg, model, kept[-1][0]),
        "title": "Training dynamics",
        "steps": [s for s, _ in kept],
        "settings": {"dynamics": dataclasses.asdict(cfg.dynamics), "eval_seed": cfg.eval.seed},
        "rows": rows + dynamics.emergence_rows(table),
        "emergence": table,
        "tables": dynamics.tables(table),
        "figures": dynamics.figures(rows),
        "compare": dynamics.COMPARE,
        "definitions": definitions,
        "order": 100,  # after the analysis families in the report
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    path = rundir.write_result(run_dir, f"{rundir.ANALYZE}/dynamics", body)
    from cfglab.report.tables import table_markdown

    for t in body["tables"]:
        print("\n".join(table_markdown(t)))
    print(f"wrote {path}")
    return path
