"""`cfglab sweep` (an experiment file: its plan, its runs, then the comparison) and `cfglab
compare` (many runs side by side). The sweep's policy lives in cfglab.experiment.sweep."""

from __future__ import annotations

import argparse
import sys

from cfglab.cli.common import Bounded


def add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", metavar="EXPERIMENT", help="experiment YAML (base x grid x seeds)")
    p.add_argument(
        "--workers",
        type=Bounded(int, 1, 1024),
        help="local processes (default: executor.workers)",
    )
    p.add_argument("--executor", choices=["local", "slurm"], help="default: executor.kind")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its cost only")
    p.add_argument(
        "--only", nargs="+", default=[], metavar="KEY=VALUE", help="only the matching grid points"
    )


def run_sweep(args: argparse.Namespace) -> int:
    from cfglab.experiment.grid import load_experiment

    exp = load_experiment(
        args.experiment, workers=args.workers, executor=args.executor, only=args.only
    )  # every run config validated: nothing runs before this succeeds
    from cfglab.experiment.launch import check_executor
    from cfglab.experiment.sweep import plan_sweep, run_sweep

    if not args.dry_run:  # a cluster that is not here: refused before the plan and its estimate
        check_executor(exp)
    print("\n".join(plan_sweep(exp)), flush=True)  # a stdout that cannot be written: say so now
    if args.dry_run:
        return 0
    outcome = run_sweep(exp)
    print(outcome.summary())
    for line in outcome.problems():
        print(line, file=sys.stderr)
    if outcome.needs_compare:
        print(f"wrote {outcome.compare()}/ (results.csv, report.md, report.html)")
    return outcome.exit_code


def add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="experiment folders or run folders")
    p.add_argument("--out", metavar="DIR", help="default: DIR/compare for one experiment")


def run_compare(args: argparse.Namespace) -> int:
    from cfglab.report.compare import compare

    out = compare(args.dirs, args.out)  # its --out is checked there, before any work
    print(f"wrote {out}/results.csv, summary.csv, report.md, report.html and figures/")
    return 0


# name: (help, add its arguments, run it), in `cfglab --help`'s order
COMMANDS = {
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
}
