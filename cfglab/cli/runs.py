"""`cfglab train`, `run`, `data`, `generate` and `export`: a run from a config (its training, or
all its stages), a saved dataset for a config, generations from a trained run, and a trained
run as a Hugging Face or TransformerLens folder. Defaults come from the config schema
(GenerateDefaults)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cfglab.cli.common import (
    SEED,
    THREADS,
    Bounded,
    add_config_args,
    check_output_folder,
    config_range,
)
from cfglab.errors import CfglabError, ConfigError


# ---- train, run --------------------------------------------------------------------------------
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

    if args.out:
        check_output_folder("--out", args.out)
    cfg = load_config(args.config, args.overrides)  # fails before torch is even imported
    if args.allow_changes and not args.resume:
        raise ConfigError("--allow-changes only applies with --resume")
    _check_sampler(cfg)
    from cfglab.stages import run_stage, run_stages
    from cfglab.train import dist

    run_dir = Path(args.out) if args.out else cfg.run_dir
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


def _check_sampler(cfg) -> None:
    """Fresh training strings from the authors' sampler: refused now, not at training start,
    for a grammar it cannot draw (weighted, or astronomically long strings)."""
    if cfg.data.sampler == "physicslm4" and cfg.data.dataset is None:
        from cfglab.data.physicslm4 import check_physicslm4

        try:
            check_physicslm4(cfg.grammar.load())
        except CfglabError as exc:
            raise ConfigError(f"data.sampler physicslm4: {exc}") from None


def run_train(args: argparse.Namespace) -> int:
    return _train_or_run(args, only_train=True)


def run_run(args: argparse.Namespace) -> int:
    return _train_or_run(args, only_train=False)


# ---- data --------------------------------------------------------------------------------------
def add_data(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--out", metavar="DIR", required=True, help="dataset folder to write")
    p.add_argument("-n", type=Bounded(int, 1, 10**10), required=True, help="number of strings")


def run_data(args: argparse.Namespace) -> int:
    from cfglab.config import load_config

    out_dir = check_output_folder("--out", args.out)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise CfglabError(
            f"--out {args.out} already holds files: give a new or empty folder (nothing there "
            "is overwritten)"
        )
    cfg = load_config(args.config, args.overrides)
    from cfglab.data.lines import new_output_folder
    from cfglab.data.sampler import check_length
    from cfglab.data.saved import check_memory, read_meta, write_dataset
    from cfglab.train.steps import training_noise

    grammar = cfg.grammar.load()
    # what a saved dataset cannot hold: it is the grammar's plain strings
    unsaved = {
        "data.exclude": (bool(cfg.data.exclude), "held-out rule combinations"),
        "data.metadata": (bool(cfg.data.metadata.levels), "metadata tokens"),
        "data.in_context": (cfg.data.in_context is not None, "a fresh grammar per window"),
    }
    for key, (asked, what) in unsaved.items():
        if asked:
            raise CfglabError(
                f"{key}: cfglab data writes the grammar's plain strings, without {what}; train "
                f"on fresh samples (data.dataset=null) for {what}, or drop {key} here"
            )
    check_length(grammar, cfg.data.max_len)
    _check_sampler(cfg)
    check_memory(grammar, args.n, cfg.data.max_len)
    with new_output_folder(out_dir) as tmp:
        write_dataset(
            grammar,
            tmp,
            args.n,
            seed=cfg.data.seed,
            max_len=cfg.data.max_len,
            sampler=cfg.data.sampler,
            noise=training_noise(cfg),
        )
    print(
        f"wrote {out_dir}: {args.n} strings, {read_meta(out_dir)['n_tokens']} tokens (tokens.npy, "
        "offsets.npy, labels, meta.json); train on it with --set data.dataset=" + str(out_dir)
    )
    return 0


# ---- generate ----------------------------------------------------------------------------------
def add_generate(p: argparse.ArgumentParser) -> None:
    from cfglab.config.schema import GenerateDefaults  # here: only this command loads it

    d = GenerateDefaults()
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (runs/<name>)")
    p.add_argument(
        "-n",
        type=Bounded(int, 1, 10**9, hint="at least one generation"),
        default=d.n,
        help="generations from BOS, or completions per prompt with --prompts",
    )
    p.add_argument(
        "--prompts", metavar="FILE", help="prompts, one per line, terminals separated by spaces"
    )
    temperature = config_range(float, "eval.temperatures")
    p.add_argument(
        "--temperature",
        type=temperature,
        default=d.temperature,
        help=f"sampling temperature, in {temperature.interval()}",
    )
    p.add_argument("--seed", type=SEED, default=d.seed)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the run's train.device)")
    p.add_argument("--threads", type=THREADS, help="torch CPU threads (default: train.threads)")


def run_generate(args: argparse.Namespace) -> int:
    from cfglab.stages import generate_from_run

    prompts = labels = None
    if args.prompts:
        from cfglab.data.lines import read_prompts

        # blank lines are skipped; a file with no prompt is an error, not a run from BOS
        numbered = read_prompts(args.prompts)
        prompts = [toks for _, toks in numbered]
        labels = [f"{args.prompts}:{i}" for i, _ in numbered]
    strings = generate_from_run(
        args.run_dir,
        args.n,
        prompts=prompts,
        prompt_labels=labels,
        temperature=args.temperature,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )
    for tokens in strings:  # written as they come: bounded memory, output before Ctrl-C kept
        sys.stdout.write(" ".join(tokens) + "\n")
    return 0


# ---- export -------------------------------------------------------------------------------
def add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a trained run directory (runs/<name>)")
    p.add_argument(
        "--to",
        choices=["hf", "transformer-lens"],
        default="hf",
        help="hf (default): a Hugging Face transformers folder (abs -> GPT-2, rot -> GPT-NeoX; "
        "the hf extra); transformer-lens: a HookedTransformer's weights (safetensors) and config "
        "(JSON) for abs, rot, nope and alibi (the interp extra)",
    )
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="a new or empty folder")


def run_export(args: argparse.Namespace) -> int:
    check_output_folder("-o/--out", args.out)
    from cfglab.stages.export import export_run

    out = export_run(args.run_dir, args.out, args.to)
    if args.to == "hf":
        print(f"wrote {out}: AutoModelForCausalLM.from_pretrained and AutoTokenizer read it")
    else:
        print(f"wrote {out}: HookedTransformer weights and config; its README.md shows the load")
    return 0


# name: (help, add its arguments, run it), in `cfglab --help`'s order
COMMANDS = {
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
    "export": (
        "a trained run as a Hugging Face or TransformerLens folder, with its grammar and a card",
        add_export,
        run_export,
    ),
}
