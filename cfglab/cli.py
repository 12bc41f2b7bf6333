"""The `cfglab` command: one dispatch table, argparse, and the only place errors become exit codes.

Every command is a pair (add its arguments, run it) in COMMANDS. The stage commands (`eval`,
`probe`, `attention`, `report`) run `cfglab.stages.STAGES[name]` on a run directory's saved
config; their flags are shorthands for `--set KEY=VALUE` overrides of that stage's config
section (STAGE_FLAGS), so a setting has one name, one type check and one default (in
cfglab.config). The tool commands (grammar, sample, parse, ...) live in cli_tools.py.

Library code raises `CfglabError`; here it becomes `cfglab: error: <message>` on stderr and
exit 2, with no traceback unless CFGLAB_DEBUG=1; Ctrl-C exits 130. Heavy imports (torch)
happen inside the commands that need them, so `cfglab grammar list` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from cfglab.cli_grammar import add_grammar, run_grammar
from cfglab.cli_tools import (
    add_config_args,
    add_corrupt,
    add_data,
    add_generate,
    add_parse,
    add_prob,
    add_sample,
    run_corrupt,
    run_data,
    run_generate,
    run_parse,
    run_prob,
    run_sample,
)
from cfglab.errors import CfglabError, ConfigError, GrammarWarning

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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2 like every other cfglab error."""

    def error(self, message: str):
        self.exit(2, f"cfglab: error: {message}; see `{self.prog} --help`\n")


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. eval.seed=3",
    )


def add_stage(name: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (runs/<name>)")
        for flag, key, nargs, help_text in STAGE_FLAGS[name]:
            dest = flag.lstrip("-").replace("-", "_")
            if nargs == 0:
                p.add_argument(flag, dest=dest, action="store_true", help=f"{help_text} ({key})")
            else:
                p.add_argument(flag, dest=dest, nargs=nargs, help=f"{help_text} ({key})")
        _add_set(p)

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

    try:
        value = yaml.safe_load(text)
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


# ---- train, run (config.py, train/, stages.py) -------------------------------------------------
def add_train(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's latest complete checkpoint"
    )
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: continue with changed training settings (recorded in history.jsonl)",
    )
    p.add_argument("--out", metavar="DIR", help="run directory (default: <out_dir>/<name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_or_run(args: argparse.Namespace, only_train: bool) -> int:
    from cfglab.config import load_config

    cfg = load_config(args.config, args.overrides)  # fails before torch is even imported
    from cfglab.stages import run_stage, run_stages
    from cfglab.train import dist

    run_dir = Path(args.out) if args.out else cfg.run_dir
    if args.allow_changes and not args.resume:
        raise ConfigError("--allow-changes only applies with --resume")
    options = {
        "resume": args.resume,
        "allow_changes": args.allow_changes,
        "progress": not args.no_progress,
    }
    try:
        if only_train:
            run_stage("train", cfg, run_dir, **options)
        else:
            run_stages(cfg, run_dir, **options)
    finally:
        dist.cleanup()
    return 0


def run_train(args: argparse.Namespace) -> int:
    return _train_or_run(args, only_train=True)


def run_run(args: argparse.Namespace) -> int:
    return _train_or_run(args, only_train=False)


# ---- sweep, compare (experiment/, report/compare.py) ---------------------------------------------
def add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", metavar="EXPERIMENT", help="experiment YAML (base x grid x seeds)")
    p.add_argument("--workers", type=int, help="local processes (default: executor.workers)")
    p.add_argument("--executor", choices=["local", "slurm"], help="default: executor.kind")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its cost only")
    p.add_argument(
        "--only", nargs="+", default=[], metavar="KEY=VALUE", help="only the matching grid points"
    )


def run_sweep(args: argparse.Namespace) -> int:
    from cfglab.experiment.grid import load_experiment

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give at least 1")
    exp = load_experiment(
        args.experiment, workers=args.workers, executor=args.executor, only=args.only
    )  # every run config validated: nothing runs before this succeeds
    from cfglab.experiment.launch import check_run_folders, pending_stages, plan_lines, sweep
    from cfglab.report.compare import compare

    check_run_folders(exp)  # before the plan, whose estimate already trains a few steps
    todo = [spec for spec in exp.runs if pending_stages(spec)]
    print("\n".join(plan_lines(exp, todo, estimate=bool(todo))))
    if args.dry_run:
        return 0
    plan_file = exp.out / "experiment.json"
    plan_before = plan_file.read_text() if plan_file.is_file() else None
    states, ran = sweep(exp)
    selected = {spec.dir.name for spec in exp.runs}  # --only: the others are not this sweep's
    states = {name: state for name, state in states.items() if name in selected}
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state["state"]] = counts.get(state["state"], 0) + 1
    print(f"sweep {exp.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for name, state in states.items():
        if state["state"] != "done":
            print(f"  {name}: {state['state']}: {state.get('error') or ''}", file=sys.stderr)
    report = exp.out / "compare"
    # compared again when a run ran, or when the plan changed (a grid value added or removed)
    if ran or plan_file.read_text() != plan_before or not (report / "results.csv").is_file():
        print(f"wrote {compare([exp.out], report)}/ (results.csv, report.md, report.html)")
    if counts.get("interrupted"):
        return 130
    return 1 if any(s != "done" for s in counts) else 0


def add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="experiment folders or run folders")
    p.add_argument("--out", metavar="DIR", help="default: DIR/compare for one experiment")


def run_compare(args: argparse.Namespace) -> int:
    from cfglab.report.compare import compare

    out = compare(args.dirs, args.out)
    print(f"wrote {out}/results.csv, summary.csv, report.md, report.html and figures/")
    return 0


# ---- the dispatch table ----------------------------------------------------------------------
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    # name: (help, add_arguments, run)
    "grammar": ("list, show, check and generate grammars", add_grammar, run_grammar),
    "parse": ("accept or reject strings (one verdict per line)", add_parse, run_parse),
    "prob": (
        "log-probability of strings; --next: exact next-token distributions",
        add_prob,
        run_prob,
    ),
    "sample": (
        "sample strings (optionally with tree labels) from a grammar",
        add_sample,
        run_sample,
    ),
    "corrupt": ("corrupt strings: substitute, insert or delete tokens", add_corrupt, run_corrupt),
    "train": (
        "train a model from an experiment config (also under torchrun)",
        add_train,
        run_train,
    ),
    "run": (
        "the whole experiment: the config's stages in order on one run directory",
        add_train,
        run_run,
    ),
    "data": (
        "write a saved (memory-mapped) dataset of strings and labels for a config",
        add_data,
        run_data,
    ),
    "generate": (
        "generate strings from a trained run (one per line, prompt included)",
        add_generate,
        run_generate,
    ),
    "sweep": (
        "run an experiment file (config x grid x seeds), locally or on SLURM, then compare",
        add_sweep,
        run_sweep,
    ),
    "compare": (
        "many runs side by side: results.csv, seed aggregates, the paper's cross-run figures",
        add_compare,
        run_compare,
    ),
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cfglab",
        description="Physics-of-language-models experiments on synthetic context-free grammars. "
        "Start with: cfglab run configs/quickstart.yaml",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """cfglab's own warnings (GrammarWarning: an unreachable nonterminal, ...) as one line in
    the CLI's voice; others as Python prints them."""
    if issubclass(category, GrammarWarning):
        print(f"cfglab: warning: {message}", file=file or sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command][2](args)
    except CfglabError as exc:
        if os.environ.get("CFGLAB_DEBUG") == "1":
            raise
        print(f"cfglab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cfglab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cfglab sample ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
