"""The stage commands: `cfglab eval`, `analyze`, `probe`, `attention`, `intervene`, `dynamics`,
`report`.

Each runs `cfglab.stages.STAGES[name]` on a run directory's saved config; its flags are
shorthands for `--set KEY=VALUE` overrides of that stage's config sections (STAGE_FLAGS), so a
setting has one name, one type check and one default (in cfglab.config). `probe` and
`attention` run the analyze stage with that analysis family only (FAMILY_COMMANDS).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from cfglab.cli.common import add_set
from cfglab.errors import ConfigError

# stage -> [(flag, config key, nargs, help)]; nargs "+" gives a list, 0 a switch that sets False
STAGE_FLAGS: dict[str, list[tuple[str, str, int | str | None, str]]] = {
    "eval": [
        ("--n", "eval.n_samples", None, "generations per accuracy number"),
        ("--n-kl", "eval.n_kl", None, "fresh true strings for the KL"),
        ("--cut", "eval.cuts", "+", "prompt lengths, e.g. 0 50 (cut0, cut50)"),
        ("--temperature", "eval.temperatures", "+", "sampling temperature(s)"),
        ("--corrupt", "eval.corrupt", "+", "robustness: corrupted cutC prompts, gamma(s)"),
        ("--seed", "eval.seed", None, "evaluation seed"),
        ("--device", "eval.device", None, "cpu, cuda, cuda:1, ..."),
        ("--threads", "eval.threads", None, "torch CPU threads"),
    ],
    "analyze": [
        ("--device", "analyze.device", None, "cpu, cuda, cuda:1, ..."),
        ("--threads", "analyze.threads", None, "torch CPU threads"),
    ],
    "probe": [
        ("--n-train", "probe.n_train", None, "fresh strings the probes learn on"),
        ("--n-test", "probe.n_test", None, "other fresh strings they are scored on"),
        ("--window", "probe.windows", "+", "all, causal, diagonal, tridiagonal (a table each)"),
        ("--target", "probe.targets", "+", "ancestor, boundary, end_label, ends, depth"),
        ("--heads", "probe.n_heads", None, "probe heads H"),
        ("--d-probe", "probe.d_probe", None, "position embedding size d'"),
        ("--steps", "probe.steps", None, "probe training steps"),
        ("--batch-size", "probe.batch_size", None, "strings per probe step"),
        ("--lr", "probe.lr", None, "AdamW learning rate"),
        ("--seed", "probe.seed", None, "probe strings and probe init"),
        ("--no-baseline", "probe.baseline", 0, "skip the random-init twin"),
        ("--device", "analyze.device", None, "cpu, cuda, cuda:1, ..."),
        ("--threads", "analyze.threads", None, "torch CPU threads"),
    ],
    "attention": [
        ("--n-strings", "attention.n_strings", None, "fresh labelled strings"),
        ("--seed", "attention.seed", None, "attention strings"),
        ("--no-baseline", "attention.baseline", 0, "skip the random-init twin"),
        ("--device", "analyze.device", None, "cpu, cuda, cuda:1, ..."),
        ("--threads", "analyze.threads", None, "torch CPU threads"),
    ],
    "intervene": [
        ("--parts", "intervene.parts", "+", "erasure, patching, heads"),
        ("--target", "intervene.targets", "+", "probe targets erased: ancestor, boundary, ..."),
        ("--n-fit", "intervene.n_fit", None, "fresh strings the erasers are fitted on"),
        ("--n-strings", "intervene.n_strings", None, "other fresh strings scored by KL"),
        ("--draws", "intervene.random_draws", None, "random erasers of equal rank per layer"),
        ("--n-pairs", "intervene.n_pairs", None, "patching pairs per level"),
        ("--n-generate", "intervene.n_generate", None, "cut0 generations per eraser (0: none)"),
        ("--window", "intervene.window", None, "positions up to the NT end patched"),
        ("--seed", "intervene.seed", None, "intervention strings"),
        ("--device", "analyze.device", None, "cpu, cuda, cuda:1, ..."),
        ("--threads", "analyze.threads", None, "torch CPU threads"),
    ],
    "dynamics": [
        ("--n", "dynamics.n_samples", None, "cut0 generations per checkpoint"),
        ("--n-kl", "dynamics.n_kl", None, "true strings per checkpoint for the KL"),
        ("--eval", "dynamics.eval", "+", "eval families per checkpoint"),
        ("--analyses", "dynamics.analyses", "+", "analysis families per checkpoint"),
    ],
    "report": [
        ("--compare", "report.compare", "+", "runs whose probes go beside RUN_DIR's"),
    ],
}


def add_stage(name: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (runs/<name>)")
        for flag, key, nargs, help_text in STAGE_FLAGS[name]:
            dest = flag.lstrip("-").replace("-", "_")
            if nargs == 0:
                p.add_argument(flag, dest=dest, action="store_true", help=f"{help_text} ({key})")
            else:
                p.add_argument(flag, dest=dest, nargs=nargs, help=f"{help_text} ({key})")
        add_set(p, "eval.seed=3")

    return add


def stage_overrides(name: str, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The --set overrides a stage command's flags and --set stand for, and key -> flag."""
    overrides, flag_of = [], {}
    for flag, key, nargs, _ in STAGE_FLAGS[name]:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is None or value is False:
            continue
        if nargs == 0:
            overrides.append(f"{key}=false")
        elif nargs == "+":
            overrides.append(f"{key}=[{', '.join(_yaml_item(v) for v in value)}]")
        else:
            overrides.append(f"{key}={value}")
        flag_of[key] = flag
    from cfglab.stages import STAGE_SECTIONS

    # the sections the stage's results depend on (a family command: its own and analyze)
    sections = STAGE_SECTIONS.get(name, ("analyze", name))
    for item in args.overrides:
        key = item.split("=", 1)[0].strip()
        if key.split(".")[0] not in sections:
            allowed = ", ".join(f"{s}.*" for s in sections)
            raise ConfigError(
                f"--set {item}: `cfglab {name}` takes only {allowed} settings (the others are "
                f"the run's record of how it was made); change them in the config and rerun it"
            )
    return overrides + list(args.overrides), flag_of


def _yaml_item(text: str) -> str:
    """A list element for a YAML flow list: numbers and booleans as typed, anything else quoted
    (a path with ':' or ',' stays one string)."""
    import json

    import yaml

    from cfglab.config.load import safe_yaml

    try:
        value = safe_yaml(text, f"the value {text[:20]!r}")  # bounded, as every YAML text
    except yaml.YAMLError:
        value = text
    return text if isinstance(value, (int, float, bool)) else json.dumps(text)


# the commands that run one analysis family: the analyze stage with that family only
FAMILY_COMMANDS = {"probe": "analyze", "attention": "analyze"}


def run_stage(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from cfglab.stages import load_run_config, run_stage

        overrides, flag_of = stage_overrides(name, args)
        try:
            cfg = load_run_config(args.run_dir, overrides)
        except ConfigError as exc:
            given = [f for key, f in flag_of.items() if key in str(exc)]
            raise ConfigError(f"{exc} (given as {given[0]})" if given else str(exc)) from None
        if name in FAMILY_COMMANDS:
            run_stage(FAMILY_COMMANDS[name], cfg, Path(args.run_dir), only=[name])
        else:
            run_stage(name, cfg, Path(args.run_dir))
        return 0

    return run


# name: (help, add its arguments, run it), in `cfglab --help`'s order
COMMANDS = {
    "eval": (
        "evaluate a run: accuracy, KL, diversity, robustness -> eval/*.json",
        add_stage("eval"),
        run_stage("eval"),
    ),
    "analyze": (
        "every analysis family (probes, attention, ...) -> analyze/<family>.json",
        add_stage("analyze"),
        run_stage("analyze"),
    ),
    "probe": (
        "the probe family alone: linear probes of the parse tree per layer -> analyze/probe.json",
        add_stage("probe"),
        run_stage("probe"),
    ),
    "attention": (
        "the attention family alone: position bias, boundary heads -> analyze/attention.json",
        add_stage("attention"),
        run_stage("attention"),
    ),
    "intervene": (
        "erase each level's probe information, patch activations, ablate heads: does the model "
        "use the tree? -> analyze/interventions.json",
        add_stage("intervene"),
        run_stage("intervene"),
    ),
    "dynamics": (
        "every kept checkpoint measured: probes per level, accuracy, KL -> analyze/dynamics.json",
        add_stage("dynamics"),
        run_stage("dynamics"),
    ),
    "report": (
        "build report/report.md, report.html and figures from a run's results",
        add_stage("report"),
        run_stage("report"),
    ),
}
