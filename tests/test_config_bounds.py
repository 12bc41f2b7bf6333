"""Hostile configs, round 3 (issue 27, classes 2 and 3): what a YAML text may expand to, and
the range of every numeric setting.

- Every numeric field of ExperimentConfig (found by walking the dataclasses, so a new key is
  walked too) has a range in cfglab.config.validate.RANGES; each is loaded at its bounds (it
  loads) and just beyond them (one ConfigError line naming the key).
- Alias bombs, deep nesting, self-containing aliases and NUL bytes in a config file, an
  experiment file or a --set value are one ConfigError line, in bounded time, before anything
  is built; the node count with aliases expanded is checked against a brute-force walk.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import types
import typing
from pathlib import Path

import pytest
import yaml

from cfglab.cli import main
from cfglab.config import ExperimentConfig, load_config
from cfglab.config.load import MAX_YAML_DEPTH, MAX_YAML_NODES, safe_yaml, yaml_expansion
from cfglab.config.validate import MAX_KEPT, MAX_LEN, RANGES, bound_of
from cfglab.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def numeric_fields(cls: type = ExperimentConfig, prefix: str = ""):
    """(dotted key, type) of every field that holds a number (also in a list or a union)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        nested = [o for o in options if dataclasses.is_dataclass(o)]
        if nested:
            yield from numeric_fields(nested[0], f"{prefix}{f.name}.")
            continue
        inner = [typing.get_args(o)[0] if typing.get_origin(o) is list else o for o in options]
        kinds = [k for k in inner if k in (int, float)]
        if kinds:
            yield f"{prefix}{f.name}", kinds[0]


NUMERIC = dict(numeric_fields())

# settings a value at a bound needs beside it to load (the rules between keys)
COMPANIONS = {
    "model.n_head": ["model.n_embd=2048"],  # n_embd a multiple of n_head, 2 dims per head
    "model.n_embd": ["model.n_head=1"],
    "model.rotary_fraction": ["model.n_head=1", "model.n_embd=65536"],  # rotates >= 2 dims
    "grammar.implicit.tokens": ["grammar.implicit.mode=disjoint"],
    "grammar.implicit.seed": ["grammar.implicit.mode=overlap"],
    "eval.metadata": ["data.metadata.levels=[64]"],
}
ONE_TERMINAL = "S -> 'a' S [0.5] | 'a' [0.5]\n"  # implicit tokens at 1 needs one terminal
# the smallest value above an open lower bound that loads, where a rule between keys sets it
JUST_ABOVE = {"model.rotary_fraction": 2 / 65536}  # 2 rotated dims of a 65536-dim head


def test_every_numeric_key_has_a_range():
    assert set(NUMERIC) == set(RANGES), "a numeric key without a range in validate.RANGES"
    assert "train.keep_steps" in NUMERIC and "eval.temperatures" in NUMERIC


def test_the_sampler_and_the_config_share_the_length_cap():
    from cfglab.data.sampler import MAX_SAMPLE_LENGTH

    assert MAX_LEN == MAX_SAMPLE_LENGTH


def _text(key: str, value) -> str:
    """key=value as --set writes it (a list key gets a one-element list)."""
    one = json.dumps(value) if not isinstance(value, float) else repr(value)
    if key in (
        "eval.cuts",
        "eval.temperatures",
        "eval.corrupt",
        "train.keep_steps",
        "data.metadata.levels",
        "eval.metadata",
        "data.in_context.levels",
        "data.in_context.rules",
        "data.in_context.length",
    ):
        return f"{key}=[{one}]"
    return f"{key}={one}"


def _cases(key: str, kind: type, cfg: ExperimentConfig):
    """(value, loads?) at and just beyond each end of key's range."""
    r = RANGES[key]
    lo, hi = r.lo, bound_of(cfg, r.hi)
    step = 1 if kind is int else 1e-6 * max(1.0, abs(lo))
    hstep = 1 if kind is int else 1e-6 * max(1.0, abs(hi))
    inside_lo = JUST_ABOVE.get(key, lo + step) if r.open_lo else lo
    inside_hi = hi - hstep if r.open_hi else hi
    yield kind(inside_lo), True
    yield kind(lo if r.open_lo else lo - step), False
    yield kind(inside_hi), True
    yield kind(hi if r.open_hi else hi + hstep), False


@pytest.mark.parametrize("key", sorted(RANGES))
def test_every_numeric_key_at_and_beyond_its_bounds(key, tmp_path):
    base = list(COMPANIONS.get(key, []))
    if key.startswith("grammar.implicit."):
        grammar = tmp_path / "one.cfg"
        grammar.write_text(ONE_TERMINAL)
        base.append(f"grammar.name={grammar}")
    cfg = load_config(None, base)
    for value, loads in _cases(key, NUMERIC[key], cfg):
        overrides = [*base, _text(key, value)]
        if loads:
            load_config(None, overrides)  # raises if the bound itself is refused
        else:
            with pytest.raises(ConfigError) as exc:
                load_config(None, overrides)
            message = str(exc.value)
            assert key in message and "\n" not in message, message


def test_values_validation_accepted_before_are_refused_now():
    """The examples of issue 27: each one line, none a hang."""
    cases = {
        "train.keep_steps=log:1000000000": f"at most log:{MAX_KEPT}",
        "train.seed=18446744073709551616": "train.seed must be <=",
        "train.beta1=1.0": "train.beta1 must be < 1",
        "train.beta2=-0.1": "train.beta2 must be >= 0",
        "train.lr=1e10": "train.lr must be <= 1",
        "train.min_lr=0.5": "train.min_lr must be <= train.lr",
        "train.weight_decay=-1": "train.weight_decay must be >= 0",
        "eval.temperatures=[1e-300]": "eval.temperatures must be >= 0.01",
        "eval.temperatures=[1e300]": "eval.temperatures must be <= 100",
        "grammar.implicit.tokens=100000000": "grammar.implicit.tokens must be <= 10000",
    }
    for item, phrase in cases.items():
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match=phrase.replace("[", r"\[")):
            load_config(None, [item])
        assert time.monotonic() - t0 < 5, item  # not a hang (generous: a loaded machine)


def test_a_63_bit_seed_reaches_torch():
    """The largest seed the config accepts works where seeds are used (numpy, torch, random)."""
    import random

    import numpy as np
    import torch

    from cfglab.seeds import stream_seed

    top = RANGES["train.seed"].hi
    load_config(None, [f"train.seed={top}", f"data.seed={top}", f"eval.seed={top}"])
    torch.manual_seed(top)
    np.random.default_rng(top)
    random.Random(top)
    assert 0 <= stream_seed(top, "eval_kl") < 2**63


# ---- YAML: aliases, depth, NUL -------------------------------------------------------------------
def _bomb(levels: int, width: int = 10) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def _count(node) -> tuple[int, int]:
    """(values, nesting) of a built YAML value, aliases walked as copies: the oracle."""
    if isinstance(node, dict):
        parts = [_count(k) for k in node] + [_count(v) for v in node.values()]
    elif isinstance(node, list):
        parts = [_count(v) for v in node]
    else:
        return 1, 0
    return 1 + sum(n for n, _ in parts), 1 + max((d for _, d in parts), default=0)


@pytest.mark.parametrize(
    "text, exact",
    [
        (_bomb(3, 4), True),
        ("a: &s hello\nb: [*s, *s, *s]\nc: {k: [*s]}\n", True),
        ("[" * 40 + "]" * 40, True),
        ("x: &b {x: [1, 2, {y: 3}]}\nz: [*b, {k: *b}, [[*b]]]\n", True),
        # a merge key copies the anchor's keys into the mapping: counted as the whole anchor
        ("base: &b {x: [1, 2, {y: 3}]}\nother: {<<: *b, z: [*b, *b]}\n", False),
    ],
)
def test_the_count_matches_a_walk_of_the_built_value(text, exact):
    """The event count (memoised per anchor) equals a brute-force walk of the built value, or
    bounds it from above where a merge key flattens a mapping."""
    walked = _count(yaml.safe_load(text))
    counted = yaml_expansion(text, "t.yaml")
    if exact:
        assert counted == walked
    else:
        assert counted[0] >= walked[0] and counted[1] >= walked[1]


def test_the_bounds_are_the_counts(monkeypatch):
    """At the exact count and depth a text loads; one below either it is one ConfigError."""
    import cfglab.config.load as load

    text = _bomb(3, 4)
    nodes, depth = _count(yaml.safe_load(text))
    monkeypatch.setattr(load, "MAX_YAML_NODES", nodes)
    monkeypatch.setattr(load, "MAX_YAML_DEPTH", depth)
    assert safe_yaml(text, "t.yaml") == yaml.safe_load(text)
    for name, value in (("MAX_YAML_NODES", nodes - 1), ("MAX_YAML_DEPTH", depth - 1)):
        with monkeypatch.context() as m:
            m.setattr(load, name, value)
            with pytest.raises(ConfigError, match="t.yaml"):
                safe_yaml(text, "t.yaml")


BOMBS = {
    "billion_laughs": (_bomb(9), f"more than {MAX_YAML_NODES:,} values"),
    "deep_flow": ("[" * 5000 + "]" * 5000, f"more than {MAX_YAML_DEPTH} deep"),
    "deep_block": ("".join("  " * i + "a:\n" for i in range(5000)) + "  " * 5000 + "1\n", "deep"),
    "deep_by_alias": (
        "a0: &a0 [[[[[[[[[[1]]]]]]]]]]\n"
        + "".join(f"a{i}: &a{i} [[[[[[[[[[*a{i - 1}]]]]]]]]]]\n" for i in range(1, 12)),
        "deep",
    ),
    "self_alias": ("train: &t {lr: [1, *t]}\n", "inside its own anchor"),
    "nul": ('name: "run\\0x"\n', "NUL"),
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_yaml_bombs_are_one_line_in_a_config_an_experiment_and_a_set(case, tmp_path, capsys):
    text, phrase = BOMBS[case]
    config = tmp_path / "bomb.yaml"
    config.write_text(text)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        load_config(config)
    assert "\n" not in str(exc.value) and (phrase in str(exc.value) or "YAML" in str(exc.value))
    # an experiment file: its grid is the bomb (the duplicate-point check would expand it)
    experiment = tmp_path / "grid.yaml"
    indented = "".join(f"  {line}\n" for line in text.splitlines())
    experiment.write_text(f"name: e\nbase: {QUICKSTART}\ngrid:\n  bomb:\n{indented}")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["sweep", str(experiment), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfglab: error: ") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # a --set value is YAML too
    if case != "deep_block":  # a block mapping does not fit on one line
        with pytest.raises(ConfigError):
            load_config(None, [f"train.keep_steps={text.strip()}"])
    assert time.monotonic() - t0 < 20  # bounded (generous: a loaded machine)


def test_yaml_within_the_bounds_still_loads(tmp_path):
    """Aliases a real config uses (a shared block) load as before."""
    p = tmp_path / "c.yaml"
    p.write_text("eval: &e {n_samples: 5, cuts: [0]}\ndynamics: {n_samples: 5}\n")
    assert load_config(p).eval.n_samples == 5
    p.write_text("base: &b {n_samples: 7}\n".replace("base", "report: {compare: []}\nx") + "")
    with pytest.raises(ConfigError, match="unknown key x"):
        load_config(p)
    assert math.isclose(load_config(None, ["train.lr=1e-3"]).train.lr, 1e-3)
