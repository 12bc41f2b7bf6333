"""Stage keys (cfglab.stages.stage_key): a stage is skipped when its settings are those it was
done with. Upgrading cfglab must not make existing runs redo their stages: a setting added later
is left out of the key while it is off (ADDED_OFF), so the keys of a default config are the ones
cfglab wrote before those settings existed; turning one on changes the key."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cfglab import rundir
from cfglab.config import NOT_TRAINING, ExperimentConfig, flat
from cfglab.config.schema import InContextConfig, MetadataConfig
from cfglab.stages import ADDED_OFF, stage_is_done, stage_key

# the keys cfglab wrote for ExperimentConfig() on 2026-12-03 (commit cdea4f8), before
# data.metadata, data.in_context, model.pos_init and eval.metadata existed
BEFORE = {
    "train": "328b1c2cb2fa109b5e0b759eb14b5057646182aca48dc324b1217312a6e5c09a",
    "eval": "5f37cc7194bff7b4ae14d85f8f81058c795fd8ec96407d54598eadac8940334d",
    "analyze": "06b2bd3b24c3a33bcf0d37171a887ab1fdeb33ab940c3e381708a248f433783e",
    "dynamics": "292eaf2f57f071fdf72e43b9c14839a2355d64fe4154fd6bd79e5a4dcb060616",
    "intervene": "a8c2cf078010209dd650dc08caa32ce0c950fea3b19b9bf07213de64dc43fb7d",
}


@pytest.mark.parametrize("stage", sorted(BEFORE))
def test_a_run_made_before_the_added_settings_stays_current(stage):
    """If this fails, a new setting changed every existing run's keys: add it to ADDED_OFF with
    the value at which it changes nothing."""
    assert stage_key(ExperimentConfig(), stage) == BEFORE[stage]
    assert stage_is_done({stage: BEFORE[stage]}, ExperimentConfig(), stage)


def _on(cfg: ExperimentConfig, what: str) -> ExperimentConfig:
    data, model = cfg.data, cfg.model
    if what == "metadata":
        data = dataclasses.replace(data, metadata=MetadataConfig(levels=[0]))
    elif what == "in_context":
        data = dataclasses.replace(data, in_context=InContextConfig())
    elif what == "pos_init":
        model = dataclasses.replace(model, pos_init="local")
    return dataclasses.replace(cfg, data=data, model=model)


@pytest.mark.parametrize("what", ["metadata", "in_context", "pos_init"])
def test_turning_an_added_setting_on_changes_the_training_key(what):
    cfg = ExperimentConfig()
    on = _on(cfg, what)
    assert stage_key(on, "train") != stage_key(cfg, "train")
    assert not stage_is_done({"train": stage_key(cfg, "train")}, on, "train")


def test_a_key_written_with_some_added_settings_present_but_off_is_current():
    """A run made while the settings were being added recorded them at their off values."""
    cfg = ExperimentConfig()
    settings = flat(cfg.to_dict())
    record = {
        k: v
        for k, v in settings.items()
        if k.split(".")[0] in ("grammar", "data", "model", "train")
        and k != "data.metadata.fraction"  # this run's cfglab had all but metadata's fraction
    }
    record = {k: v for k, v in record.items() if k not in NOT_TRAINING}
    assert {"data.in_context", "model.pos_init"} <= set(record)
    mixed = rundir.sha256(json.dumps([record, {}], sort_keys=True))
    assert mixed != stage_key(cfg, "train")
    # a transitional key drops whole sections only; this one dropped a part of one: not current
    assert not stage_is_done({"train": mixed}, cfg, "train")
    kept = {k: v for k, v in record.items() if not k.startswith("data.metadata")}
    assert "data.in_context" in kept  # in_context present (None), metadata absent
    transitional = rundir.sha256(json.dumps([kept, {}], sort_keys=True))
    assert stage_is_done({"train": transitional}, cfg, "train")
    assert not stage_is_done({"train": transitional}, _on(cfg, "in_context"), "train")


def test_every_added_setting_names_its_section():
    for key, (prefix, _off) in ADDED_OFF.items():
        assert key == prefix or key.startswith(prefix + ".")
