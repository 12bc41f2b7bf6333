"""Value checks of a config, torch-free: names, ranges and settings that must agree (one check
per rule, one piece of advice each). `validate(cfg)` runs them all at load (cfglab.config.load);
`check_model_shape` is shared with the model builder (cfglab.model.gpt) and `check_cuts` with
the eval stage, so a rule and its message live here only. What needs a stage's own registries
(family names, probe targets, which stages a grammar supports) is checked when the config loads
too, by cfglab.stages.check_config, which the run, sweep and stage commands call first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cfglab.config.schema import (
    CANON_SITES,
    CORRUPTION_NAMES,
    DECAYS,
    DTYPES,
    FAMILY_NAMES,
    IMPLICIT_MODE_NAMES,
    IMPLICIT_WEIGHT_NAMES,
    IN_CONTEXT_FAMILY_NAMES,
    INTERVENTION_PARTS,
    MODEL_FAMILIES,
    NOISE_KIND_NAMES,
    OBJECTIVES,
    PER_RUN_SECTIONS,
    POS_INITS,
    POSITION_NAMES,
    PRESET_NAMES,
    PRESETS,
    PROBE_WINDOWS,
    SAMPLER_NAMES,
    STAGE_NAMES,
    ExperimentConfig,
    flat,
    kept_steps,
)
from cfglab.config.sizes import matched_width, target_params
from cfglab.errors import ConfigError, did_you_mean
from cfglab.grammar.implicit import MAX_IMPLICIT_TOKENS
from cfglab.paths import check_path_text, shown_name

PROBE_LAYERS = ("all", "last")  # probe.layers


def validate(cfg: ExperimentConfig) -> None:
    """Value checks that need no torch: names, ranges, and settings that must agree."""
    _check_paths(cfg)
    _check_names(cfg)
    _check_keep_steps(cfg)
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
    _one_of("model.pos_init", m.pos_init, POS_INITS)
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
    for part in cfg.intervene.parts:
        _one_of("intervene.parts", part, INTERVENTION_PARTS)
    _one_of("dynamics.probe_layers", cfg.dynamics.probe_layers, PROBE_LAYERS)
    _one_of("data.sampler", d.sampler, SAMPLER_NAMES)
    check_noise(d.noise)
    _check_exclude(cfg)
    _check_metadata(cfg)
    if d.in_context is not None:
        _one_of("data.in_context.family", d.in_context.family, IN_CONTEXT_FAMILY_NAMES)
    imp = cfg.grammar.implicit
    if imp is not None:
        _one_of("grammar.implicit.mode", imp.mode, IMPLICIT_MODE_NAMES)
        _one_of("grammar.implicit.weights", imp.weights, IMPLICIT_WEIGHT_NAMES)


# ---- names and paths ---------------------------------------------------------------------------
PATH_KEYS = ("out_dir", "grammar.name", "data.dataset", "report.compare")  # file system paths


def _check_paths(cfg: ExperimentConfig) -> None:
    """No string of the config holds a NUL byte; the run folder, its name and every path key
    are names the file system accepts (before anything touches the file system)."""
    for key, value in flat(cfg.to_dict()).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and "\x00" in item:
                raise ConfigError(f"{key} {shown_name(item)} holds a NUL byte; remove it")
    if not cfg.name or "/" in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(f"name {cfg.name!r} must be a plain directory name (no '/')")
    check_path_text("name", cfg.name)
    if not cfg.out_dir:
        raise ConfigError("out_dir is empty: give the folder of run folders, e.g. runs")
    for key in PATH_KEYS:
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        for item in node if isinstance(node, list) else [node]:
            if isinstance(item, str):
                check_path_text(key, item)
    check_path_text("out_dir/name (the run folder)", str(cfg.run_dir))


@dataclass(frozen=True)
class Range:
    """The meaningful values of a numeric setting: lo..hi, each end included unless open. `hi`
    may name another key (train.min_lr <= train.lr). `why`, in the message of a value
    outside, says what the setting is or where a bound comes from."""

    lo: float
    hi: float | str
    open_lo: bool = False
    open_hi: bool = False
    why: str = ""


SEED_MAX = 2**63 - 1  # seeds are 63-bit: numpy, torch and JSON hold them exactly
SEED = Range(0, SEED_MAX, why="seeds are 63-bit")
STEPS = 10**9  # step counts and periods
MANY = 10**7  # strings, samples, probe steps: far beyond a day of work
WIDE = 65_536  # window lengths and widths
THREADS = Range(1, 1024)
PROBABILITY = Range(0, 1, why="a probability")
MAX_KEPT = 10_000  # train.keep_steps log:N
MAX_LEN = 1_000_000  # cfglab.data.sampler.MAX_SAMPLE_LENGTH (a test keeps the two equal)
# Every numeric setting (a number, a list of numbers, or the number in `int | str`) and its range,
# checked at load (`_check_ranges`); a test walks every numeric field of the schema at and beyond
# these bounds, so a new numeric key without a range here fails it.
RANGES: dict[str, Range] = {
    "grammar.implicit.tokens": Range(1, MAX_IMPLICIT_TOKENS, why="the implicit vocabulary"),
    "grammar.implicit.seed": SEED,
    "data.seed": SEED,
    "data.max_len": Range(1, MAX_LEN, why="the longest string the sampler draws"),
    "data.prefetch": Range(0, 64),
    "data.noise.fraction": PROBABILITY,
    "data.noise.rate": PROBABILITY,
    "data.metadata.levels": Range(0, 64, why="a depth of the derivation tree, the root 0"),
    "data.metadata.fraction": PROBABILITY,
    "eval.metadata": Range(0, 64, why="a depth of the derivation tree, the root 0"),
    "data.in_context.levels": Range(1, 1000, why="symbols per level of the random recipe"),
    "data.in_context.rules": Range(1, 100, why="rules per nonterminal"),
    "data.in_context.length": Range(1, 100, why="symbols per rule"),
    "data.in_context.strings_per_window": Range(1, WIDE, why="whole strings per window"),
    "model.block_size": Range(2, WIDE),
    "model.n_layer": Range(1, 1024),
    "model.n_head": Range(1, 1024),
    "model.n_embd": Range(2, WIDE),  # a rotated head needs 2 dims
    "model.dropout": Range(0, 1, open_hi=True),
    "model.rel_max_distance": Range(1, WIDE),
    "model.rotary_fraction": Range(0, 1, open_lo=True),
    "model.rotary_base": Range(0, 1e12, open_lo=True),
    "model.canon_kernel": Range(2, 4, why="the authors' Canon kernels"),
    "model.match_params_to": Range(1, 10**12, why="a parameter count"),
    "train.mlm_prob": Range(0, 1, open_lo=True, open_hi=True),
    "train.max_steps": Range(1, STEPS),
    "train.batch_size": Range(1, 10**6),
    "train.grad_accum": Range(1, "train.batch_size"),
    "train.lr": Range(0, 1, open_lo=True, why="AdamW's learning rate"),
    "train.min_lr": Range(0, "train.lr"),
    # longer than max_steps is allowed: lr_at ramps towards lr and the run ends first (the
    # quickstart's 30 warmup steps with a test's max_steps=4)
    "train.warmup_steps": Range(0, STEPS),
    "train.weight_decay": Range(0, 1, why="AdamW shrinks weights by lr * weight_decay a step"),
    "train.beta1": Range(0, 1, open_hi=True, why="a moment's decay"),
    "train.beta2": Range(0, 1, open_hi=True, why="a moment's decay"),
    "train.grad_clip": Range(0, 1e6),
    "train.seed": SEED,
    "train.threads": THREADS,
    "train.log_every": Range(1, STEPS),
    "train.eval_every": Range(0, STEPS),
    "train.eval_batches": Range(1, 10_000),
    "train.ckpt_every": Range(1, STEPS),
    "train.keep_last": Range(1, 10_000),
    "train.keep_steps": Range(1, "train.max_steps"),
    "eval.n_samples": Range(1, MANY),
    "eval.n_kl": Range(1, MANY),
    "eval.cuts": Range(0, WIDE),
    "eval.temperatures": Range(
        0.01, 100, why="give one or more temperatures > 0: from 0.01 to 100"
    ),
    "eval.corrupt": Range(0, 1, why="each gamma is a probability"),
    "eval.n_fixed_prompt": Range(0, MANY),
    "eval.batch_size": Range(1, 100_000),
    "eval.seed": SEED,
    "eval.threads": THREADS,
    "probe.n_train": Range(2, MANY),
    "probe.n_test": Range(2, MANY),
    "probe.n_heads": Range(1, 1024),
    "probe.d_probe": Range(1, WIDE),
    "probe.steps": Range(1, MANY),
    "probe.batch_size": Range(1, 100_000),
    "probe.n_queries": Range(1, WIDE),
    "probe.lr": Range(0, 1, open_lo=True, why="AdamW's learning rate"),
    "probe.weight_decay": Range(0, 1),
    "probe.seed": SEED,
    "attention.n_strings": Range(1, MANY),
    "attention.n_examples": Range(0, 1000),
    "attention.example_len": Range(1, WIDE),
    "attention.seed": SEED,
    "intervene.n_fit": Range(2, MANY),
    "intervene.n_strings": Range(1, MANY),
    "intervene.random_draws": Range(0, 1000),
    "intervene.n_generate": Range(0, MANY),
    "intervene.n_pool": Range(2, MANY),
    "intervene.n_pairs": Range(1, MANY),
    "intervene.window": Range(1, WIDE),
    "intervene.n_bootstrap": Range(10, 10**6, why="resamples behind a 95% interval"),
    "intervene.seed": SEED,
    "analyze.threads": THREADS,
    "dynamics.n_samples": Range(1, MANY),
    "dynamics.n_kl": Range(1, MANY),
}


def numbers_of(cfg: ExperimentConfig, key: str) -> list[Any]:
    """The numbers `key` holds in cfg: [] for None or a name (per_run, auto, log:N), each
    element of a list."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part, None)
    values = node if isinstance(node, list) else [node]
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def bound_of(cfg: ExperimentConfig, bound: float | str) -> float:
    """A Range end as a number (the value of the key it names)."""
    return numbers_of(cfg, bound)[0] if isinstance(bound, str) else bound


def _check_ranges(cfg: ExperimentConfig) -> None:
    for key, r in RANGES.items():
        for value in numbers_of(cfg, key):
            lo, hi = r.lo, bound_of(cfg, r.hi)
            if value < lo or (r.open_lo and value == lo):
                op, end = (">" if r.open_lo else ">="), _number(lo)
            elif value > hi or (r.open_hi and value == hi):
                op = "<" if r.open_hi else "<="
                end = f"{r.hi} ({_number(hi)})" if isinstance(r.hi, str) else _number(hi)
            else:
                continue
            why = f" ({r.why})" if r.why else ""
            raise ConfigError(f"{key} must be {op} {end}, got {value!r}{why}")
    for section in PER_RUN_SECTIONS:
        seed = getattr(cfg, section).seed
        if isinstance(seed, str) and seed != "per_run":
            raise ConfigError(
                f"{section}.seed: {seed!r} is not a seed; give an integer >= 0 or per_run"
            )
    for section in ("train", "eval", "analyze"):
        threads = getattr(cfg, section).threads
        if isinstance(threads, str) and threads != "auto":
            raise ConfigError(
                f"{section}.threads: {threads!r}; give auto (measured), a number >= 1 or null"
            )


def _number(x: float) -> str:
    """A bound or a value as a user types it: 1000000000, 0.01, 1e+12, 1.0."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _check_train_and_model(cfg: ExperimentConfig) -> None:
    t, m, d = cfg.train, cfg.model, cfg.data
    if d.sampler == "physicslm4" and d.max_len is not None:
        raise ConfigError(
            "data.sampler physicslm4 draws the authors' strings as they come; it cannot "
            "resample long ones: set data.max_len to null"
        )
    _match_params(m)
    check_model_shape(m, "model.")
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            f"train.batch_size {t.batch_size} is not divisible by train.grad_accum "
            f"{t.grad_accum}; pick a batch that splits evenly"
        )


def _check_keep_steps(cfg: ExperimentConfig) -> None:
    """train.keep_steps: a list of steps in 1..max_steps, or log:N with N <= MAX_KEPT (the
    steps are computed here, so N is bounded first)."""
    t = cfg.train
    spec = t.keep_steps
    if t.max_steps < 1:
        return  # train.max_steps' own range says so
    if isinstance(spec, str):
        count = spec.partition(":")[2]
        if count.isdecimal() and int(count) > MAX_KEPT:
            raise ConfigError(
                f"train.keep_steps {spec}: at most log:{MAX_KEPT} (checkpoints kept for the "
                "dynamics stage); give a smaller N"
            )
    try:
        steps = kept_steps(spec, t.max_steps)
    except ValueError as exc:
        raise ConfigError(f"train.keep_steps: {exc}; give a list of steps or log:N") from None
    if steps and not 1 <= steps[0] <= steps[-1] <= t.max_steps:
        raise ConfigError(
            f"train.keep_steps {spec}: steps must be in 1..train.max_steps ({t.max_steps})"
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
    _check_family(m, prefix)


def _check_family(m, prefix: str) -> None:
    """model.family and Canon (SPEC.md "Canon layers"): a family name; canon a subset of ABCD
    written in that order; Canon, and the encoder, only where the family has attention."""
    _one_of(f"{prefix}family", m.family, FAMILY_NAMES)
    canon = m.canon if isinstance(m.canon, str) else None
    if canon is None or canon != "".join(site for site in CANON_SITES if site in canon):
        raise ConfigError(
            f"{prefix}canon {m.canon!r}: give Canon sites as a subset of {CANON_SITES} in that "
            f'order, e.g. "AC" or "ABCD" ("" for none)'
        )
    kernel = RANGES["model.canon_kernel"]
    if not kernel.lo <= m.canon_kernel <= kernel.hi:
        raise ConfigError(
            f"{prefix}canon_kernel must be in {kernel.lo}..{kernel.hi}, got {m.canon_kernel!r}"
        )
    if MODEL_FAMILIES[m.family]:
        return
    if m.canon:
        raise ConfigError(
            f"{prefix}canon {m.canon!r}: Canon layers sit in the transformer's blocks, and "
            f"{prefix}family {m.family} has none (the ssm has its own short convolution); "
            f'set {prefix}canon to ""'
        )
    if not m.causal:
        raise ConfigError(
            f"{prefix}family {m.family} is a causal model; train.objective mlm (the encoder) "
            "needs the transformer family: set train.objective to next_token"
        )


def _match_params(m) -> None:
    """model.match_params_to: n_embd chosen now (config.json records it) so the parameters
    besides the token embedding match the target (cfglab.config.sizes)."""
    target = m.match_params_to
    if target is None:
        return
    if m.preset is not None:
        raise ConfigError(
            f"model.match_params_to picks n_embd, and model.preset {m.preset} sets it too: set "
            "model.preset to null and give n_layer and n_head"
        )
    if isinstance(target, str):
        _one_of("model.match_params_to", target, PRESET_NAMES)
    _check_family(m, "model.")  # the count reads family and canon
    m.n_embd = matched_width(m, target_params(m), int(RANGES["model.n_embd"].hi))


def _check_eval_and_probe(cfg: ExperimentConfig) -> None:
    e, p = cfg.eval, cfg.probe
    if not e.cuts:
        raise ConfigError("eval.cuts is empty: give one or more prompt lengths >= 0, e.g. [0, 50]")
    if not e.temperatures:
        raise ConfigError("eval.temperatures is empty: give one or more, e.g. [1.0]")
    if e.corrupt and not any(c > 0 for c in e.cuts):
        raise ConfigError(
            f"eval.corrupt needs a prompt to corrupt: add a cut > 0 to eval.cuts (now {e.cuts})"
        )
    if not p.windows:
        raise ConfigError("probe.windows is empty; give at least one, e.g. [all]")
    if not cfg.intervene.parts:
        raise ConfigError("intervene.parts is empty; give one or more of erasure, patching, heads")
    for key, values in (
        ("eval.cuts", e.cuts),
        ("eval.temperatures", e.temperatures),
        ("eval.corrupt", e.corrupt),
        ("probe.windows", p.windows),
        ("probe.targets", p.targets or []),
        ("intervene.parts", cfg.intervene.parts),
        ("intervene.targets", cfg.intervene.targets or []),
        ("dynamics.eval", cfg.dynamics.eval),
        ("dynamics.analyses", cfg.dynamics.analyses),
    ):
        if len(set(values)) != len(values):  # 1 and 1.0 too: each value is measured once
            raise ConfigError(f"{key} {values} lists a value twice; give each once")


def _check_exclude(cfg: ExperimentConfig) -> None:
    """data.exclude and eval.compositions: lists of distinct texts (their rules are checked
    against the grammar, cfglab.data.exclude, where the training stream and the composition
    family start); exclusion filters fresh fast-sampler trees only. eval.compositions None
    becomes data.exclude."""
    d, e = cfg.data, cfg.eval
    for key, texts in (("data.exclude", d.exclude), ("eval.compositions", e.compositions or [])):
        blank = any(not isinstance(t, str) or not t.strip() for t in texts)
        if blank or len(set(texts)) < len(texts):
            raise ConfigError(
                f"{key} {texts}: give distinct texts such as \"A -> 'a' under S -> A B\""
            )
    if d.exclude and (d.sampler != "fast" or d.dataset):
        why = f"data.dataset {d.dataset}" if d.dataset else f"data.sampler {d.sampler}"
        raise ConfigError(
            f"data.exclude filters the fast sampler's fresh trees; {why} has none to filter: "
            "set data.dataset=null and data.sampler=fast, or data.exclude=[]"
        )
    if e.compositions is None and d.exclude:
        e.compositions = list(d.exclude)  # derived: the family scores what training held out


def _check_metadata(cfg: ExperimentConfig) -> None:
    """eval.metadata None becomes data.metadata.levels; both are checked where the grammar is
    known (cfglab.data.metadata.check_metadata, from stages.check_config)."""
    if cfg.eval.metadata is None and cfg.data.metadata.levels:
        cfg.eval.metadata = sorted(set(cfg.data.metadata.levels))  # what training named


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
