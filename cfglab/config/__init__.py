"""Experiment configs: the settings of every stage (`schema`) and their loading (`load`).

from cfglab.config import load_config
cfg = load_config("configs/quickstart.yaml", ["train.max_steps=200"])
"""

from cfglab.config.load import (
    config_from_dict,
    load_config,
    read_config,
    save_config,
)
from cfglab.config.schema import (
    DECAYS,
    DTYPES,
    NOT_TRAINING,
    OBJECTIVES,
    POSITION_NAMES,
    PRESET_NAMES,
    PROBE_WINDOWS,
    STAGE_NAMES,
    AttentionConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    GrammarConfig,
    ModelConfig,
    ModelShape,
    ProbeConfig,
    ReportConfig,
    TrainConfig,
    flat,
)

__all__ = [
    "DECAYS",
    "DTYPES",
    "NOT_TRAINING",
    "OBJECTIVES",
    "POSITION_NAMES",
    "PRESET_NAMES",
    "PROBE_WINDOWS",
    "STAGE_NAMES",
    "AttentionConfig",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "GrammarConfig",
    "ModelConfig",
    "ModelShape",
    "ProbeConfig",
    "ReportConfig",
    "TrainConfig",
    "config_from_dict",
    "flat",
    "load_config",
    "read_config",
    "save_config",
]
