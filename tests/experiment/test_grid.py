"""Experiment files: strict loading, the grid's expansion, and errors before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfglab import cli
from cfglab.errors import ConfigError
from cfglab.experiment.grid import load_experiment

ROOT = Path(__file__).resolve().parents[2]
LONG_LIST = str([round(0.01 * i + 0.01, 2) for i in range(80)])  # a 300-byte folder name


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(f"name: t\nbase: {ROOT / 'configs' / 'quickstart.yaml'}\n" + text)
    return p


def test_the_grid_is_the_cartesian_product_times_seeds(tmp_path):
    p = write(
        tmp_path,
        "set: {train.max_steps: 7}\ngrid:\n  model.position: [abs, rot, rel]\n"
        "  train.lr: [0.001, 0.002]\nseeds: [0, 5]\nout_dir: " + str(tmp_path / "runs") + "\n",
    )
    exp = load_experiment(p)
    assert len(exp.runs) == 3 * 2 * 2 and exp.axes == ["model.position", "train.lr"]
    names = {r.dir.name for r in exp.runs}
    assert "model.position=rel,train.lr=0.002,seed=5" in names and len(names) == 12
    for r in exp.runs:
        c = r.config
        assert c.model.position == r.point["model.position"] and c.train.lr == r.point["train.lr"]
        assert c.train.seed == c.data.seed == r.seed and c.train.max_steps == 7
        assert c.run_dir == r.dir and r.dir.parent == tmp_path / "runs" / "t"
    only = load_experiment(p, only=["model.position=rot", "seed=5"])
    assert {r.dir.name for r in only.runs} == {
        "model.position=rot,train.lr=0.001,seed=5",
        "model.position=rot,train.lr=0.002,seed=5",
    }
    assert not (tmp_path / "runs").exists()  # loading writes nothing


def test_a_grid_may_list_its_points_one_by_one(tmp_path):
    """Arms: each point moves several keys together (the harder case trained longer), and only
    the points listed run; claims name their values like a product grid's."""
    p = write(
        tmp_path,
        "grid:\n"
        "  - {model.position: abs, train.max_steps: 7}\n"
        "  - {model.position: rot, train.max_steps: 14}\n"
        "seeds: [0, 1]\nout_dir: " + str(tmp_path / "runs") + "\n"
        "claims:\n  - {better: {model.position: rot, train.max_steps: 14},\n"
        "     than: {model.position: abs, train.max_steps: 7}, metric: accuracy, cut: 0}\n",
    )
    exp = load_experiment(p)
    assert exp.axes == ["model.position", "train.max_steps"] and len(exp.runs) == 2 * 2
    assert {(r.config.model.position, r.config.train.max_steps) for r in exp.runs} == {
        ("abs", 7),
        ("rot", 14),
    }
    assert "model.position=rot,train.max_steps=14,seed=1" in {r.dir.name for r in exp.runs}
    assert len(exp.claims) == 1
    only = load_experiment(p, only=["model.position=rot"])
    assert {r.config.train.max_steps for r in only.runs} == {14}


@pytest.mark.parametrize(
    "grid, needle",
    [
        ("[abs, rot]", "a list of points, each a mapping"),
        ("[{model.position: abs}, {train.lr: 0.1}]", "every point must set the same keys"),
        ("[{model.position: abs}, {model.position: abs}]", "a point is listed twice"),
        ("[{train.seed: 1}, {train.seed: 2}]", "grid.train.seed: the seeds: list sets"),
        ("[{model.position: abs}, {model.position: rotary}]", "unknown value 'rotary'"),
    ],
)
def test_bad_grid_points_fail_at_load(tmp_path, grid, needle):
    p = write(tmp_path, f"grid: {grid}\nout_dir: {tmp_path / 'runs'}\n")
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    assert needle in str(exc.value)


def test_a_claim_must_name_values_some_point_has(tmp_path):
    p = write(
        tmp_path,
        "grid: [{model.position: abs}, {model.position: rot}]\n"
        "claims:\n  - {better: {model.position: rel}, than: {model.position: abs}, metric: kl}\n",
    )
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    assert "model.position='rel' is not one of the grid's values" in str(exc.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("grdi: {}\n", "unknown key 'grdi' (did you mean 'grid'?)"),
        ("grid:\n  model.postion: [abs]\n", "unknown key model.postion (did you mean 'position'?)"),
        ("grid:\n  model.position: [abs, rotary]\n", "model.position: unknown value 'rotary'"),
        ("grid:\n  train.lr: [0.1, fast]\n", "train.lr: expected float"),
        ("grid:\n  model.position: abs\n", "grid.model.position must be a non-empty list"),
        ("grid:\n  model.position: [abs, abs]\n", "lists a value twice"),
        ("seeds: [0, 0]\n", "seeds must be a list of distinct integers"),
        ("stages: [train, evl]\n", "unknown stage 'evl' (did you mean 'eval'?)"),
        ("executor: {kind: slrum}\n", "executor.kind 'slrum' (did you mean 'slurm'?)"),
        ("executor: {kind: local, workrs: 2}\n", "unknown executor key 'workrs'"),
        ("executor: {kind: slurm, partition: gpu, gpus_per_run: 0}\n", "gpus_per_run must be"),
        ("set: {train.max_steps: -3}\n", "train.max_steps must be >= 1"),
        # keys the experiment sets per run: a value given here would be silently replaced
        ("grid:\n  train.seed: [1, 2]\n", "grid.train.seed: the seeds: list sets"),
        ("set: {data.seed: 3}\n", "set.data.seed: the seeds: list sets"),
        ("set: {stages: [train]}\n", "set.stages: set stages at the top"),
        ("set: {out_dir: elsewhere}\n", "set.out_dir: runs go to"),
        (
            "grid:\n  train.lr: [1e-3, 0.001]\n",
            "give the same run config",
        ),  # YAML: "1e-3" is a string
        # the same keys inside a mapping value
        ("set: {train: {seed: 3}}\n", "set.train.seed: the seeds: list sets"),
        ("grid:\n  data: [{seed: 1}, {seed: 2}]\n", "grid.data.seed: the seeds: list sets"),
        ("executor: local\n", "executor must be a mapping"),
        # prompts that leave no room to generate: refused now, not after training
        ("set: {model.block_size: 16, eval.cuts: [0, 20]}\n", "eval.cuts [0, 20]: a cut of 20"),
        (
            "grid:\n  eval.temperatures: [" + LONG_LIST + "]\n",
            "bytes, over the file system's 255",
        ),
    ],
)
def test_bad_experiments_fail_before_anything_runs(tmp_path, capsys, text, needle):
    p = write(tmp_path, text + f"out_dir: {tmp_path / 'runs'}\n")
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert cli.main(["sweep", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cfglab: error: ")
    assert not (tmp_path / "runs").exists()


def test_an_out_dir_through_a_file_fails_before_the_plan(tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me\n")
    p = write(tmp_path, f"out_dir: {tmp_path / 'afile' / 'runs'}\n")
    assert cli.main(["sweep", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"cfglab: error: {p}: out_dir: {tmp_path / 'afile'} is a file; give a folder path"
    ]
    assert (tmp_path / "afile").read_text() == "keep me\n"


def test_only_must_name_a_grid_key(tmp_path):
    p = write(tmp_path, "grid:\n  model.position: [abs, rot]\n")
    with pytest.raises(ConfigError, match="not a grid key.*did you mean 'model.position'"):
        load_experiment(p, only=["model.positon=abs"])
    with pytest.raises(ConfigError, match="matches no grid point"):
        load_experiment(p, only=["model.position=rel"])


def test_shipped_experiments_expand():
    for path in sorted((ROOT / "configs" / "experiments").glob("*.yaml")):
        exp = load_experiment(path)
        assert exp.runs and all(r.config.name == r.dir.name for r in exp.runs), path


def test_an_out_dir_must_be_a_path(tmp_path, capsys):
    p = write(tmp_path, "out_dir: 5\n")
    assert cli.main(["sweep", str(p), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cfglab: error: {p}: out_dir must be a folder path, got 5"
    )


def test_a_mapping_value_is_merged_into_its_section(tmp_path):
    """set:/grid: values that are mappings change only the keys they name (as base: does): the
    base's other settings of that section stay."""
    base = load_experiment(write(tmp_path, f"out_dir: {tmp_path}\n")).runs[0].config
    p = write(
        tmp_path,
        "set:\n  eval: {n_samples: 7}\n  data.noise.rate: 0.3\n"
        "grid:\n  data.noise: [{fraction: 0.1}, {fraction: 0.2}]\n"
        f"out_dir: {tmp_path}\n",
    )
    runs = load_experiment(p).runs
    assert [r.config.data.noise.fraction for r in runs] == [0.1, 0.2]
    for r in runs:
        c = r.config
        assert c.eval.n_samples == 7 and c.data.noise.rate == 0.3
        assert (c.eval.cuts, c.eval.n_kl, c.eval.temperatures) == (
            base.eval.cuts,
            base.eval.n_kl,
            base.eval.temperatures,
        )
        assert c.train.seed == r.seed  # later dotted overrides still find the section


def test_a_grammar_path_is_read_from_the_experiment_files_folder(tmp_path, monkeypatch):
    """grammar.name in set:/grid: names a file beside the experiment file (as base: does),
    whatever the working directory."""
    folder = tmp_path / "exp"
    folder.mkdir()
    quick = (ROOT / "configs" / "grammars" / "quickstart.cfg").read_text()
    (folder / "local.cfg").write_text(quick)
    (folder / "sib.cfg").write_text(quick.replace("13 -> 10 12 |", "13 -> 10 12 10 |"))
    p = folder / "e.yaml"
    p.write_text(
        f"name: t\nbase: {ROOT / 'configs' / 'quickstart.yaml'}\n"
        "grid:\n  grammar.name: [local.cfg, sib.cfg]\n"
        f"out_dir: {tmp_path / 'runs'}\n"
    )
    monkeypatch.chdir(tmp_path)  # not the experiment's folder
    runs = load_experiment(p).runs
    assert [Path(r.config.grammar.name) for r in runs] == [folder / "local.cfg", folder / "sib.cfg"]
    assert [r.point["grammar.name"] for r in runs] == ["local.cfg", "sib.cfg"]  # as written
    # the shipped positions.yaml names a grammar beside its base config: still found there
    exp = load_experiment(ROOT / "configs" / "experiments" / "positions.yaml")
    assert Path(exp.runs[0].config.grammar.name) == ROOT / "configs" / "grammars" / "deep.cfg"


def test_the_executor_flag_switches_the_files_block():
    """--executor slurm on a file whose block is local (the smoke grid): the local pool's size
    is dropped, not refused as an unknown SLURM key; --executor local keeps a SLURM block's
    settings (the dry run on a laptop)."""
    smoke = ROOT / "configs" / "experiments" / "smoke.yaml"
    block = load_experiment(smoke, executor="slurm").executor
    assert block["kind"] == "slurm" and "partition" not in block
    paper = ROOT / "configs" / "experiments" / "paper_positions.yaml"
    block = load_experiment(paper, executor="local", workers=2).executor
    assert block["kind"] == "local" and block["workers"] == 2 and block["partition"] == "gpu"
