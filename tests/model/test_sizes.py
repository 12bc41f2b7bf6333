"""Parameter counts without torch (cfglab/config/sizes.py) against the built models, and
`model.match_params_to`: the width it picks is the nearest one (brute force over every width),
matches realistic targets within a few percent, and is resolved at load into config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cfglab import rundir
from cfglab.config import load_config
from cfglab.config.schema import MODEL_FAMILIES, PRESETS, ModelConfig
from cfglab.config.sizes import count_params, matched_width, target_params, width_step
from cfglab.errors import ConfigError
from cfglab.model import FAMILIES, POSITIONS, GPTConfig, build_model

from .conftest import VOCAB

SHAPES = [
    {"family": f, "position": p, "canon": c, "causal": causal, "bias": bias}
    for f in FAMILIES
    for p in (POSITIONS if MODEL_FAMILIES[f] else ["rot"])
    for c in (["", "A", "BD", "ABCD"] if MODEL_FAMILIES[f] else [""])
    for causal in ((True, False) if MODEL_FAMILIES[f] else (True,))
    for bias in (True, False)
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s.values())))
def test_the_formula_counts_the_built_model(shape):
    cfg = GPTConfig(vocab_size=VOCAB, block_size=24, n_layer=2, n_head=4, n_embd=40, **shape)
    assert count_params(cfg, VOCAB) == build_model(cfg).num_params()


def body(m: ModelConfig, width: int) -> int:
    return count_params(dataclasses.replace(m, n_embd=width), 0)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("target", [3_000, 50_000, 450_000, 2_000_000])
def test_the_width_is_the_nearest_and_within_a_few_percent(family, target):
    m = ModelConfig(family=family, n_layer=4, n_head=4, block_size=128)
    width = matched_width(m, target, max_width=4096)
    step = width_step(m)
    assert width % step == 0 and width % (8 if not MODEL_FAMILIES[family] else 1) == 0
    widths = range(step, 4096 + 1, step)  # brute force: every allowed width
    best = min(widths, key=lambda w: (abs(body(m, w) - target), w))
    assert width == best
    if target >= 50_000:  # a realistic model: the steps between widths are a few percent
        assert abs(body(m, width) / target - 1) < 0.06


def test_a_preset_target_is_the_plain_transformer_of_that_preset():
    m = ModelConfig(family="ssm", canon="", n_layer=4, n_head=4, match_params_to="small")
    plain = GPTConfig(vocab_size=VOCAB, **{**PRESETS["small"], "position": m.position})
    embedding = VOCAB * PRESETS["small"]["n_embd"]
    assert target_params(m) == count_params(plain, 0) == build_model(plain).num_params() - embedding


def test_match_params_to_is_resolved_at_load_into_config_json(tmp_path: Path):
    base = ["model.n_layer=4", "model.n_head=4", "model.match_params_to=small"]
    for family in FAMILIES:
        cfg = load_config(None, [*base, f"model.family={family}"])
        m = cfg.model
        ratio = body(m, m.n_embd) / target_params(m)
        assert 0.94 < ratio < 1.06, (family, m.n_embd, ratio)
        rundir.write_config(tmp_path, cfg)
        saved = json.loads((tmp_path / "config.json").read_text())["model"]
        assert saved["n_embd"] == m.n_embd and saved["match_params_to"] == "small"
        assert rundir.read_run_config(tmp_path) == cfg  # reloading resolves to the same width
    assert load_config(None, [*base[:2], "model.match_params_to=450000"]).model.n_embd % 4 == 0


def test_match_params_to_refuses_what_it_cannot_mean():
    with pytest.raises(ConfigError, match="model.preset"):
        load_config(None, ["model.preset=small", "model.match_params_to=small"])
    with pytest.raises(ConfigError, match="did you mean 'small'"):
        load_config(None, ["model.match_params_to=smal"])
    with pytest.raises(ConfigError, match="model.match_params_to must be >= 1"):
        load_config(None, ["model.match_params_to=0"])
