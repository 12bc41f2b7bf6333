"""Value checks of a config, torch-free: names, ranges and settings that must agree (one check
per rule, one piece of advice each). `validate(cfg)` runs them all at load (cfglab.config.load);
`check_model_shape` is shared with the model builder (cfglab.model.gpt) and `check_cuts` with
the eval stage, so a rule and its message live here only. What needs a stage's own registries
(family names, probe targets, which stages a grammar supports) is checked when the config loads
too, by cfglab.stages.check_config, which the run, sweep and stage commands call first.
"""

from __future__ import annotations

from typing import Any

from cfglab.config.schema import (
    CORRUPTION_NAMES,
    DECAYS,
    DTYPES,
    IMPLICIT_MODE_NAMES,
    IMPLICIT_WEIGHT_NAMES,
    NOISE_KIND_NAMES,
    OBJECTIVES,
    PER_RUN_SECTIONS,
    POSITION_NAMES,
    PRESET_NAMES,
    PRESETS,
    PROBE_WINDOWS,
    SAMPLER_NAMES,
    STAGE_NAMES,
    ExperimentConfig,
    kept_steps,
)
from cfglab.errors import ConfigError, did_you_mean

PROBE_LAYERS = ("all", "last")  # probe.layers


def validate(cfg: ExperimentConfig) -> None:
    """Value checks that need no torch: names, ranges, and settings that must agree."""
    _check_names(cfg)
    _check_ranges(cfg)
    _check_train_and_model(cfg)
    _check_eval_and_probe(cfg)


# stage names of earlier cfglab versions -> what replaced them (one line of advice at load)
_RENAMED_STAGES = {
    "probe": "analyze (it runs every analysis family: probe, attention, ...)",
    "attention": "analyze (it runs every analysis family: probe, attention, ...)",
}


def _check_names(cfg: ExperimentConfig) -> None:
    t, m, d, p = cfg.train, cfg.model, cfg.data, cfg.probe
    _one_of("train.objective", t.objective, OBJECTIVES)
    m.causal = OBJECTIVES[t.objective]
    _one_of("train.decay", t.decay, DECAYS)
    _one_of("model.position", m.position, POSITION_NAMES)
    if m.preset is not None:
        _one_of("model.preset", m.preset, PRESET_NAMES)
    _one_of("train.dtype", t.dtype, DTYPES)
    for stage in cfg.stages:
        if stage in _RENAMED_STAGES:
            raise ConfigError(f"stages: {stage!r} is now part of {_RENAMED_STAGES[stage]}")
        _one_of("stages", stage, STAGE_NAMES)
    if len(set(cfg.stages)) != len(cfg.stages):
        raise ConfigError(f"stages {cfg.stages}: each stage at most once")
    for window in p.windows:
        _one_of("probe.windows", window, PROBE_WINDOWS)
    _one_of("probe.layers", p.layers, PROBE_LAYERS)
    _one_of("dynamics.probe_layers", cfg.dynamics.probe_layers, PROBE_LAYERS)
    _one_of("data.sampler", d.sampler, SAMPLER_NAMES)
    check_noise(d.noise)
    imp = cfg.grammar.implicit
    if imp is not None:
        _one_of("grammar.implicit.mode", imp.mode, IMPLICIT_MODE_NAMES)
        _one_of("grammar.implicit.weights", imp.weights, IMPLICIT_WEIGHT_NAMES)
    if not cfg.name or "/" in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(f"name {cfg.name!r} must be a plain directory name (no '/')")


def _minimums(cfg: ExperimentConfig) -> dict[str, tuple[Any, int]]:
    """key -> (value, minimum) of every integer setting with a lower bound."""
    t, m, d, e, p, a = cfg.train, cfg.model, cfg.data, cfg.eval, cfg.probe, cfg.attention
    at_least = {
        "train.max_steps": (t.max_steps, 1),
        "train.batch_size": (t.batch_size, 1),
        "train.grad_accum": (t.grad_accum, 1),
        "train.log_every": (t.log_every, 1),
        "train.eval_batches": (t.eval_batches, 1),
        "train.ckpt_every": (t.ckpt_every, 1),
        "train.keep_last": (t.keep_last, 1),
        "train.warmup_steps": (t.warmup_steps, 0),
        "train.eval_every": (t.eval_every, 0),
        "train.grad_clip": (t.grad_clip, 0),
        "train.weight_decay": (t.weight_decay, 0),
        "train.seed": (t.seed, 0),
        "model.block_size": (m.block_size, 2),
        "model.n_layer": (m.n_layer, 1),
        "model.n_head": (m.n_head, 1),
        "model.n_embd": (m.n_embd, 1),
        "model.rel_max_distance": (m.rel_max_distance, 1),
        "data.seed": (d.seed, 0),
        "data.prefetch": (d.prefetch, 0),
        "eval.n_samples": (e.n_samples, 1),
        "eval.n_fixed_prompt": (e.n_fixed_prompt, 0),
        "eval.batch_size": (e.batch_size, 1),
        "probe.n_train": (p.n_train, 2),
        "probe.n_test": (p.n_test, 2),
        "probe.n_heads": (p.n_heads, 1),
        "probe.d_probe": (p.d_probe, 1),
        "probe.steps": (p.steps, 1),
        "probe.batch_size": (p.batch_size, 1),
        "probe.n_queries": (p.n_queries, 1),
        "probe.weight_decay": (p.weight_decay, 0),
        "attention.n_strings": (a.n_strings, 1),
        "attention.n_examples": (a.n_examples, 0),
        "attention.example_len": (a.example_len, 1),
        "dynamics.n_samples": (cfg.dynamics.n_samples, 1),
        "dynamics.n_kl": (cfg.dynamics.n_kl, 1),
    }
    for key, value in (("data.max_len", d.max_len), ("eval.n_kl", e.n_kl)):
        if value is not None:
            at_least[key] = (value, 1)
    imp = cfg.grammar.implicit
    if imp is not None:
        if imp.tokens is not None:
            at_least["grammar.implicit.tokens"] = (imp.tokens, 1)
        at_least["grammar.implicit.seed"] = (imp.seed, 0)
    for section in PER_RUN_SECTIONS:
        seed = getattr(cfg, section).seed
        if seed != "per_run":
            if isinstance(seed, str):
                raise ConfigError(
                    f"{section}.seed: {seed!r} is not a seed; give an integer >= 0 or per_run"
                )
            at_least[f"{section}.seed"] = (seed, 0)
    for section in ("train", "eval", "analyze"):
        threads = getattr(cfg, section).threads
        if isinstance(threads, str) and threads != "auto":
            raise ConfigError(
                f"{section}.threads: {threads!r}; give auto (measured), a number >= 1 or null"
            )
        if isinstance(threads, int):
            at_least[f"{section}.threads"] = (threads, 1)
    return at_least


def _check_ranges(cfg: ExperimentConfig) -> None:
    for key, (value, low) in _minimums(cfg).items():
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")


def _check_train_and_model(cfg: ExperimentConfig) -> None:
    t, m, d = cfg.train, cfg.model, cfg.data
    if d.sampler == "physicslm4" and d.max_len is not None:
        raise ConfigError(
            "data.sampler physicslm4 draws the authors' strings as they come; it cannot "
            "resample long ones: set data.max_len to null"
        )
    try:
        steps = kept_steps(t.keep_steps, t.max_steps)
    except ValueError as exc:
        raise ConfigError(f"train.keep_steps: {exc}; give a list of steps or log:N") from None
    if steps and not 1 <= steps[0] <= steps[-1] <= t.max_steps:
        raise ConfigError(
            f"train.keep_steps {t.keep_steps}: steps must be in 1..train.max_steps ({t.max_steps})"
        )
    if t.lr <= 0 or t.min_lr < 0 or t.min_lr > t.lr:
        raise ConfigError(f"train.lr ({t.lr}) must be > 0 and train.min_lr ({t.min_lr}) in [0, lr]")
    if not 0 < t.mlm_prob < 1:
        raise ConfigError(f"train.mlm_prob must be in (0, 1), got {t.mlm_prob}")
    check_model_shape(m, "model.")
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            f"train.batch_size {t.batch_size} is not divisible by train.grad_accum "
            f"{t.grad_accum}; pick a batch that splits evenly"
        )


def check_noise(n) -> None:
    """data.noise (a NoiseConfig, or the data stage's TrainingNoise built from it): the one
    check of its names and ranges."""
    _one_of("data.noise.kind", n.kind, NOISE_KIND_NAMES)
    if isinstance(n.kinds, str):
        raise ConfigError(f"data.noise.kinds {n.kinds!r} must be a list of kinds, e.g. [{n.kinds}]")
    for kind in n.kinds:
        _one_of("data.noise.kinds", kind, CORRUPTION_NAMES)
    if not 0 <= n.fraction <= 1 or not 0 <= n.rate <= 1:
        raise ConfigError(
            f"data.noise.fraction ({n.fraction}) and data.noise.rate ({n.rate}) are "
            "probabilities: give values in [0, 1]"
        )
    if n.fraction > 0 and n.kind == "token" and not n.kinds:
        raise ConfigError("data.noise.kinds is empty; give e.g. [substitute]")


def check_model_shape(m, prefix: str = "") -> None:
    """The shape checks every model builder shares (the config at load, GPT at build time):
    one rule, one message each. `m` is a ModelShape (a config's model section, whose preset
    sizes are applied here, or a built GPTConfig); `prefix` names its keys ("model.")."""
    sizes = {k: getattr(m, k) for k in ("n_layer", "n_head", "n_embd")}
    if getattr(m, "preset", None) in PRESETS:
        sizes.update(PRESETS[m.preset])
    n_head, n_embd = sizes["n_head"], sizes["n_embd"]
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"{prefix}dropout must be in [0, 1), got {m.dropout}")
    if n_embd % n_head:
        raise ConfigError(
            f"{prefix}n_embd {n_embd} is not divisible by {prefix}n_head {n_head}; choose "
            f"n_embd a multiple of n_head (e.g. {n_head * 32})"
        )
    rotated = int(n_embd // n_head * m.rotary_fraction)
    if not 0 < m.rotary_fraction <= 1 or m.rotary_base <= 0 or rotated < 2:
        raise ConfigError(
            f"{prefix}rotary_fraction must be in (0, 1] and rotate at least 2 of the "
            f"{n_embd // n_head} dims per head (got {m.rotary_fraction}), and "
            f"{prefix}rotary_base > 0 (got {m.rotary_base})"
        )


def _check_eval_and_probe(cfg: ExperimentConfig) -> None:
    e, p = cfg.eval, cfg.probe
    if p.lr <= 0:
        raise ConfigError(f"probe.lr must be > 0, got {p.lr}")
    if not e.cuts or any(c < 0 for c in e.cuts):
        raise ConfigError(f"eval.cuts {e.cuts}: give one or more prompt lengths >= 0, e.g. [0, 50]")
    if not e.temperatures or any(x <= 0 for x in e.temperatures):
        raise ConfigError(
            f"eval.temperatures {e.temperatures}: give one or more temperatures > 0, e.g. [1.0]"
        )
    if any(not 0 <= g <= 1 for g in e.corrupt):
        raise ConfigError(f"eval.corrupt {e.corrupt}: each gamma is a probability in [0, 1]")
    if e.corrupt and not any(c > 0 for c in e.cuts):
        raise ConfigError(
            f"eval.corrupt needs a prompt to corrupt: add a cut > 0 to eval.cuts (now {e.cuts})"
        )
    if not p.windows:
        raise ConfigError("probe.windows is empty; give at least one, e.g. [all]")
    for key, values in (
        ("eval.cuts", e.cuts),
        ("eval.temperatures", e.temperatures),
        ("eval.corrupt", e.corrupt),
        ("probe.windows", p.windows),
        ("probe.targets", p.targets or []),
        ("dynamics.eval", cfg.dynamics.eval),
        ("dynamics.analyses", cfg.dynamics.analyses),
    ):
        if len(set(values)) != len(values):  # 1 and 1.0 too: each value is measured once
            raise ConfigError(f"{key} {values} lists a value twice; give each once")


def check_cuts(cfg: ExperimentConfig) -> None:
    """The eval stage's prompts must leave room to generate in the model's window (checked by
    `cfglab run` before training, and by `cfglab eval`)."""
    cuts, block = cfg.eval.cuts, cfg.model.block_size
    if any(c >= block - 1 for c in cuts):
        raise ConfigError(
            f"eval.cuts {cuts}: a cut of {max(cuts)} tokens leaves no room to generate in "
            f"model.block_size {block}; use cuts below {block - 1}"
        )


def _one_of(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(
            f"{key}: unknown value {value!r}{did_you_mean(value, choices)}; choose from "
            f"{', '.join(choices)}"
        )
