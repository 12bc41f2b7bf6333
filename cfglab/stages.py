"""The stages of an experiment: each one function of (config, run directory), one dict of them.

    STAGES["eval"](cfg, Path("runs/quickstart"))   # -> runs/quickstart/eval

`cfglab run CONFIG` runs `cfg.stages` in order on one run directory; `cfglab eval RUN`,
`cfglab probe RUN`, ... run the same function on the run's saved config.json, their flags being
shorthands for `--set` overrides (`load_run_config`). Every setting comes from the config
(`cfglab.config`), every file is written through `cfglab.rundir`, and every stage after training
reads the run's own copies (config.json, grammar.cfg, checkpoints), never the files the run was
made from. Each returns the path it wrote.

This module sits above every stage package (it may import any of them); only the CLI and the
experiment runner sit above it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cfglab import rundir
from cfglab.config import NOT_TRAINING, OBJECTIVES, ExperimentConfig, config_from_dict, flat
from cfglab.config.load import _apply_override, check_cuts
from cfglab.errors import CfglabError, ConfigError, GrammarError
from cfglab.seeds import stream_seed


def say(message: str) -> None:
    """Progress for the person at the terminal (stderr, so stdout stays the results)."""
    print(message, file=sys.stderr, flush=True)


# ---- what every stage after training does first -----------------------------------------------
def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """A run's saved config with `key=value` overrides applied (the stage commands' --set)."""
    data = json.loads(json.dumps(rundir.read_run_config(run_dir).to_dict()))
    for item in overrides or []:
        _apply_override(data, item)
    return config_from_dict(data)


def load_run_model(run_dir: Path, cfg: ExperimentConfig, section, checkpoint: Path | None = None):
    """(model in eval mode on the section's device, grammar) of a run, with the section's
    threads set; `section` is cfg.eval / cfg.probe / cfg.attention (device, threads None: the
    run's train.device / train.threads)."""
    from cfglab.train.checkpoint import load_model
    from cfglab.train.dist import pick_device, set_threads

    set_threads(section.threads if section.threads is not None else cfg.train.threads)
    try:
        device = str(pick_device(section.device or cfg.train.device))
    except ConfigError as exc:
        name = section.device or cfg.train.device
        raise ConfigError(f"device {name!r}: {str(exc).split(': ', 1)[-1]}") from None
    model, _ = load_model(run_dir, device="cpu", checkpoint=checkpoint)
    grammar = rundir.read_run_grammar(run_dir, cfg.grammar.name)
    return model.to(device), grammar


def random_init_twin(model, seed: int):
    """An untrained model of `model`'s shape built under the stream (seed, "random_init"):
    the chance level of every analysis statistic."""
    import torch

    from cfglab.model import build_model

    torch.manual_seed(stream_seed(seed, "random_init"))
    device = next(model.parameters()).device
    return build_model(model.config).eval().to(device)


def run_header(run_dir: Path, cfg: ExperimentConfig, model) -> dict:
    """The keys every analyze/*.json starts with: run, grammar, model shape, objective."""
    return {
        "run": run_dir.name,
        "grammar": cfg.grammar.name,
        "model": {
            k: getattr(model.config, k)
            for k in ("n_layer", "n_head", "n_embd", "position", "causal")
        },
        "objective": cfg.train.objective,
    }


def _need_levels(grammar, what: str) -> None:
    if grammar.levels is None:
        raise GrammarError(
            f"{what} a layered grammar (like the cfg3 family); the run's grammar "
            f"{grammar.name!r} has no levels; leave this stage out of the config's stages"
        )


# ---- the stages -------------------------------------------------------------------------------
def run_train(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    allow_changes: bool = False,
    progress: bool = True,
) -> Path:
    """Train per cfg.train (also under torchrun); the run's checkpoints -> run_dir/ckpt."""
    from cfglab.train.loop import train

    train(cfg, resume=resume, run_dir=run_dir, progress=progress, allow_changes=allow_changes)
    return Path(run_dir) / "ckpt"


def run_eval(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """Every metric family of cfglab.evaluate on the run's model per cfg.eval -> eval/*.json;
    prints the summary table."""
    from cfglab.data.saved import read_training_strings
    from cfglab.data.vocab import Vocab
    from cfglab.evaluate.adapters import torch_generate_fn, torch_logprob_fn
    from cfglab.evaluate.context import EvalContext
    from cfglab.evaluate.run import evaluate, write_eval
    from cfglab.report.tables import rows_text

    if not OBJECTIVES[cfg.train.objective]:
        raise CfglabError(
            f"{run_dir} is a masked-LM encoder ({cfg.train.objective}): it does not generate, so "
            "there is nothing to evaluate; probe it (`cfglab probe`) instead"
        )
    check_cuts(cfg)
    model, grammar = load_run_model(run_dir, cfg, cfg.eval)
    device = str(next(model.parameters()).device)
    vocab = Vocab.from_grammar(grammar)
    block = model.config.block_size

    def make_generate(temperature: float):
        def generate(prompts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
            # BOS + prompt + completion must fit in block_size (an EOS that does not fit is lost)
            room = block - max(len(p) for p in prompts)
            return torch_generate_fn(
                model, eos_id=vocab.eos, max_new_tokens=room, temperature=temperature, device=device
            )(prompts, rng)

        return generate

    training = read_training_strings(cfg.data.dataset) if cfg.data.dataset else None
    ctx = EvalContext(
        grammar,
        torch_logprob_fn(model, pad_id=vocab.pad, device=device),
        make_generate,
        cfg.eval,
        max_len=block - 1,
        training=training,
    )
    out = evaluate(ctx)
    out["settings"]["run_dir"] = str(run_dir)
    path = write_eval(run_dir, out)
    print(rows_text(out["rows"]))
    s = out["timing"]["seconds"]
    print(
        f"wrote {path}/*.json (model {s['model']:.1f} s, exact {s['exact']:.1f} s, "
        f"sampling {s['sample']:.1f} s)"
    )
    return path


def run_probe(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """NT-ancestor and boundary probes at every layer and level (and on a random-init twin)
    per cfg.probe -> analyze/probe.json; prints the tables."""
    import dataclasses

    from cfglab.analyze.probe_tree import probe_model, probe_tables
    from cfglab.data.sampler import sample
    from cfglab.report.plots_analyze import probe_markdown

    p = cfg.probe
    model, grammar = load_run_model(run_dir, cfg, p)
    _need_levels(grammar, "probing needs")
    t0 = time.perf_counter()
    max_len = model.config.block_size - 2
    train = sample(grammar, p.n_train, stream_seed(p.seed, "probe_train"), max_len=max_len)
    test = sample(grammar, p.n_test, stream_seed(p.seed, "probe_test"), max_len=max_len)
    models = {"model": model}
    if p.baseline:
        models["random_init"] = random_init_twin(model, p.seed)
    results = {}
    for label, m in models.items():
        say(f"probing {label}")
        results[label] = probe_model(
            m, grammar, train, test, settings=p, windows=p.windows, seed=p.seed, log=say
        )
    tables = []
    for window in p.windows:
        base = results["random_init"][window] if p.baseline else None
        tables += probe_tables(results["model"][window], base, window)
    out = {
        **run_header(run_dir, cfg, model),
        "settings": dataclasses.asdict(p),
        "n_train": p.n_train,
        "n_test": p.n_test,
        "n_test_tokens": int(test.offsets[-1]),
        "layers": results["model"][p.windows[0]]["layers"],
        "tables": tables,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = rundir.write_result(run_dir, f"{rundir.ANALYZE}/probe", out)
    print("\n".join(probe_markdown(out)))
    print(f"wrote {path}")
    _figures(run_dir, {"probe": out})
    return path


def run_attention(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """Attention-pattern statistics (and a random-init twin's) per cfg.attention ->
    analyze/attention.json; prints the head table."""
    import dataclasses

    from cfglab.analyze.attention import attention_model
    from cfglab.data.sampler import sample
    from cfglab.report.plots_analyze import attention_markdown

    a = cfg.attention
    model, grammar = load_run_model(run_dir, cfg, a)
    _need_levels(grammar, "attention statistics need")
    t0 = time.perf_counter()
    batch = sample(
        grammar,
        a.n_strings,
        stream_seed(a.seed, "attention_strings"),
        max_len=model.config.block_size - 2,
    )
    models = {"model": model}
    if a.baseline:
        models["random_init"] = random_init_twin(model, a.seed)
    out = {**run_header(run_dir, cfg, model), "settings": dataclasses.asdict(a)}
    out["n_strings"] = a.n_strings
    for label, m in models.items():
        say(f"attention statistics of {label} on {a.n_strings} strings")
        out[label] = attention_model(
            m, grammar, batch, n_examples=a.n_examples, example_len=a.example_len
        )
    out["seconds"] = round(time.perf_counter() - t0, 1)
    path = rundir.write_result(run_dir, f"{rundir.ANALYZE}/attention", out)
    print("\n".join(attention_markdown(out)))
    print(f"wrote {path}")
    _figures(run_dir, {"attention": out})
    return path


def _figures(run_dir: Path, analyze: dict) -> None:
    """The figures of a fresh analyze result, into report/figures (the report links them)."""
    from cfglab.report.plots_analyze import write_analyze_figures

    figs = write_analyze_figures(analyze, Path(run_dir) / rundir.REPORT / "figures")
    if figs:
        print(f"figures: {', '.join(str(f) for f in figs.values())}")


def run_report(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """report/report.md, report.html and figures from the run's result files (no model)."""
    from cfglab.report import build_report

    out = build_report(run_dir, compare=cfg.report.compare)
    print(f"wrote {out / 'report.md'}, {out / 'report.html'} and {out / 'figures'}/")
    return out


def generate_from_run(
    run_dir: Path,
    n: int,
    *,
    prompts: list[list[str]] | None = None,
    prompt_labels: list[str] | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    device: str | None = None,
    threads: int | None = None,
) -> list[list[str]]:
    """The `cfglab generate` command: `n` generations from BOS, or `n` completions of each
    prompt (terminal names), from a run's latest checkpoint: each a list of token names, prompt
    included, up to (not including) EOS. A prompt with an unknown token is a VocabError naming
    it and its label (e.g. 'file:3')."""
    from cfglab.data.vocab import BOS, Vocab
    from cfglab.evaluate.adapters import torch_generate_fn

    if n < 1:
        raise CfglabError(f"-n {n}: give at least one generation")
    if not temperature > 0 or not np.isfinite(temperature):
        raise CfglabError(f"--temperature {temperature}: give a positive, finite temperature")
    cfg = rundir.read_run_config(run_dir)
    overrides = {"device": device, "threads": threads}
    section = type(cfg.eval)(**{**cfg.eval.__dict__, **{k: v for k, v in overrides.items() if v}})
    model, grammar = load_run_model(Path(run_dir), cfg, section)
    device = str(next(model.parameters()).device)
    vocab = Vocab.from_grammar(grammar)
    block = model.config.block_size
    prompts = list(prompts or [[]])
    labels = list(prompt_labels or [f"prompt {i + 1}" for i in range(len(prompts))])
    encoded = [
        np.concatenate([[BOS], vocab.encode(p, where=f"{label}: ")])
        for p, label in zip(prompts, labels, strict=True)
    ]
    for label, p in zip(labels, encoded, strict=True):
        if len(p) >= block:
            raise CfglabError(
                f"{label}: the prompt has {len(p) - 1} tokens; the model's "
                f"block_size {block} leaves no room to generate: shorten it"
            )
    rng = np.random.default_rng(seed)
    out: list[list[str]] = []
    for p in encoded:
        gen = torch_generate_fn(
            model,
            eos_id=vocab.eos,
            max_new_tokens=block - len(p),
            temperature=temperature,
            device=device,
        )
        for b in range(0, n, 64):
            for seq in gen([p] * min(64, n - b), rng):
                seq = seq[1:]  # drop BOS
                end = np.flatnonzero(seq == vocab.eos)
                out.append(vocab.decode(seq[: end[0]] if len(end) else seq))
    return out


# name -> run(cfg, run_dir) -> Path, in the order `cfglab run` runs them
# (config.STAGE_NAMES is the torch-free list of these names; a test keeps the two equal)
STAGES: dict[str, Callable[[ExperimentConfig, Path], Path]] = {
    "train": run_train,
    "eval": run_eval,
    "probe": run_probe,
    "attention": run_attention,
    "report": run_report,
}


def stage_key(cfg: ExperimentConfig, stage: str) -> str:
    """A hash of the settings a stage's result depends on: the training record (every grammar,
    data, model and train setting but those that change nothing learned), plus the stage's own
    section without its device and threads. Equal keys: the stage's result would be the same."""
    settings = flat(cfg.to_dict())
    record = {
        k: v
        for k, v in settings.items()
        if k.split(".")[0] in ("grammar", "data", "model", "train") and k not in NOT_TRAINING
    }
    own = {
        k: v
        for k, v in settings.items()
        if k.startswith(f"{stage}.") and k.split(".")[-1] not in ("device", "threads")
    }
    return rundir.sha256(json.dumps([record, own], sort_keys=True))


def run_stage(
    name: str, cfg: ExperimentConfig, run_dir: Path, *, skip_done: bool = False, **options
) -> Path | None:
    """STAGES[name] on a run, recorded in the run's stages.json when it completes; with
    `skip_done`, a stage already completed under the same settings (stage_key) is skipped
    (None). Training resumes from its checkpoint when one exists (and skip_done)."""
    from cfglab.train import checkpoint as ckpt

    key = stage_key(cfg, name)
    if skip_done and rundir.read_stage_marks(run_dir).get(name) == key:
        say(f"== {name}: done earlier with these settings, skipped")
        return None
    if name == "train":
        if skip_done and (Path(run_dir) / ckpt.CKPT_DIR / ckpt.LATEST).exists():
            options["resume"] = True
        wrote = run_train(cfg, run_dir, **options)
    else:
        wrote = STAGES[name](cfg, run_dir)
    from cfglab.train import dist

    if dist.is_master():
        rundir.mark_stage_done(run_dir, name, key)
    return wrote


def run_stages(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    allow_changes: bool = False,
    progress: bool = True,
    skip_done: bool = False,
) -> list[Path | None]:
    """cfg.stages in order on one run directory (`cfglab run`, and each run of a sweep with
    skip_done); under torchrun every rank trains and rank 0 alone runs the later stages."""
    from cfglab.train import dist

    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:  # config validation knows the names too; this guards a drift between the two
        raise ConfigError(f"stages: unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}")
    if "eval" in cfg.stages:
        check_cuts(cfg)  # before training, not after it
    wrote: list[Path | None] = []
    for name in cfg.stages:
        if name != "train" and not dist.is_master():
            break
        if dist.is_master():
            say(f"== cfglab run: {name}")
        options = {}
        if name == "train":
            options = {"resume": resume, "allow_changes": allow_changes, "progress": progress}
        # a stage is skipped only while every stage before it was: one that ran made the
        # results after it stale
        fresh = skip_done and all(w is None for w in wrote)
        wrote.append(run_stage(name, cfg, run_dir, skip_done=fresh, **options))
    return wrote
