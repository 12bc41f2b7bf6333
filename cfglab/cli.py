"""The `cfglab` command: one dispatch table, argparse, and the only place errors become exit codes.

Every command is a pair (add its arguments, run it) in COMMANDS. Library code raises
`CfglabError`; here it becomes `cfglab: error: <message>` on stderr and exit 2, with no
traceback unless CFGLAB_DEBUG=1. Heavy imports (torch) happen inside the commands that need them,
so `cfglab grammar list` starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cfglab.cli_tools import (
    add_config_args,
    add_corrupt,
    add_data,
    add_generate,
    add_grammar,
    add_parse,
    add_prob,
    add_sample,
    run_corrupt,
    run_data,
    run_generate,
    run_grammar,
    run_parse,
    run_prob,
    run_sample,
)
from cfglab.errors import CfglabError

# ---- eval, report (evaluate/, report/) ------------------------------------------------------


def add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (runs/<name>)")
    p.add_argument(
        "--n", type=int, help="generations per accuracy number (default: eval.n_samples)"
    )
    p.add_argument("--n-kl", type=int, help="fresh true strings for the KL (default: --n)")
    p.add_argument("--temperature", type=float, nargs="+", help="sampling temperature(s)")
    p.add_argument("--cut", type=int, nargs="+", help="prompt lengths, e.g. 0 50 (cut0, cut50)")
    p.add_argument("--seed", type=int, help="default: eval.seed")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the run's train.device)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: train.threads)")
    p.add_argument(
        "--corrupt",
        type=float,
        metavar="GAMMA",
        help="also complete cutC prompts with this share of tokens substituted "
        "(robustness, e.g. 0.15)",
    )


def run_eval(args: argparse.Namespace) -> int:
    from cfglab.evaluate.metrics import evaluate_run

    out = evaluate_run(
        args.run_dir,
        n=args.n,
        n_kl=args.n_kl,
        cuts=args.cut,
        temperatures=args.temperature,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        corrupt=args.corrupt,
    )
    _print_eval(out, Path(args.run_dir))
    return 0


def _print_eval(out: dict, run_dir: Path) -> None:
    from cfglab.evaluate.metrics import format_table, summary_table

    print(format_table(summary_table(out)))
    s = out["timing"]["seconds"]
    print(
        f"wrote {run_dir / 'eval'}/*.json (model {s['model']:.1f} s, "
        f"exact {s['exact']:.1f} s, sampling {s['sample']:.1f} s)"
    )


def _stage_eval(cfg, run_dir: Path, args: argparse.Namespace) -> None:
    from cfglab.config import OBJECTIVES
    from cfglab.evaluate.metrics import evaluate_run

    if not OBJECTIVES[cfg.train.objective]:  # an encoder neither generates nor predicts next tokens
        print("eval: skipped (a masked-LM encoder does not generate)", file=sys.stderr)
        return
    _print_eval(evaluate_run(run_dir), run_dir)  # settings from the run's EvalConfig


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (runs/<name>)")
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="OTHER_RUN_DIR",
        help="runs whose probe results go beside RUN_DIR's (e.g. its masked-LM encoder twin)",
    )


def run_report(args: argparse.Namespace) -> int:
    from cfglab.report import build_report

    out = build_report(args.run_dir, compare=args.compare)
    print(f"wrote {out / 'report.md'}, {out / 'report.html'} and {out / 'figures'}/")
    return 0


def _stage_report(cfg, run_dir: Path, args: argparse.Namespace) -> None:
    from cfglab.report import build_report

    print(f"wrote {build_report(run_dir) / 'report.md'}")


# ---- train, run (config.py, train/) ---------------------------------------------------------
def add_train(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's latest complete checkpoint"
    )
    p.add_argument("--out", metavar="DIR", help="run directory (default: <out_dir>/<name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    from cfglab.config import load_config

    cfg = load_config(args.config, args.overrides)  # fails before torch is even imported
    from cfglab.train import dist
    from cfglab.train.loop import train

    try:
        train(cfg, resume=args.resume, run_dir=args.out, progress=not args.no_progress)
    finally:
        dist.cleanup()
    return 0


def _stage_train(cfg, run_dir: Path, args: argparse.Namespace) -> None:
    from cfglab.train.loop import train

    train(cfg, resume=args.resume, run_dir=run_dir, progress=not args.no_progress)


def run_run(args: argparse.Namespace) -> int:
    from cfglab.config import load_config

    cfg = load_config(args.config, args.overrides)
    from cfglab.train import dist

    run_dir = Path(args.out) if args.out else cfg.run_dir
    try:
        for i, (name, stage) in enumerate(RUN_STAGES):
            if i > 0 and not dist.is_master():
                break
            if dist.is_master():
                print(f"== cfglab run: {name}", file=sys.stderr)
            stage(cfg, run_dir, args)
    finally:
        dist.cleanup()
    return 0


# ---- probe, attention (analyze/probe.py, analyze/attention.py) ---------------------------------
def add_probe(p: argparse.ArgumentParser) -> None:
    # no torch import here: defaults left None come from analyze.probe.ProbeSettings
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (runs/<name>)")
    p.add_argument("--n-train", type=int, default=768, help="fresh strings the probes learn on")
    p.add_argument("--n-test", type=int, default=256, help="other fresh strings they are scored on")
    p.add_argument(
        "--window",
        nargs="+",
        default=["all"],
        help="keys a probe may read: all (the paper's), causal, or the restricted "
        "diagonal / tridiagonal probes scored at NT ends (several: one table each)",
    )
    p.add_argument("--heads", type=int, help="probe heads H (default 4)")
    p.add_argument("--d-probe", type=int, help="position embedding size d' (default 32)")
    p.add_argument("--steps", type=int, help="probe training steps (default 300)")
    p.add_argument("--batch-size", type=int, help="strings per step (default 16)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-2)")
    p.add_argument("--seed", type=int, default=2, help="train strings; test strings use seed+1")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-init model")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")


def _set_threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            raise CfglabError(f"--threads {n}: give at least 1")
        import torch

        torch.set_num_threads(n)


def _analyze_figures(run_dir: Path) -> None:
    from cfglab.report.plots_analyze import write_analyze_figures

    figs = write_analyze_figures(run_dir)
    if figs:
        print(f"figures: {', '.join(str(f) for f in figs.values())}")


def run_probe(args: argparse.Namespace) -> int:
    from cfglab.analyze.probe import ProbeSettings, probe_run
    from cfglab.report.plots_analyze import probe_markdown

    for name in ("n_train", "n_test"):
        if getattr(args, name) < 2:
            raise CfglabError(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 2")
    _set_threads(args.threads)
    given = {
        "n_heads": args.heads,
        "d_probe": args.d_probe,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
    }
    settings = ProbeSettings(**{k: v for k, v in given.items() if v is not None})
    for window in args.window:
        ProbeSettings(window=window)  # an unknown name fails here, listing the choices
    path = probe_run(
        args.run_dir,
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        windows=args.window,
        settings=settings,
        baseline=not args.no_baseline,
        log=lambda m: print(m, file=sys.stderr),
    )
    print("\n".join(probe_markdown(json.loads(path.read_text()))))
    print(f"wrote {path}")
    _analyze_figures(Path(args.run_dir))
    return 0


def add_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (runs/<name>)")
    p.add_argument("--n-strings", type=int, default=64, help="fresh labelled strings")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--no-baseline", action="store_true", help="skip the random-init model")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")


def run_attention(args: argparse.Namespace) -> int:
    from cfglab.analyze.attention import attention_run
    from cfglab.report.plots_analyze import attention_markdown

    if args.n_strings < 1:
        raise CfglabError(f"--n-strings {args.n_strings}: give at least 1")
    _set_threads(args.threads)
    path = attention_run(
        args.run_dir,
        n_strings=args.n_strings,
        seed=args.seed,
        baseline=not args.no_baseline,
        log=lambda m: print(m, file=sys.stderr),
    )
    print("\n".join(attention_markdown(json.loads(path.read_text()))))
    print(f"wrote {path}")
    _analyze_figures(Path(args.run_dir))
    return 0


def _stage_analyze(cfg, run_dir: Path, args: argparse.Namespace) -> None:
    """`cfglab run`: probes and attention statistics per the config's `analyze` section
    (`probe` / `attention` switches; n_strings test strings, three
    times as many training strings). Skipped for grammars without levels."""
    from cfglab.analyze.attention import attention_run
    from cfglab.analyze.probe import probe_run

    if cfg.grammar.load().levels is None:
        print("analyze: skipped (the grammar has no levels to probe)", file=sys.stderr)
        return
    a = cfg.analyze
    n, seed = a.n_strings, a.seed
    if a.probe:
        print(f"wrote {probe_run(run_dir, n_train=3 * n, n_test=n, seed=seed)}")
    if a.attention:
        print(f"wrote {attention_run(run_dir, n_strings=min(n, 64), seed=seed + 2)}")
    _analyze_figures(run_dir)


# `cfglab run` = these stages in order on one run directory; a later stage adds one line here.
# Each is stage(cfg, run_dir, args); only rank 0 runs the stages after training.
RUN_STAGES: list[tuple[str, Callable]] = [
    ("train", _stage_train),
    ("eval", _stage_eval),
    ("analyze", _stage_analyze),
    ("report", _stage_report),
]


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
    "generate": (
        "generate strings from a trained run (one per line, prompt included)",
        add_generate,
        run_generate,
    ),
    "eval": ("evaluate a run: accuracy, diversity, exact KL -> eval/*.json", add_eval, run_eval),
    "report": (
        "build report/report.md, report.html and figures from a run's results",
        add_report,
        run_report,
    ),
    "train": (
        "train a model from an experiment config (also under torchrun)",
        add_train,
        run_train,
    ),
    "run": (
        "the whole experiment: train, then every later stage, on one run directory",
        add_train,
        run_run,
    ),
    "data": (
        "write a saved (memory-mapped) dataset of strings and labels for a config",
        add_data,
        run_data,
    ),
    "probe": (
        "linear probes for NT ancestors and boundaries per layer -> analyze/probe.json",
        add_probe,
        run_probe,
    ),
    "attention": (
        "attention statistics: position bias, boundary heads -> analyze/attention.json",
        add_attention,
        run_attention,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cfglab",
        description="Physics-of-language-models experiments on synthetic context-free grammars. "
        "Start with: cfglab run configs/quickstart.yaml",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
