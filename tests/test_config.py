"""Config loading: strict keys with "did you mean", typed values, dotted overrides, JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cfglab.config import (
    OBJECTIVES,
    ExperimentConfig,
    config_from_dict,
    load_config,
    read_config,
    save_config,
)
from cfglab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("**/*.yaml"))


def test_defaults_are_valid() -> None:
    cfg = load_config(None)
    assert cfg == ExperimentConfig()
    assert cfg.model.causal is True


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.train.max_steps >= 1


def test_quickstart_comments_every_key() -> None:
    """configs/quickstart.yaml documents every key it sets (a comment on each key line)."""
    lines = (ROOT / "configs" / "quickstart.yaml").read_text().splitlines()
    keys = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#") and ":" in ln]
    assert keys
    for ln in keys:
        is_section = ln.rstrip().endswith(":") and not ln.startswith(" ")
        assert is_section or "#" in ln, f"uncommented key: {ln!r}"


def test_overrides_are_typed() -> None:
    cfg = load_config(
        None,
        [
            "model.position=rel",
            "train.max_steps=200",
            "train.lr=1e-3",
            "data.max_len=null",
            "eval.cuts=[0, 10]",
            "train.compile=true",
            "name=123",
        ],
    )
    assert cfg.model.position == "rel"
    assert cfg.train.max_steps == 200 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.data.max_len is None
    assert cfg.eval.cuts == [0, 10]
    assert cfg.train.compile is True
    assert cfg.name == "123"  # a str field keeps the text


def test_int_accepted_for_float_and_yaml_exponent(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 3e-4\n  min_lr: 0\n")
    cfg = load_config(p)
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.min_lr == 0.0


@pytest.mark.parametrize(
    "yaml_text, override, needle",
    [
        ("trian:\n  lr: 0.1\n", None, "unknown key trian (did you mean 'train'?)"),
        ("train:\n  max_step: 3\n", None, "unknown key train.max_step (did you mean 'max_steps'?)"),
        ("", "model.postion=rel", "unknown key model.postion (did you mean 'position'?)"),
        ("", "train.max_steps=abc", "train.max_steps: expected int, got str"),
        ("train:\n  max_steps: true\n", None, "train.max_steps: expected int, got bool"),
        ("train:\n  lr: fast\n", None, "train.lr: expected float, got str"),
        ("eval:\n  cuts: 3\n", None, "eval.cuts: expected list of int"),
        ("model: 3\n", None, "model: expected a mapping"),
        ("", "train.objective=mlmm", "unknown objective 'mlmm' (did you mean 'mlm'?)"),
        ("", "train.decay=cosin", "(did you mean 'cosine'?)"),
        ("", "grammar.name=cfg3z", "unknown grammar 'cfg3z' (did you mean"),
        ("", "train.batch_size=0", "train.batch_size must be >= 1"),
        ("", "train.grad_accum=5", "not divisible by train.grad_accum"),
        ("- a\n- b\n", None, "top level must be a mapping"),
        ("train: [\n", None, "not valid YAML"),
        ("", "train.lr", "is not key=value"),
    ],
)
def test_bad_configs_name_the_problem(
    tmp_path: Path, yaml_text: str, override: str | None, needle: str
) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        load_config(p, [override] if override else [])
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)  # one line


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("does/not/exist.yaml")


def test_objective_sets_causality() -> None:
    assert load_config(None, ["train.objective=mlm"]).model.causal is False
    assert load_config(None, ["train.objective=next_token"]).model.causal is True
    assert set(OBJECTIVES) == {"next_token", "mlm"}


def test_grammar_path_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g.cfg").write_text("S -> A B\nA -> 'a' | 'b'\nB -> 'c'\n")
    p = tmp_path / "sub" / "c.yaml"
    p.write_text("grammar:\n  name: g.cfg\n")
    cfg = load_config(p)
    assert Path(cfg.grammar.name).is_absolute()
    assert cfg.grammar.load().terminals == ("a", "b", "c")


def test_json_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.objective=mlm", "eval.cuts=[0]", "data.max_len=64"])
    save_config(cfg, tmp_path / "config.json")
    back = read_config(tmp_path / "config.json")
    assert back == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_corrupt_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupt config.json"):
        read_config(tmp_path / "config.json")


def test_config_does_not_import_torch() -> None:
    code = (
        "import sys, cfglab.config as c; c.load_config(None, ['train.max_steps=3']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_analyze_switches(tmp_path: Path) -> None:
    """analyze.probe / analyze.attention: typed booleans, default on (also for older config.json
    files without them), and `cfglab run`'s analyze stage does only what they allow."""
    from cfglab import cli
    from cfglab.errors import CfglabError

    cfg = load_config(None)
    assert cfg.analyze.probe is True and cfg.analyze.attention is True
    off = load_config(None, ["analyze.probe=false", "analyze.attention=false"])
    assert off.analyze.probe is False and off.analyze.attention is False
    with pytest.raises(ConfigError, match="analyze.probe"):
        load_config(None, ["analyze.probe=3"])
    old = ExperimentConfig().to_dict()
    del old["analyze"]["probe"], old["analyze"]["attention"]
    assert config_from_dict(old).analyze.probe is True

    assert off.grammar.load().levels is not None  # so the stage is not skipped for that reason
    run = tmp_path / "run"  # no model in it: probing would fail
    run.mkdir()
    dict(cli.RUN_STAGES)["analyze"](off, run, None)
    assert not (run / "analyze").exists()
    on = load_config(None, ["analyze.attention=false"])
    with pytest.raises(CfglabError, match="no config.json"):  # the probe tried to load the run
        dict(cli.RUN_STAGES)["analyze"](on, run, None)
