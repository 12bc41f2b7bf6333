"""The analyze and report stages of a run: every analysis family of cfglab.analyze on the run's
model (a thin loop: the families do the work), and the report from the result files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cfglab import rundir
from cfglab.config import ExperimentConfig
from cfglab.errors import ConfigError
from cfglab.stages.common import (
    analysis_context,
    checkpoint_step,
    load_run_model,
    run_header,
)


def check_families(names: Sequence[str], registry: dict, key: str, what: str = "family") -> None:
    """Names (a config list or a command's selection) against their registry."""
    from cfglab.errors import did_you_mean

    for name in names:
        if name not in registry:
            raise ConfigError(
                f"{key}: unknown {what} {name!r}{did_you_mean(name, registry)}; choose from "
                f"{', '.join(registry)}"
            )


def check_target_names(names: list[str], grammar, key: str) -> None:
    """Known probe target names (cfglab.analyze.targets), each one the grammar has."""
    from cfglab.analyze.targets import TARGETS

    check_families(names, TARGETS, key, "target")
    for name in names:
        if not TARGETS[name].supports(grammar):
            have = [n for n, spec in TARGETS.items() if spec.supports(grammar)]
            needs = {
                "ancestor": "a layered grammar (like the cfg3 family)",
                "boundary": "a layered grammar (like the cfg3 family)",
                "block": "a language beyond context-free (cfglab.languages)",
                "offset": "a language beyond context-free (cfglab.languages)",
            }.get(name, "a context-free grammar")
            raise ConfigError(
                f"{key}: {name!r} needs {needs} and {grammar.name or 'the grammar'} is not one; "
                f"choose from {', '.join(have)}"
            )


def check_probe_targets(cfg: ExperimentConfig, grammar) -> None:
    """probe.targets: known names, each one the grammar has, and each restricted window of
    probe.windows (scored at NT ends) with a target that has NT ends (before any work)."""
    from cfglab.analyze.targets import default_targets

    names = cfg.probe.targets or []
    check_target_names(names, grammar, "probe.targets")
    if cfg.probe.windows != ["all"]:  # (the default: no window to check, no torch to import)
        _check_windows(cfg, grammar, names or default_targets(grammar))


def _check_windows(cfg: ExperimentConfig, grammar, names: list[str]) -> None:
    """A restricted probe window scores only at NT ends: some target must have them (whether
    one does is read off the targets built on a few strings, so a new target needs no entry)."""
    from cfglab.analyze.probe import SCORED_AT
    from cfglab.analyze.targets import TARGETS, build_targets
    from cfglab.data.sampler import sample
    from cfglab.errors import SamplingError

    restricted = [w for w in cfg.probe.windows if SCORED_AT[w] == "ends"]
    if not restricted:
        return
    try:
        batch = sample(grammar, 4, 0, max_len=cfg.data.max_len)
    except SamplingError:  # a grammar the sampler refuses: said by the data checks
        return
    if any(t.at_ends is not None for t in build_targets(grammar, batch, names)):
        return
    have = [n for n, spec in TARGETS.items() if spec.supports(grammar)]
    with_ends = {t.target for t in build_targets(grammar, batch, have) if t.at_ends is not None}
    raise ConfigError(
        f"probe.windows {restricted}: these windows score a probe at NT ends only, and no target "
        f"of probe.targets {names} has NT ends; add one that has ({', '.join(sorted(with_ends))}) "
        "or drop those windows"
    )


def run_analyze(cfg: ExperimentConfig, run_dir: Path, only: Sequence[str] | None = None) -> Path:
    """Every analysis family (or those in `only`) on the run's model -> analyze/<name>.json;
    prints each family's tables."""
    from cfglab.analyze.families import ANALYSES
    from cfglab.analyze.run import analyze, write_analyses
    from cfglab.report.tables import table_markdown

    if only is not None:
        check_families(only, ANALYSES, "--only")
    model, grammar = load_run_model(run_dir, cfg, cfg.analyze)
    check_probe_targets(cfg, grammar)
    out = analyze(analysis_context(cfg, model, grammar), only)
    header = run_header(run_dir, cfg, model, checkpoint_step(run_dir))
    for path, part in zip(write_analyses(run_dir, out, header), out.values(), strict=True):
        for table in part["tables"]:
            print("\n".join(table_markdown(table)))
        print(f"wrote {path}")
    return Path(run_dir) / rundir.ANALYZE


def run_report(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """report/report.md, report.html and figures from the run's result files (no model)."""
    from cfglab.report import build_report

    out = build_report(run_dir, compare=cfg.report.compare)
    print(f"wrote {out / 'report.md'}, {out / 'report.html'} and {out / 'figures'}/")
    return out
