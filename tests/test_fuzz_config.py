"""Property-based fuzzing of the config loader (hypothesis): any YAML document, any `--set`
override and any `base:` chain either load as a valid ExperimentConfig or raise ConfigError
with one line naming the problem, never anything else, in bounded time. What loads round-trips
through config.json."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfglab import rundir
from cfglab.config import ExperimentConfig, config_from_dict, load_config
from cfglab.config.schema import flat
from cfglab.errors import ConfigError

FUZZ = settings(
    max_examples=120,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
KEYS = list(flat(ExperimentConfig().to_dict())) + ["train.max_step", "model", "base", "grammar"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5000),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["rot", "abs", "mlm", "log:4", "cfg3b", ".nan", "[]"]),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.dictionaries(st.sampled_from(["lr", "x", "name", "mode"]), SCALARS, max_size=2),
)


def nest(items: dict) -> dict:
    out: dict = {}
    for key, value in items.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = node[part] = {}
            node = nxt
        node[parts[-1]] = value
    return out


def check(load) -> None:
    try:
        cfg = load()
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(cfg, ExperimentConfig)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # config.json trip


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_any_yaml_document_loads_or_is_one_config_error(tmp_path_factory, items):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(yaml.safe_dump(nest(items)))
    check(lambda: load_config(path))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.text(max_size=16)), max_size=5))
def test_any_override_loads_or_is_one_config_error(pairs):
    check(lambda: load_config(None, [f"{k}={v}" for k, v in pairs]))


@FUZZ
@given(st.text(max_size=200))
def test_any_text_as_a_config_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "t.yaml"
    path.write_text(text)
    check(lambda: load_config(path))


@FUZZ
@given(
    st.lists(
        st.sampled_from(["a.yaml", "b.yaml", "c.yaml", "none.yaml", "", "."]),
        min_size=3,
        max_size=3,
    ),
    st.dictionaries(st.sampled_from(["train.lr", "train.max_steps", "name"]), SCALARS, max_size=2),
)
def test_any_base_chain(tmp_path_factory, bases, items):
    """Three files naming each other (cycles, missing files, odd names) in any way."""
    folder = tmp_path_factory.mktemp("chain")
    for name, base in zip(["a.yaml", "b.yaml", "c.yaml"], bases, strict=True):
        (folder / name).write_text(yaml.safe_dump({**nest(items), "base": base}))
    check(lambda: load_config(folder / "a.yaml"))


def test_a_saved_config_reloads_identically(tmp_path: Path):
    cfg = load_config(None, ["train.keep_steps=log:3", "data.noise.fraction=0.1"])
    rundir.write_config(tmp_path, cfg)
    assert config_from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg
