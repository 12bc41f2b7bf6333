"""The eval stage (every metric family of cfglab.evaluate on a run's model) and the backend of
`cfglab generate`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cfglab import rundir
from cfglab.config import OBJECTIVES, ExperimentConfig
from cfglab.config.schema import resolved_seeds
from cfglab.config.validate import check_cuts
from cfglab.errors import CfglabError, ConfigError
from cfglab.stages.common import checkpoint_step, load_run_model


def eval_context(
    cfg: ExperimentConfig, model, grammar, settings, *, memo=None, run_dir=None, step=None
):
    """The EvalContext of a run's model: its log-probabilities, its sampler (completions fit the
    model's window: BOS + prompt + completion <= block_size), eval.* `settings`, the saved
    training strings when the run trained on a saved dataset; `memo` is shared by the dynamics
    stage between checkpoints; `run_dir` and the checkpoint's `step` let the memorisation family
    replay the training stream up to that step (None: it is skipped)."""
    from cfglab.data.saved import read_training_strings
    from cfglab.data.vocab import Vocab
    from cfglab.evaluate.adapters import torch_generate_fn, torch_logprob_fn
    from cfglab.evaluate.context import EvalContext

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
    return EvalContext(
        grammar,
        torch_logprob_fn(model, pad_id=vocab.pad, device=device),
        make_generate,
        settings,
        max_len=block - 1,
        training=training,
        memo={} if memo is None else memo,
        run_dir=run_dir,
        step=step,
    )


def check_eval(cfg: ExperimentConfig) -> None:
    """Before any work: the eval stage needs a model that generates, and prompts that leave room
    to generate in its window."""
    if not OBJECTIVES[cfg.train.objective]:
        raise ConfigError(
            f"train.objective {cfg.train.objective} makes a masked-LM encoder: it does not "
            "generate, so there is nothing to evaluate; leave eval out of the config's stages "
            "and probe it (the analyze stage) instead"
        )
    check_cuts(cfg)


def run_eval(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """Every metric family of cfglab.evaluate on the run's model per cfg.eval -> eval/*.json;
    prints the summary table."""
    from cfglab.evaluate.run import evaluate, write_eval
    from cfglab.report.tables import rows_text

    check_eval(cfg)
    model, grammar = load_run_model(run_dir, cfg, cfg.eval)
    cfg = resolved_seeds(cfg)  # eval.seed per_run: the run's own test data
    step = checkpoint_step(run_dir)
    out = evaluate(eval_context(cfg, model, grammar, cfg.eval, run_dir=run_dir, step=step))
    out["settings"]["run_dir"] = str(run_dir)
    out["settings"]["provenance"] = {
        "fingerprint": rundir.read_fingerprint(run_dir).get("config"),
        "step": step,
    }
    path = write_eval(run_dir, out)
    print(rows_text(out["rows"]))
    s = out["timing"]["seconds"]
    print(
        f"wrote {path}/*.json (model {s['model']:.1f} s, exact {s['exact']:.1f} s, "
        f"sampling {s['sample']:.1f} s)"
    )
    return path


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
) -> Iterator[list[str]]:
    """The `cfglab generate` command: `n` generations from BOS, or `n` completions of each
    prompt (terminal names), from a run's latest checkpoint: each a list of token names, prompt
    included, up to (not including) EOS. A prompt with an unknown token is a VocabError naming
    it and its label (e.g. 'file:3'), raised here, before any generation. The generations come
    as an iterator, 64 at a time, so that `-n 10000000` streams in bounded memory."""
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

    def stream() -> Iterator[list[str]]:
        rng = np.random.default_rng(seed)
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
                    yield vocab.decode(seq[: end[0]] if len(end) else seq)

    return stream()
