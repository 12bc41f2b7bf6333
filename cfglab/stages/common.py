"""What every stage after training does first: the run's config with overrides, its model on the
stage's device, a random-init twin, the header of every analyze/*.json (see cfglab.stages)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cfglab import rundir
from cfglab.config import ExperimentConfig, config_from_dict
from cfglab.config.load import _apply_override
from cfglab.errors import ConfigError, GrammarError


def say(message: str) -> None:
    """Progress for the person at the terminal (stderr, so stdout stays the results)."""
    print(message, file=sys.stderr, flush=True)


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


def random_init_twin(model, cfg: ExperimentConfig):
    """The model this run started from (its shape, initialised under its train.seed): the
    chance level of every analysis statistic. Being the run's own initialisation, it differs
    from seed to seed, so a baseline's interval across seeds is the spread of initialisations,
    not a zero-width copy of one draw."""
    from cfglab.model import build_model

    device = next(model.parameters()).device
    return build_model(model.config, seed=cfg.train.seed).eval().to(device)


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


def need_levels(grammar, what: str) -> None:
    if grammar.levels is None:
        raise GrammarError(
            f"{what} a layered grammar (like the cfg3 family); the run's grammar "
            f"{grammar.name!r} has no levels; leave this stage out of the config's stages"
        )
