"""Every setting of every stage: one typed dataclass per config section, one default each.

An experiment is one `ExperimentConfig`; its sections are the stages' settings (grammar, data,
model, train, eval, probe, attention, intervene, report). The comment beside a field is its
documentation (`configs/quickstart.yaml` repeats them). Values are names and numbers only,
never classes, so a config round-trips through YAML and JSON; names are resolved by the stage
that uses them. Nothing here imports torch.

`ModelShape` is the network's shape and position variant. It is shared, field for field, with
`cfglab.model.GPTConfig` (which subclasses it and adds `vocab_size`), so a setting of the model
cannot exist in one and be missing in the other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cfglab.grammar.implicit import IMPLICIT_MODES, IMPLICIT_WEIGHTS

T = TypeVar("T")

# objective name -> whether the model is causal (GPT) or bidirectional (encoder, masked LM);
# the torch-free registry of the names that `cfglab.train.objectives.OBJECTIVES` implements
OBJECTIVES: dict[str, bool] = {"next_token": True, "mlm": False}
# The torch-free lists of the names the stages implement, so a config is checked at load time,
# before torch is imported. Each is the source of its registry: the registry is built with
# `registry(NAMES, {...})`, which refuses, at import, a registry whose names differ from it.
POSITION_NAMES = ("abs", "rel", "rot", "pos", "uni", "nope", "alibi")  # model.positions.POSITIONS
POS_INITS = ("uniform", "local")  # model.pos_init: where pos's distance table starts
# model family -> whether it has attention: position variants, Canon layers and the encoder
# (train.objective mlm) apply to those that do; cfglab.model.families.FAMILIES implements them
MODEL_FAMILIES: dict[str, bool] = {"transformer": True, "lstm": False, "ssm": False}
FAMILY_NAMES = tuple(MODEL_FAMILIES)
CANON_SITES = "ABCD"  # model.canon: a subset in this order (SPEC.md "Canon layers")
# name -> shape. "gpt2-small" is the paper's model (12/12/768, ~86M parameters with the cfg3
# vocabulary). The paper's Part 1 text gives no other sizes for these experiments, so the
# smaller ones are ours, for CPU work.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 32},  # unit tests (~30k parameters)
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 128},  # CPU quickstart (~0.8M)
    "medium": {"n_layer": 6, "n_head": 6, "n_embd": 384},  # a few CPU hours / one GPU (~11M)
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # the paper's (~86M)
}
PRESET_NAMES = tuple(PRESETS)
DECAYS = ("linear", "cosine", "constant")  # learning-rate decay after warmup
DTYPES = ("auto", "float32", "bfloat16")  # auto = bf16 autocast on CUDA, float32 on CPU
# the stages `cfglab run` can run, in their natural order; the torch-free registry of the names
# that `cfglab.stages.STAGES` implements (a test keeps the two equal)
STAGE_NAMES = ("train", "eval", "analyze", "intervene", "dynamics", "report")
DEFAULT_STAGES = ("train", "eval", "analyze", "report")  # `stages` unless set (intervene: opt-in)
PROBE_WINDOWS = ("all", "causal", "diagonal", "tridiagonal")  # cfglab.analyze.probe.WINDOWS
INTERVENTION_PARTS = ("erasure", "patching", "heads")  # cfglab.analyze.interventions.PARTS
SAMPLER_NAMES = ("fast", "physicslm4")  # cfglab.data.dataset.FRESH_SAMPLERS
NOISE_KIND_NAMES = ("token", "rule")  # cfglab.data.noise.NOISE_KINDS
CORRUPTION_NAMES = ("substitute", "insert", "delete")  # cfglab.data.noise.KINDS
IN_CONTEXT_FAMILY_NAMES = ("random", "permute")  # cfglab.data.in_context.GRAMMAR_FAMILIES
# derived from their registry, which is torch-free and imports no config
IMPLICIT_MODE_NAMES = tuple(IMPLICIT_MODES)  # cfglab.grammar.implicit
IMPLICIT_WEIGHT_NAMES = tuple(IMPLICIT_WEIGHTS)


def registry(names: tuple[str, ...], entries: dict[str, T], what: str) -> dict[str, T]:
    """`entries` as a registry keyed by exactly `names`, in that order (the torch-free list
    config validates against); a registry whose names differ fails at import, naming both."""
    if tuple(entries) != tuple(names):
        raise ImportError(
            f"{what}: the registry's names {tuple(entries)} differ from config's {names}; add "
            "or remove the name in cfglab/config/schema.py too"
        )
    return entries


# Settings that do not change what is learned: a resumed run may use other values freely
# (another device, more threads, a different logging cadence). Every other data./train.
# setting is part of the run's record: changing it on --resume needs --allow-changes.
NOT_TRAINING = {
    "train.device",
    "train.threads",
    "train.compile",
    "train.tensorboard",
    "train.log_every",
    "train.ckpt_every",
    "train.keep_last",
    "train.eval_every",
    "train.eval_batches",
    "data.prefetch",
}


@dataclass
class ImplicitConfig:
    mode: str = "disjoint"  # bags of tokens per terminal: disjoint (round robin) or overlap
    tokens: int | None = None  # observable tokens V (None: 3 per terminal)
    weights: str = "uniform"  # a token within its bag: uniform, or nu1 (weights 1..k)
    seed: int = 0  # overlap bags' draws


@dataclass
class GrammarConfig:
    name: str = "cfg3b"  # a built-in name (`cfglab grammar list`) or a grammar file path
    implicit: ImplicitConfig | None = None  # an implicit CFG: each terminal emits bag tokens

    def load(self):
        """The Grammar this config names, made implicit when `implicit` is set (GrammarError if
        the name or file is bad)."""
        from cfglab.grammar import load, make_implicit

        grammar = load(self.name)
        if self.implicit is None:
            return grammar
        i = self.implicit
        tokens = i.tokens if i.tokens is not None else 3 * grammar.n_t
        return make_implicit(grammar, i.mode, tokens, i.weights, i.seed)


@dataclass
class NoiseConfig:
    fraction: float = 0.0  # rho: share of training strings perturbed (0: the clean stream)
    kind: str = "token"  # token (each token changed at `rate`) or rule (a node's rule swapped)
    rate: float = 0.15  # gamma: per-token rate of kind token
    kinds: list[str] = field(default_factory=lambda: ["substitute"])  # token: substitute etc.


@dataclass
class InContextConfig:  # data.in_context: every window a fresh grammar (cfglab.data.in_context)
    family: str = "random"  # random (the paper's recipe below) or permute (of grammar.name)
    levels: list[int] = field(default_factory=lambda: [1, 3, 3, 3])  # random: symbols per level
    rules: list[int] = field(default_factory=lambda: [2, 3])  # random: rules per NT, min and max
    length: list[int] = field(default_factory=lambda: [2, 3])  # random: symbols per rule, min, max
    strings_per_window: int = 8  # K: whole strings every window holds (eval: k = 1..K)


@dataclass
class MetadataConfig:  # metadata conditioning (cfglab.data.metadata); levels [] = off
    levels: list[int] = field(default_factory=list)  # depths whose rule choices are named (root 0)
    fraction: float = 0.5  # share of training strings that carry them, after their BOS


@dataclass
class DataConfig:
    seed: int = 0  # data seed: the training stream is keyed by (seed, split, step)
    max_len: int | None = None  # resample strings longer than this (None: keep all)
    dataset: str | None = None  # a saved dataset dir (`cfglab data`) instead of fresh samples
    prefetch: int = 4  # batches sampled ahead by a background thread (0: sample inline)
    sampler: str = "fast"  # fast, or physicslm4 (the authors' generator, their strings)
    noise: NoiseConfig = field(default_factory=NoiseConfig)  # perturbed pretraining data
    # held-out compositions (cfglab.data.exclude): training strings whose sampled tree holds one
    # of these rule combinations are redrawn, e.g. "7 -> '3' '2' under 10 -> 8 7" (a rule under
    # a parent rule) or "... below ..." (anywhere in its subtree); the fast sampler only
    exclude: list[str] = field(default_factory=list)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)  # metadata conditioning
    # grammars learned in context: each window draws its own grammar of a family (None: off)
    in_context: InContextConfig | None = None


@dataclass(kw_only=True)
class ModelShape:
    block_size: int = 512  # window length in tokens (the paper: 512)
    n_layer: int = 2  # Transformer blocks (ignored if model.preset is set)
    n_head: int = 2  # attention heads per block (ignored if model.preset is set)
    n_embd: int = 64  # residual width (ignored if model.preset is set)
    dropout: float = 0.0  # the paper trains without dropout
    position: str = "rot"  # position variant, a name in cfglab.model.positions.POSITIONS
    causal: bool = True  # derived from train.objective (False for mlm); not set by hand
    bias: bool = True  # biases in linear layers and LayerNorm (GPT-2 style)
    rel_max_distance: int = 512  # rel: |i - j| clipped here (DeBERTa's max_relative_positions)
    rotary_fraction: float = 1.0  # rot: share of each head's dims rotated (HF GPT-NeoX: 0.25)
    rotary_base: float = 10000.0  # rot: frequency base
    family: str = "transformer"  # transformer, lstm or ssm (cfglab.model.families.FAMILIES)
    canon: str = ""  # transformer: Canon layers at these sites of each block, e.g. "AC", "ABCD"
    canon_kernel: int = 4  # Canon: positions each layer mixes (the current and K - 1 before)
    canon_residual: bool = True  # Canon: output = input + convolution (the authors' default)
    pos_init: str = "uniform"  # pos: table starts at 0 (uniform over the prefix) or local (ALiBi)


@dataclass(kw_only=True)
class ModelConfig(ModelShape):
    preset: str | None = None  # a name in PRESETS (above); sets n_layer/n_head/n_embd
    # a preset name or a parameter count: n_embd is then chosen (at load, recorded in
    # config.json) so the parameters besides the token embedding match it (config/sizes.py)
    match_params_to: int | str | None = None


@dataclass
class TrainConfig:
    objective: str = "next_token"  # next_token (GPT) or mlm (encoder, 15% masking)
    mlm_prob: float = 0.15  # masked-LM: share of positions predicted
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 96  # GLOBAL windows per optimizer step, fixed across world sizes
    grad_accum: int = 1  # micro-steps per optimizer step (per-rank batch is split this many ways)
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 0.0  # learning rate at the end of the decay
    warmup_steps: int = 0  # linear warmup from 0 to lr
    decay: str = "linear"  # linear, cosine or constant after warmup
    weight_decay: float = 0.1  # AdamW, on matrices only
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.98  # AdamW second-moment decay (the reproductions' 0.98)
    grad_clip: float = 1.0  # max global grad norm (0: off)
    seed: int = 0  # model init and dropout (the analyses' random-init twin is this init)
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1, ...
    dtype: str = "auto"  # auto (bf16 autocast on CUDA), float32, bfloat16
    compile: bool = False  # torch.compile the model
    threads: int | str | None = "auto"  # torch CPU threads: auto (measured), a number, or None
    log_every: int = 10  # steps between metrics.jsonl lines
    eval_every: int = 100  # steps between validation losses (0: only at the end)
    eval_batches: int = 4  # validation batches (of batch_size windows) per evaluation
    ckpt_every: int = 500  # steps between checkpoints (the last step always saves)
    keep_last: int = 2  # checkpoints kept on disk
    keep_steps: list[int] | str = field(default_factory=list)  # also kept: steps, or "log:N"
    tensorboard: bool = True  # also write TensorBoard events (if tensorboard is installed)


@dataclass
class EvalConfig:
    n_samples: int = 100  # generations per accuracy number
    n_kl: int | None = None  # fresh true strings for the KL (None: n_samples)
    cuts: list[int] = field(default_factory=lambda: [0, 50])  # prompt lengths (cut0, cut50)
    temperatures: list[float] = field(default_factory=lambda: [1.0])  # sampling temperatures
    corrupt: list[float] = field(
        default_factory=list
    )  # robustness: gamma values for cutC>0 prompts
    n_fixed_prompt: int = 100  # completions of one fixed prompt (diversity), at most n_samples
    batch_size: int = 32  # sequences per model call
    seed: int | str = 1  # every eval stream is keyed by (seed, purpose); per_run: the run's
    device: str | None = None  # None: the run's train.device
    threads: int | str | None = None  # torch CPU threads: auto, a number; None: train.threads
    # rule combinations the composition family scores (None: data.exclude; set it on a run
    # trained without exclusions to score the same combinations on a full model)
    compositions: list[str] | None = None
    # depths whose rule choices the metadata family's prompts name (None: data.metadata.levels;
    # [] skips the family); the model must have been trained with metadata at these depths
    metadata: list[int] | None = None


@dataclass
class ProbeConfig:
    n_train: int = 768  # fresh strings the probes learn on
    n_test: int = 256  # other fresh strings they are scored on
    windows: list[str] = field(
        default_factory=lambda: ["all", "diagonal"]
    )  # keys a probe reads (one table each): the paper's all, and at NT ends (diagonal)
    n_heads: int = 4  # H: probe heads (the paper: 16)
    d_probe: int = 32  # d': position embedding size (the paper: 1024)
    steps: int = 600  # optimizer steps (batches of training strings)
    batch_size: int = 16  # strings per step
    n_queries: int = 64  # positions per string whose loss a step uses (all if fewer)
    lr: float = 1e-2  # AdamW, constant (the paper's 3e-3 needs ~10x more steps)
    weight_decay: float = 1e-3  # AdamW
    seed: int | str = 2  # probe strings and probe init, keyed by purpose; per_run: the run's
    baseline: bool = True  # also probe a random-init twin of the model (the chance level)
    targets: list[str] | None = None  # cfglab.analyze.targets.TARGETS (None: the grammar's)
    layers: str = "all"  # the layers probed: all, or last (the last block's residual stream)


@dataclass
class AttentionConfig:
    n_strings: int = 64  # fresh labelled strings
    n_examples: int = 4  # example maps drawn (the heads with the highest boundary score)
    example_len: int = 64  # tokens of the example maps
    seed: int | str = 3  # attention strings, keyed by purpose; per_run: the run's
    baseline: bool = True  # also measure a random-init twin of the model (the chance level)


@dataclass
class InterveneConfig:  # the intervene stage (cfglab intervene): does the model use the tree?
    parts: list[str] = field(
        default_factory=lambda: list(INTERVENTION_PARTS)
    )  # erasure (LEACE per level and layer), patching (layer x position), heads (mean-ablated)
    targets: list[str] | None = None  # erased probe targets (None: ancestor, boundary if layered)
    n_fit: int = 256  # fresh labelled strings the erasers are fitted on (and head means taken)
    n_strings: int = 128  # other fresh strings whose next-token KL to the exact one is measured
    random_draws: int = 3  # random erasers of equal rank per target and layer (the control)
    n_generate: int = 64  # cut0 generations per eraser and cell, judged exactly (0: none)
    n_pool: int = 512  # fresh strings the patching pairs are found among
    n_pairs: int = 64  # patching pairs per level, at most
    window: int = 8  # patching: positions up to the NT end (included), patched one at a time
    n_bootstrap: int = 1000  # resamples of the strings (pairs) behind each 95% interval
    seed: int | str = 4  # every intervention stream, keyed by purpose; per_run: the run's


@dataclass
class AnalyzeConfig:
    device: str | None = None  # where every analysis family runs (None: the run's train.device)
    threads: int | str | None = None  # torch CPU threads: auto, a number; None: train.threads


@dataclass
class DynamicsConfig:
    n_samples: int = 50  # cut0 generations per checkpoint (eval.n_samples there)
    n_kl: int = 50  # true strings per checkpoint for the KL, overall and by level (eval.n_kl)
    eval: list[str] = field(default_factory=lambda: ["accuracy", "distribution"])  # families
    analyses: list[str] = field(default_factory=lambda: ["probe", "attention"])  # families
    probe_layers: str = "last"  # probe.layers at each checkpoint (emergence reads the last)


@dataclass
class ReportConfig:
    compare: list[str] = field(default_factory=list)  # runs whose probes go beside this run's


@dataclass
class ExperimentConfig:
    name: str = "run"  # run directory name: runs/<name>
    out_dir: str = "runs"  # parent of run directories
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))  # `cfglab run`'s
    grammar: GrammarConfig = field(default_factory=GrammarConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    intervene: InterveneConfig = field(default_factory=InterveneConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# the sections whose seed may be "per_run" (test data drawn from the run's own seed)
PER_RUN_SECTIONS = ("eval", "probe", "attention", "intervene")


def resolved_seeds(cfg: ExperimentConfig) -> ExperimentConfig:
    """cfg with every `per_run` seed replaced by the run's own: the stream (data.seed,
    "per_run", section), so each seed of an experiment has its own test data, the same for
    every grid point of that seed (the paired design holds, and the intervals across seeds then
    include the test data's sampling variance). Other seeds are kept as they are."""
    from cfglab.seeds import stream_seed

    changed = {}
    for i, name in enumerate(PER_RUN_SECTIONS):
        section = getattr(cfg, name)
        if section.seed == "per_run":
            seed = stream_seed(cfg.data.seed, "per_run", i)
            changed[name] = dataclasses.replace(section, seed=seed)
    return dataclasses.replace(cfg, **changed) if changed else cfg


# ---- the tool commands' defaults ----------------------------------------------------------------
# Not part of a run's config, but one default each all the same, which the CLI reads (`grammar
# implicit` reads ImplicitConfig's, `corrupt --kinds` NoiseConfig's kinds).


@dataclass
class SampleDefaults:  # cfglab sample
    n: int = 10  # strings
    seed: int = 0  # the sampler's seed
    max_len: int | None = None  # resample strings longer than this (None: keep all)


@dataclass
class CorruptDefaults:  # cfglab corrupt
    seed: int = 0  # the corruptions' seed
    kinds: list[str] = field(default_factory=lambda: NoiseConfig().kinds)  # applied in order


@dataclass
class GenerateDefaults:  # cfglab generate
    n: int = 10  # generations from BOS, or completions per prompt
    temperature: float = 1.0  # sampling temperature
    seed: int = 0  # the sampling seed


@dataclass
class RandomGrammarDefaults:  # cfglab grammar random: the paper's recipe
    levels: list[int] = field(default_factory=lambda: [1, 3, 3, 3, 3, 3, 3])  # symbols per level
    rules: list[int] = field(default_factory=lambda: [2, 3])  # rules per nonterminal: min, max
    length: list[int] = field(default_factory=lambda: [2, 3])  # symbols per rule: min, max
    seed: int = 0  # the recipe's seed


def kept_steps(spec: list[int] | str, max_steps: int) -> list[int]:
    """train.keep_steps as sorted steps: a list as given, or "log:N", N steps log-spaced from 1 to
    max_steps (rounded, duplicates merged, max_steps included). ValueError if malformed."""
    if isinstance(spec, str):
        head, _, count = spec.partition(":")
        if head != "log" or not count.isdecimal() or int(count) < 1:
            raise ValueError(f"{spec!r} is not log:N (N >= 1)")
        n = int(count)
        if n == 1:
            return [max_steps]
        ratio = max_steps ** (1 / (n - 1))
        return sorted({min(max_steps, max(1, round(ratio**i))) for i in range(n)} | {max_steps})
    return sorted(set(spec))


def flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
