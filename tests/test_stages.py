"""The stage layer: `cfglab run CONFIG` is the stage commands run one by one, numbers equal."""

from __future__ import annotations

import json
from pathlib import Path

from cfglab import cli
from cfglab.config import STAGE_NAMES
from cfglab.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "grammar.name=grammars/quickstart.cfg",
    "model.preset=tiny",
    "model.block_size=48",
    "train.batch_size=4",
    "train.max_steps=12",
    "train.log_every=4",
    "train.eval_every=6",
    "train.ckpt_every=6",
    "train.threads=1",
    "train.tensorboard=false",
    "data.prefetch=0",
    "eval.n_samples=6",
    "eval.n_kl=5",
    "eval.cuts=[0, 3]",
    "eval.corrupt=[0.2]",
    "eval.n_fixed_prompt=4",
    "probe.n_train=12",
    "probe.n_test=6",
    "probe.steps=4",
    "attention.n_strings=4",
    "train.keep_steps=[3, 6]",
    "dynamics.n_samples=4",
    "dynamics.n_kl=4",
]
# what may differ between two runs of the same config: wall-clock times and the run's location
VOLATILE = {"seconds", "timing", "tokens_per_s", "elapsed_s", "data_wait_frac", "run_dir"}


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _results(run: Path) -> dict[str, object]:
    out = {}
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run).as_posix()
        if path.suffix == ".json" and not rel.startswith("ckpt/"):
            out[rel] = _strip(json.loads(path.read_text()))
        elif path.suffix == ".jsonl":
            out[rel] = [_strip(json.loads(line)) for line in path.read_text().splitlines()]
        elif path.name in ("model.safetensors", "grammar.cfg"):
            out[rel] = path.read_bytes()
    return out


def test_stage_names_match_the_registry():
    assert tuple(STAGES) == STAGE_NAMES


def test_run_equals_the_stage_commands_one_by_one(tmp_path):
    config = str(ROOT / "configs" / "quickstart.yaml")
    together, apart = tmp_path / "a" / "run", tmp_path / "b" / "run"
    sets = ["--set", *TINY]
    assert cli.main(["run", config, "--no-progress", "--out", str(together), *sets]) == 0
    assert cli.main(["train", config, "--no-progress", "--out", str(apart), *sets]) == 0
    for stage in ("eval", "analyze", "dynamics", "report"):
        assert cli.main([stage, str(apart)]) == 0
    a, b = _results(together), _results(apart)
    expected = {
        "config.json",
        "eval/accuracy.json",
        "eval/distribution.json",
        "eval/loss_floor.json",
        "eval/diversity.json",
        "eval/robustness.json",
        "eval/summary.json",
        "analyze/probe.json",
        "analyze/attention.json",
        "analyze/dynamics.json",
        "metrics.jsonl",
        "grammar.cfg",
    }
    assert expected <= set(a) and set(a) == set(b)
    for key in a:
        assert a[key] == b[key], key
    md_a = (together / "report" / "report.md").read_text()
    md_b = (apart / "report" / "report.md").read_text()
    assert md_a.split("Evaluation time")[0] == md_b.split("Evaluation time")[0]


def test_the_random_init_twin_is_the_model_training_started_from(tmp_path):
    """One optimizer step at lr 1e-12 leaves the weights where training drew them; the
    analyses' twin must be that draw (so it changes with train.seed, like the run)."""
    import torch

    from cfglab.config import load_config
    from cfglab.stages.common import load_run_model, random_init_twin

    config = ROOT / "configs" / "quickstart.yaml"
    twins = []
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        sets = [
            *TINY,
            "train.max_steps=1",
            "train.lr=1e-12",
            "train.min_lr=0",
            f"train.seed={seed}",
        ]
        sets = [s for s in sets if not s.startswith(("train.keep_steps", "train.eval_every"))]
        assert (
            cli.main(["train", str(config), "--no-progress", "--out", str(run), "--set", *sets])
            == 0
        )
        cfg = load_config(run / "config.json")
        model, _ = load_run_model(run, cfg, cfg.analyze)
        twin = random_init_twin(model, cfg)
        for (name, a), b in zip(
            model.state_dict().items(), twin.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=0, msg=name)
        twins.append(twin)
    a, b = (next(iter(t.state_dict().values())) for t in twins)
    assert not torch.equal(a, b)  # another train.seed, another draw


def test_every_stage_runs_on_a_recursive_grammar_that_is_not_layered(tmp_path):
    """configs/quickstart_english.yaml (an English-like PCFG) through every stage: the probes
    read its span and depth targets, each beside its random-init twin and majority rate."""
    config = str(ROOT / "configs" / "quickstart_english.yaml")
    run = tmp_path / "run"
    sets = [s for s in TINY if not s.startswith("grammar.name")] + ["data.max_len=40"]
    argv = ["run", config, "--no-progress", "--out", str(run), "--set", *sets]
    assert cli.main(argv) == 0
    probe = json.loads((run / "analyze" / "probe.json").read_text())["probe"]
    assert probe["targets"] == ["end_label", "ends", "depth"]
    tables = {t["target"]: t for t in probe["tables"]}
    assert [c["label"] for c in tables["ends"]["columns"]][:3] == ["NP", "VP", "PP"]
    for t in tables.values():
        assert set(t["accuracy"]) == {"model", "random_init"} and all(
            0 <= m <= 1 for m in t["majority"]
        )
    dynamics = json.loads((run / "analyze" / "dynamics.json").read_text())
    levels = {r["level"] for r in dynamics["rows"] if r["metric"] == "kl_by_level"}
    assert {"start", "L1"} <= levels  # rows grouped by the depth of the constituent ending
    md = (run / "report" / "report.md").read_text()
    assert "**end_label probe" in md and "**depth probe" in md and "## Training dynamics" in md
