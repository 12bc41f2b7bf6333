"""What every stage after training does first: the run's config with overrides, its model on the
stage's device, a random-init twin, the header of every result file (see cfglab.stages)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cfglab import rundir
from cfglab.config import ExperimentConfig, config_from_dict
from cfglab.config.load import apply_override
from cfglab.errors import CfglabError, ConfigError


def say(message: str) -> None:
    """Progress for the person at the terminal (stderr, so stdout stays the results)."""
    print(message, file=sys.stderr, flush=True)


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """A run's saved config with `key=value` overrides applied (the stage commands' --set)."""
    data = json.loads(json.dumps(rundir.read_run_config(run_dir).to_dict()))
    for item in overrides or []:
        apply_override(data, item)
    return config_from_dict(data)


def check_results_have_checkpoint(run_dir: Path, where: str = "") -> None:
    """A folder with a run's results but no checkpoint (its ckpt/ removed) is not trained
    afresh: that would replace its config.json and metrics.jsonl under the old results.
    ConfigError naming what it holds and the fix."""
    held = rundir.held_results(run_dir)
    if held and rundir.latest_step(run_dir) is None:
        more = f" and {len(held) - 2} more" if len(held) > 2 else ""
        raise ConfigError(
            f"{where}{run_dir} holds a run's results ({', '.join(held[:2])}{more}) but no "
            "checkpoint (ckpt/latest): training there would put a new model under the old "
            "results; move the folder away to train afresh, or restore its ckpt/"
        )


def check_dataset(cfg: ExperimentConfig, run_dir: Path, stage: str) -> None:
    """Before a stage that reads the run's saved dataset (its strings for seen_in_training, its
    validation windows): the dataset is still where the run was trained from, and is the one it
    was trained on (meta.json's hash in fingerprint.json). CfglabError saying what is missing
    and where it was."""
    if not cfg.data.dataset:
        return
    from cfglab.data.saved import meta_hash

    path = Path(cfg.data.dataset)
    found = meta_hash(path)
    if found is None:
        raise CfglabError(
            f"{run_dir} was trained on the saved dataset {path} (data.dataset in its "
            f"{rundir.CONFIG}), which is not there any more: the {stage} stage reads its strings; "
            f"move the dataset back to {path}"
        )
    expected = rundir.read_fingerprint(run_dir).get("dataset_meta")
    if expected and found != expected:
        raise CfglabError(
            f"{path} is not the saved dataset {run_dir} was trained on (its meta.json differs "
            f"from the hash in {rundir.FINGERPRINT}); put that dataset back at {path}"
        )


def load_run_model(run_dir: Path, cfg: ExperimentConfig, section, checkpoint: Path | None = None):
    """(model in eval mode on the section's device, grammar) of a run, with the section's
    threads set; `section` is cfg.eval / cfg.analyze (device, threads None: the run's
    train.device / train.threads)."""
    from cfglab.train.checkpoint import load_model
    from cfglab.train.dist import pick_device

    try:
        device = str(pick_device(section.device or cfg.train.device))
    except ConfigError as exc:
        name = section.device or cfg.train.device
        raise ConfigError(f"device {name!r}: {str(exc).split(': ', 1)[-1]}") from None
    model, _ = load_model(run_dir, device="cpu", checkpoint=checkpoint)
    grammar = rundir.read_run_grammar(run_dir, cfg.grammar.name)
    model = model.to(device)
    threads = section.threads if section.threads is not None else cfg.train.threads
    _set_stage_threads(threads, model)
    return model, grammar


_CHOSEN: dict[tuple, int] = {}  # (setting, model shape) -> threads: measured once per process


def _set_stage_threads(setting, model) -> None:
    """A stage's torch threads; `auto` times the model's forward pass on a batch of windows
    (once per process and model shape: the dynamics stage loads a checkpoint after another)."""
    import torch

    from cfglab.train.threads import AUTO, apply_threads

    key = (setting, model.config.n_layer, model.config.n_embd, model.config.block_size)
    if setting == AUTO and key in _CHOSEN:
        torch.set_num_threads(_CHOSEN[key])
        return
    x = torch.ones(
        8, model.config.block_size, dtype=torch.long, device=next(model.parameters()).device
    )

    def forward() -> None:
        with torch.no_grad():
            model(x)

    line = apply_threads(setting, forward if setting == AUTO else None)
    if setting == AUTO:
        _CHOSEN[key] = torch.get_num_threads()
        say(line)


def checkpoint_step(run_dir: Path, checkpoint: Path | None = None) -> int:
    """The training step of a checkpoint (default: the run's latest)."""
    from cfglab.train import checkpoint as ckpt

    path = checkpoint if checkpoint is not None else ckpt.latest_checkpoint(run_dir)
    return int(ckpt.read_state(path)["step"])


def random_init_twin(model, cfg: ExperimentConfig):
    """The model this run started from (its shape, initialised under its train.seed): the
    chance level of every analysis statistic. Being the run's own initialisation, it differs
    from seed to seed, so a baseline's interval across seeds is the spread of initialisations,
    not a zero-width copy of one draw."""
    from cfglab.model import build_model

    device = next(model.parameters()).device
    return build_model(model.config, seed=cfg.train.seed).eval().to(device)


def run_header(run_dir: Path, cfg: ExperimentConfig, model, step: int) -> dict:
    """The keys every analyze/*.json starts with: run, grammar, model shape, objective, and the
    provenance of its numbers (the training record's fingerprint and the checkpoint's step)."""
    return {
        "run": run_dir.name,
        "grammar": cfg.grammar.name,
        "model": {
            k: getattr(model.config, k)
            for k in ("n_layer", "n_head", "n_embd", "position", "causal")
        },
        "objective": cfg.train.objective,
        "provenance": {"fingerprint": rundir.read_fingerprint(run_dir).get("config"), "step": step},
    }


def analysis_context(cfg: ExperimentConfig, model, grammar, *, memo=None, strings=None):
    """An AnalysisContext for a run's model; its twin (built once, when a family first asks
    for a baseline) is the run's own initialisation; its generate(model, n, seed) gives exactly
    the eval accuracy family's cut0 generations at its first temperature when that is 1.0, with
    eval.seed = seed and eval.n_samples = n (the stream (seed, "eval_generate", 0, 0), batches
    of eval.batch_size, the same window); hooks active around a call act on every generated
    position (the KV cache feeds them one per forward call)."""
    import dataclasses

    from cfglab.analyze.context import AnalysisContext
    from cfglab.config.schema import resolved_seeds
    from cfglab.data.vocab import Vocab
    from cfglab.evaluate.adapters import torch_generate_fn, torch_logprob_fn
    from cfglab.evaluate.context import EvalContext

    cfg = resolved_seeds(cfg)  # probe/attention seed per_run: the run's own strings
    vocab = Vocab.from_grammar(grammar)
    built = []

    def twin():
        if not built:
            built.append(random_init_twin(model, cfg))
        return built[0]

    def generate(net, n: int, seed: int) -> list:
        device = str(next(net.parameters()).device)
        block = net.config.block_size

        def make_generate(temperature: float):  # BOS + completion fit the window, as eval's
            return torch_generate_fn(
                net, eos_id=vocab.eos, max_new_tokens=block - 1, temperature=temperature,
                device=device,
            )  # fmt: skip

        settings = dataclasses.replace(cfg.eval, seed=seed, n_samples=n)
        logprob = torch_logprob_fn(net, pad_id=vocab.pad, device=device)
        ectx = EvalContext(grammar, logprob, make_generate, settings, max_len=block - 1)
        return ectx.generate(1.0, ectx.prompts(n, 0), ectx.rng("eval_generate", 0, 0))

    return AnalysisContext(
        model,
        grammar,
        cfg,
        twin=twin,
        log=say,
        memo={} if memo is None else memo,
        strings={} if strings is None else strings,
        generate=generate,
    )
