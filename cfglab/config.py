"""Experiment configs: one typed dataclass per stage, a strict YAML loader, dotted overrides, JSON.

An experiment is one `ExperimentConfig` (grammar, data, model, train, eval, analyze sections).
It stores names, not classes, so it round-trips through YAML and JSON; names are resolved by
the stage that uses them. Loading is strict, so a typo fails in under a second, before any
sampling or training::

    cfg = load_config("configs/quickstart.yaml", ["model.position=rel", "train.max_steps=200"])
    cfg.model.position   # 'rel'

Unknown keys raise ConfigError naming the key with a "did you mean"; values are checked against
the field's type (an int is accepted for a float, nothing else is converted). Override values
are read as YAML scalars (`200` -> int, `true` -> bool, `[1, 3, 3]` -> list, `null` -> None).

What is validated where (config.py never imports torch):
- here: every key and type, value ranges, the grammar (loaded through `cfglab.grammar.load`),
  the objective name (`OBJECTIVES` below, the torch-free registry of objective names that
  `cfglab.train.objectives.OBJECTIVES` implements; a test keeps the two equal);
- at the start of `cfglab.train.loop.train`, before any sampling: the position variant (by
  building the model, which checks `cfglab.model.positions.POSITIONS`), the batch against the
  world size, and the checkpoint on resume.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cfglab.errors import CfglabError, ConfigError

# objective name -> whether the model is causal (GPT) or bidirectional (encoder, masked LM)
OBJECTIVES: dict[str, bool] = {"next_token": True, "mlm": False}
DECAYS = ("linear", "cosine", "constant")  # learning-rate decay after warmup
DTYPES = ("auto", "float32", "bfloat16")  # auto = bf16 autocast on CUDA, float32 on CPU


@dataclass
class GrammarConfig:
    name: str = "cfg3b"  # a built-in name (`cfglab grammar list`) or a grammar file path

    def load(self):
        """The Grammar this config names (GrammarError if the name or file is bad)."""
        from cfglab.grammar import load

        return load(self.name)


@dataclass
class DataConfig:
    seed: int = 0  # data seed: the training stream is keyed by (seed, step, window)
    max_len: int | None = None  # resample strings longer than this (None: keep all)
    dataset: str | None = None  # a saved dataset dir (`cfglab data`) instead of fresh samples
    prefetch: int = 4  # batches sampled ahead by a background thread (0: sample inline)


@dataclass
class ModelConfig:
    preset: str | None = None  # a name in cfglab.model.PRESETS; sets n_layer/n_head/n_embd
    n_layer: int = 2  # Transformer blocks (ignored if preset is set)
    n_head: int = 2  # attention heads per block (ignored if preset is set)
    n_embd: int = 64  # residual width (ignored if preset is set)
    block_size: int = 512  # window length in tokens (the paper: 512)
    dropout: float = 0.0  # the paper trains without dropout
    position: str = "rot"  # position variant, a name in cfglab.model.positions.POSITIONS
    bias: bool = True  # biases in linear layers and LayerNorm (GPT-2 style)
    causal: bool = True  # derived from train.objective (False for mlm); not set by hand

    def to_gpt_config(self, vocab_size: int):
        """The model stage's GPTConfig (imports torch through cfglab.model)."""
        from cfglab.model import PRESETS
        from cfglab.model.gpt import GPTConfig

        sizes = {"n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd}
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ConfigError(
                    f"model.preset: unknown preset {self.preset!r}"
                    f"{_did_you_mean(self.preset, PRESETS)}; choose from "
                    f"{', '.join(PRESETS)}, or set it to null and give n_layer, "
                    "n_head, n_embd"
                )
            sizes = dict(PRESETS[self.preset])
        return GPTConfig(
            vocab_size=vocab_size,
            block_size=self.block_size,
            dropout=self.dropout,
            position=self.position,
            causal=self.causal,
            bias=self.bias,
            **sizes,
        )


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
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0  # max global grad norm (0: off)
    seed: int = 0  # model init and dropout seed
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1, ...
    dtype: str = "auto"  # auto (bf16 autocast on CUDA), float32, bfloat16
    compile: bool = False  # torch.compile the model
    threads: int | None = None  # torch CPU threads (None: torch's default)
    log_every: int = 10  # steps between metrics.jsonl lines
    eval_every: int = 100  # steps between validation losses (0: only at the end)
    eval_batches: int = 4  # validation batches (of batch_size windows) per evaluation
    ckpt_every: int = 500  # steps between checkpoints (the last step always saves)
    keep_last: int = 2  # checkpoints kept on disk
    tensorboard: bool = True  # also write TensorBoard events (if tensorboard is installed)


@dataclass
class EvalConfig:
    n_samples: int = 100  # generations per accuracy number
    temperature: float = 1.0  # sampling temperature for generation accuracy
    cuts: list[int] = field(default_factory=lambda: [0, 50])  # prompt lengths (cut0, cut50)
    seed: int = 1  # generation and fresh-sample seed


@dataclass
class AnalyzeConfig:
    n_strings: int = 256  # true strings whose hidden states are probed
    seed: int = 2  # probe data seed
    probe: bool = True  # `cfglab run` fits linear probes (analyze/probe.json)
    attention: bool = True  # `cfglab run` measures attention (analyze/attention.json)


@dataclass
class ExperimentConfig:
    name: str = "run"  # run directory name: runs/<name>
    out_dir: str = "runs"  # parent of run directories
    grammar: GrammarConfig = field(default_factory=GrammarConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- loading ---------------------------------------------------------------------------------
def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (None: the defaults), apply dotted `key=value` overrides, validate.

    A relative grammar file path is resolved against the config file's folder first, then the
    working directory, and stored absolute so the run directory's config.json is portable.
    """
    data: dict[str, Any] = {}
    base = Path(".")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"no such config file: {path}; give a YAML file such as configs/quickstart.yaml"
            )
        try:
            loaded = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"{path}: not valid YAML ({first}); fix the syntax") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections "
                "(grammar:, model:, train:, ...)"
            )
        data = loaded
        base = p.parent
    for item in overrides or []:
        _apply_override(data, item)
    cfg = config_from_dict(data)
    _resolve_grammar_path(cfg, base)
    return cfg


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an ExperimentConfig from plain data (YAML or config.json)."""
    cfg = _build(ExperimentConfig, data, "")
    _validate(cfg)
    return cfg


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as JSON (enough to rebuild the run)."""
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def read_config(path: str | Path) -> ExperimentConfig:
    """Read a config.json written by `save_config`."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no config.json at {p}; is {p.parent} a run directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: corrupt config.json ({exc}); re-create the run") from None
    return config_from_dict(data)


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value; write e.g. model.position=rel")
    key, raw = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: bad key {key!r}; write e.g. train.max_steps=200")
    # the type check in _build validates; str fields take the raw text (see _coerce_override)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        node = nxt
    node[parts[-1]] = _RawOverride(raw, value)


class _RawOverride:
    """An override value with its raw text, so a str field gets '1e-3' rather than 0.001."""

    def __init__(self, raw: str, value: Any) -> None:
        self.raw, self.value = raw, value


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls: type, data: Any, where: str):
    label = where.rstrip(".") or "config"
    if isinstance(data, _RawOverride):
        data = data.value
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of keys, got {_type_name(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown key {where}{key}{_did_you_mean(str(key), fields)}; "
                f"valid keys in {label}: {', '.join(fields)}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value if value is not None else {}, f"{where}{key}.")
        else:
            kwargs[key] = _check_type(value, hint, f"{where}{key}")
    return cls(**kwargs)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _hint_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_hint_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"list of {_hint_name(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else hint.__name__


def _check_type(value: Any, hint: Any, key: str) -> Any:
    raw = None
    if isinstance(value, _RawOverride):
        raw, value = value.raw, value.value
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    for opt in options:
        ok, out = _matches(value, opt, raw)
        if ok:
            return out
    raise ConfigError(
        f"{key}: expected {_hint_name(hint)}, got {_type_name(value)} "
        f"{value!r}; fix the value in the config or the --set override"
    )


def _matches(value: Any, opt: Any, raw: str | None) -> tuple[bool, Any]:
    if opt is type(None):
        return value is None, None
    if opt is str:
        if isinstance(value, str):
            return True, value
        if raw is not None and value is not None and not isinstance(value, (list, dict)):
            return True, raw.strip()  # `--set name=123` means the string "123"
        return False, None
    if opt is bool:
        return isinstance(value, bool), value
    if opt is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if opt is float:
        if isinstance(value, str):
            try:  # PyYAML reads 3e-4 (no dot) as a string; accept it as the float it means
                return True, float(value)
            except ValueError:
                return False, None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if typing.get_origin(opt) is list:
        if not isinstance(value, list):
            return False, None
        (inner,) = typing.get_args(opt)
        outs = [_matches(v, inner, None) for v in value]
        return all(ok for ok, _ in outs), [o for _, o in outs]
    return False, None


def _validate(cfg: ExperimentConfig) -> None:
    """Value checks that need no torch and no grammar file (ranges, names)."""
    t, m, d = cfg.train, cfg.model, cfg.data
    if t.objective not in OBJECTIVES:
        raise ConfigError(
            f"train.objective: unknown objective {t.objective!r}"
            f"{_did_you_mean(t.objective, OBJECTIVES)}; choose from "
            f"{', '.join(OBJECTIVES)}"
        )
    m.causal = OBJECTIVES[t.objective]
    if t.decay not in DECAYS:
        raise ConfigError(
            f"train.decay: unknown decay {t.decay!r}{_did_you_mean(t.decay, DECAYS)}"
            f"; choose from {', '.join(DECAYS)}"
        )
    if t.dtype not in DTYPES:
        raise ConfigError(
            f"train.dtype: unknown dtype {t.dtype!r}{_did_you_mean(t.dtype, DTYPES)}"
            f"; choose from {', '.join(DTYPES)}"
        )
    positive = {
        "train.max_steps": t.max_steps,
        "train.batch_size": t.batch_size,
        "train.grad_accum": t.grad_accum,
        "train.log_every": t.log_every,
        "train.eval_batches": t.eval_batches,
        "train.ckpt_every": t.ckpt_every,
        "train.keep_last": t.keep_last,
        "model.block_size": m.block_size,
        "model.n_layer": m.n_layer,
        "model.n_head": m.n_head,
        "model.n_embd": m.n_embd,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if t.lr <= 0 or t.min_lr < 0 or t.min_lr > t.lr:
        raise ConfigError(f"train.lr ({t.lr}) must be > 0 and train.min_lr ({t.min_lr}) in [0, lr]")
    if not 0 < t.mlm_prob < 1:
        raise ConfigError(f"train.mlm_prob must be in (0, 1), got {t.mlm_prob}")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if t.warmup_steps < 0 or t.eval_every < 0 or t.grad_clip < 0 or d.prefetch < 0:
        raise ConfigError(
            "train.warmup_steps, train.eval_every, train.grad_clip and data.prefetch must be >= 0"
        )
    if d.max_len is not None and d.max_len < 1:
        raise ConfigError(f"data.max_len must be >= 1 or null, got {d.max_len}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            f"train.batch_size {t.batch_size} is not divisible by train.grad_accum "
            f"{t.grad_accum}; pick a batch that splits evenly"
        )
    if not cfg.name or "/" in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(f"name {cfg.name!r} must be a plain directory name (no '/')")


def _resolve_grammar_path(cfg: ExperimentConfig, base: Path) -> None:
    """Check the grammar now (before any work) and make a relative file path absolute."""
    from cfglab.grammar import BUILTIN_GRAMMARS

    name = cfg.grammar.name
    if name not in BUILTIN_GRAMMARS:
        for candidate in (base / name, Path(name)):
            if candidate.is_file():
                cfg.grammar.name = str(candidate.resolve())
                break
        else:
            raise ConfigError(
                f"grammar.name: unknown grammar {name!r}"
                f"{_did_you_mean(name, BUILTIN_GRAMMARS)}; give a built-in name "
                f"({', '.join(BUILTIN_GRAMMARS)}) or the path of a grammar file"
            )
    try:
        cfg.grammar.load()
    except CfglabError as exc:
        raise ConfigError(f"grammar.name: {exc}") from None
