"""Experiment files: a base run config x a grid over any config keys x seeds -> run configs.

    name: positions
    base: ../quickstart.yaml          # any run config (path relative to this file)
    set: {train.max_steps: 2000}      # overrides for every run
    grid:                             # cartesian product over any config keys
      model.position: [abs, rot]
      grammar.name: [cfg3b, cfg3f]
    # or a list of points (arms), each setting the same keys:
    #   grid: [{grammar.implicit: null, train.max_steps: 3000},
    #          {grammar.implicit: {mode: overlap, tokens: 9}, train.max_steps: 6000}]
    seeds: [0, 1, 2]                  # one run per seed: train.seed and data.seed
    stages: [train, eval, probe]      # default: the base config's stages
    executor: {kind: local, workers: 2}

`load_experiment` reads such a file strictly (unknown keys and bad values are ConfigErrors with
a "did you mean") and expands it into one `RunSpec` per grid point and seed, each an ordinary run
config validated by `cfglab.config.load_config` before anything runs. Each run directory is
`<out_dir>/<name>/<key=value,...,seed=S>`. Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfglab.config import STAGE_NAMES, ExperimentConfig, flat, load_config
from cfglab.config.load import read_yaml
from cfglab.errors import CfglabError, ConfigError, did_you_mean
from cfglab.experiment.claims import check_claims, check_reference
from cfglab.stages import check_config

# config keys the experiment sets for each run, and where to say them instead
OWNED = {
    "train.seed": "the seeds: list sets train.seed and data.seed of every run; list them there",
    "data.seed": "the seeds: list sets train.seed and data.seed of every run; list them there",
    "name": "each run is named after its grid point and seed",
    "out_dir": "runs go to <out_dir>/<name>/...: set out_dir at the top of the experiment file",
    "stages": "set stages at the top of the experiment file",
}
PATH_OVERRIDES = ("grammar.name", "data.dataset")  # file paths: see _near
MAX_DIR_BYTES = 255  # a folder name, in bytes, on common file systems (ext4, APFS, NTFS)
TOP_KEYS = (
    "name",
    "base",
    "set",
    "grid",
    "seeds",
    "stages",
    "executor",
    "out_dir",
    "claims",
    "reference",
)
EXECUTORS = ("local", "slurm")
# the executor block's keys per kind (SLURM's are passed to submitit, see launch.py)
EXECUTOR_KEYS = {
    "local": ("kind", "workers"),
    "slurm": (
        "kind",
        "partition",
        "gpus_per_run",
        "cpus_per_run",
        "time_min",
        "array_parallelism",
        "mem_gb",
        "nodes",
        "account",
        "qos",
        "constraint",
        "setup",
    ),
}


@dataclass
class RunSpec:
    """One run of an experiment: its grid point, seed, overrides and validated config."""

    dir: Path  # the run directory
    point: dict[str, Any]  # grid key -> value
    seed: int
    overrides: list[str]  # `--set` items that make its config from the base
    config: ExperimentConfig


@dataclass
class Experiment:
    name: str
    file: Path
    out: Path  # <out_dir>/<name>: the experiment folder
    base: Path
    stages: list[str]
    executor: dict[str, Any]
    runs: list[RunSpec] = field(default_factory=list)  # to run: those matching --only
    all_runs: list[RunSpec] = field(default_factory=list)  # every grid point x seed
    axes: list[str] = field(default_factory=list)  # grid keys, in file order
    claims: list[dict] = field(default_factory=list)  # checked claims (experiment/claims.py)
    reference: dict[str, Any] = field(default_factory=dict)  # axis -> the paired reference

    def plan(self) -> dict[str, Any]:
        """experiment.json: the expanded plan (JSON-ready)."""
        return {
            "name": self.name,
            "file": str(self.file),
            "base": str(self.base),
            "axes": self.axes,
            "claims": self.claims,
            "reference": self.reference,
            "stages": self.stages,
            "executor": self.executor,
            "runs": [
                {
                    "dir": r.dir.name,
                    "point": r.point,
                    "seed": r.seed,
                    "overrides": r.overrides,
                    "config": r.config.to_dict(),
                }
                for r in self.all_runs
            ],
        }


def _value_text(value: Any) -> str:
    """A config value as a `--set` override value (YAML reads JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def _dir_part(value: Any) -> str:
    """A grid value as part of a directory name: file paths by their stem, lists as a+b,
    mappings as key-value+key-value, odd characters as _ ([0, 5] -> 0+5)."""
    if isinstance(value, dict):
        return "+".join(f"{_dir_part(k)}-{_dir_part(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "+".join(_dir_part(v) for v in value)
    if isinstance(value, str) and ("/" in value or value.endswith((".cfg", ".yaml"))):
        value = Path(value).stem
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _read(path: Path) -> dict[str, Any]:
    data = read_yaml(path, "experiment file", "configs/experiments/smoke.yaml")
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(
                f"{path}: unknown key {key!r}{did_you_mean(key, TOP_KEYS)}; valid keys: "
                f"{', '.join(TOP_KEYS)}"
            )
    return data


def _executor(path: Path, block: Any, workers: int | None, kind: str | None) -> dict[str, Any]:
    if block is None:
        block = {"kind": "local"}
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: executor must be a mapping, e.g. {{kind: local, workers: 2}}")
    block = dict(block)
    block.setdefault("kind", "local")
    if block["kind"] not in EXECUTORS:
        raise ConfigError(
            f"{path}: executor.kind {block['kind']!r}{did_you_mean(block['kind'], EXECUTORS)}; "
            f"choose from {', '.join(EXECUTORS)}"
        )
    allowed = EXECUTOR_KEYS[block["kind"]]  # the file's block, checked as written
    for key in block:
        if key not in allowed and not (block["kind"] == "local" and key in EXECUTOR_KEYS["slurm"]):
            raise ConfigError(
                f"{path}: unknown executor key {key!r}{did_you_mean(key, allowed)}; valid for "
                f"{block['kind']}: {', '.join(allowed)}"
            )
    if kind == "slurm" and block["kind"] == "local":  # --executor slurm on a local block: its
        block.pop("workers", None)  # pool size means nothing there
    if kind is not None:
        block["kind"] = kind
    if workers is not None:
        block["workers"] = workers
    block.setdefault("workers", 1)
    ints = ("workers", "gpus_per_run", "cpus_per_run", "time_min", "array_parallelism", "nodes")
    for key in ints:
        if key in block and (
            not isinstance(block[key], int) or isinstance(block[key], bool) or block[key] < 1
        ):
            raise ConfigError(f"{path}: executor.{key} must be an integer >= 1, got {block[key]!r}")
    return block


def load_experiment(
    path: str | Path,
    *,
    workers: int | None = None,
    executor: str | None = None,
    only: list[str] | None = None,
) -> Experiment:
    """Read and expand an experiment file; every run config is validated before returning.

    `only` keeps the grid points matching every KEY=VALUE given (a value compared as the
    grid's own values are written, e.g. model.position=rot, seed=1)."""
    path = Path(path)
    data = _read(path)
    name, base_path = _name_and_base(path, data)
    common = data.get("set") or {}
    grid, points = _grid_points(path, data.get("grid") or {})
    _check_set_and_grid(path, common, grid)
    seeds = _seeds(path, data)
    stages = _stages(path, data)
    out_dir = _out_dir(path, data, name)
    exp = Experiment(
        name=name,
        file=path.resolve(),
        out=out_dir / name,
        base=base_path,
        stages=[],
        executor=_executor(path, data.get("executor"), workers, executor),
        axes=list(grid),
        claims=check_claims(path, data.get("claims"), grid),
        reference=check_reference(path, data.get("reference"), grid),
    )
    filters = _filters(path, only or [], grid)
    _add_runs(exp, path, common, points, seeds, stages, filters)
    if not exp.runs:
        raise ConfigError(f"{path}: --only {' '.join(only or [])} matches no grid point")
    exp.stages = list(exp.runs[0].config.stages)
    return exp


def _name_and_base(path: Path, data: dict[str, Any]) -> tuple[str, Path]:
    """The experiment's name (a plain folder name) and its base config's path (beside `path`)."""
    name = data.get("name")
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"{path}: name must be a plain folder name, got {name!r}")
    base = data.get("base")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: must name a run config (a path relative to {path})")
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base} not found (looked for {base_path})")
    return name, base_path


def _grid_points(path: Path, grid: Any) -> tuple[Any, list[dict[str, Any]]]:
    """grid: as {key: its values} and its points. A mapping is a cartesian product; a list of
    mappings names its points one by one (arms that move several keys together, e.g. a harder
    case trained longer), every point setting the same keys."""
    if not isinstance(grid, list):
        if not isinstance(grid, dict):
            return grid, []  # refused by _check_set_and_grid
        lists = [v if isinstance(v, list) else [v] for v in grid.values()]
        return grid, [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*lists)]
    if not all(isinstance(p, dict) and p for p in grid):
        raise ConfigError(f"{path}: grid: a list of points, each a mapping of dotted keys")
    keys = list(grid[0])
    for point in grid:
        if set(point) != set(keys):
            raise ConfigError(
                f"{path}: grid: every point must set the same keys ({', '.join(keys)}); "
                f"{point} does not"
            )
    texts = [json.dumps(point, sort_keys=True) for point in grid]
    if len(set(texts)) != len(texts):
        raise ConfigError(f"{path}: grid: a point is listed twice")
    values = {k: list({json.dumps(p[k]): p[k] for p in grid}.values()) for k in keys}
    return values, [{k: p[k] for k in keys} for p in grid]


def _check_set_and_grid(path: Path, common: Any, grid: Any) -> None:
    """set: and grid: are mappings of dotted keys the experiment does not own; each grid key
    lists distinct values."""
    for what, block in (("set", common), ("grid", grid)):
        if not isinstance(block, dict):
            raise ConfigError(f"{path}: {what} must be a mapping of dotted config keys")
        for key, value in block.items():
            # the experiment sets these per run: a value here would be lost (also when given
            # inside a mapping: set: {train: {seed: 3}})
            values = value if what == "grid" and isinstance(value, list) else [value]
            inner = [k for v in values if isinstance(v, dict) for k in flat(v, f"{key}.")]
            for dotted in [key, *inner]:
                if dotted in OWNED:
                    raise ConfigError(f"{path}: {what}.{dotted}: {OWNED[dotted]}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{path}: grid.{key} must be a non-empty list of values, got {values!r}"
            )
        if len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"{path}: grid.{key} lists a value twice: {values}")


def _seeds(path: Path, data: dict[str, Any]) -> list[int]:
    seeds = data.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"{path}: seeds must be a list of distinct integers >= 0, got {seeds!r}")
    return seeds


def _stages(path: Path, data: dict[str, Any]) -> list[str] | None:
    """The stages every run does; None: the base config's."""
    stages = data.get("stages")
    if stages is not None:
        if not isinstance(stages, list) or not stages:
            raise ConfigError(f"{path}: stages must be a list, e.g. [train, eval]")
        for stage in stages:
            if stage not in STAGE_NAMES:
                raise ConfigError(
                    f"{path}: stages: unknown stage {stage!r}{did_you_mean(stage, STAGE_NAMES)}; "
                    f"choose from {', '.join(STAGE_NAMES)}"
                )
    return stages


def _out_dir(path: Path, data: dict[str, Any], name: str) -> Path:
    """out_dir (default runs), refused now, before any run or plan, if a file stands where the
    experiment folder would go."""
    if not isinstance(data.get("out_dir", "runs"), str) or not data.get("out_dir", "runs"):
        raise ConfigError(f"{path}: out_dir must be a folder path, got {data['out_dir']!r}")
    out_dir = Path(data.get("out_dir", "runs"))
    existing = out_dir / name
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"{path}: out_dir: {existing} is a file; give a folder path")
    return out_dir


def _add_runs(
    exp: Experiment,
    path: Path,
    common: dict[str, Any],
    points: list[dict[str, Any]],
    seeds: list[int],
    stages: list[str] | None,
    filters: list[tuple[str, str]],
) -> None:
    """One RunSpec per grid point x seed into exp.all_runs (and exp.runs if it matches every
    filter), each config validated; two runs may share neither a folder nor a config."""
    common_items = [f"{k}={_value_text(_near(path, k, v))}" for k, v in common.items()]
    seen: dict[str, dict] = {}  # run folder name -> its grid point
    configs: dict[str, dict] = {}  # resolved config (JSON) -> its grid point
    for point in points:
        for seed in seeds:
            dirname = _run_name(path, point, seed, seen)
            items = [
                *common_items,
                *(f"{k}={_value_text(_near(path, k, v))}" for k, v in point.items()),
                f"train.seed={seed}",
                f"data.seed={seed}",
                f"name={dirname}",
                f"out_dir={exp.out}",
            ]
            if stages is not None:
                items.append(f"stages=[{', '.join(stages)}]")
            cfg = _run_config(path, exp.base, items, point, seed, configs)
            spec = RunSpec(exp.out / dirname, point, seed, items, cfg)
            exp.all_runs.append(spec)
            if all(_matches(point, seed, k, v) for k, v in filters):
                exp.runs.append(spec)


def _run_name(path: Path, point: dict[str, Any], seed: int, seen: dict[str, dict]) -> str:
    """The run's folder name, key=value,...,seed=S: short enough and unique (noted in `seen`)."""
    parts = [f"{k}={_dir_part(v)}" for k, v in point.items()] + [f"seed={seed}"]
    dirname = ",".join(parts)
    if len(dirname.encode()) > MAX_DIR_BYTES:
        raise ConfigError(
            f"{path}: grid point {point} gives a run folder name of "
            f"{len(dirname.encode())} bytes, over the file system's {MAX_DIR_BYTES}; "
            "use shorter grid values (e.g. a file path or a name instead of a long list)"
        )
    if dirname in seen:
        raise ConfigError(
            f"{path}: grid points {seen[dirname]} and {point} give one run folder "
            f"{dirname!r}; make the values distinguishable"
        )
    seen[dirname] = point
    return dirname


def _run_config(
    path: Path,
    base: Path,
    items: list[str],
    point: dict[str, Any],
    seed: int,
    configs: dict[str, dict],
) -> ExperimentConfig:
    """The run's config (base + items), validated, and unlike every earlier run's (noted in
    `configs`)."""
    try:
        cfg = load_config(base, items)
        check_config(cfg)  # what the stages need (cuts that fit, families, targets): not after
    except CfglabError as exc:  # training (a grammar or sampling error too: named by point)
        raise ConfigError(f"{path}: grid point {point}, seed {seed}: {exc}") from None
    # two points that resolve to one config (1e-3 and 0.001) would train twice
    resolved = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "out_dir")}
    same = json.dumps(resolved, sort_keys=True, default=str)
    if same in configs:
        raise ConfigError(
            f"{path}: grid points {configs[same]} and {point} give the same run config "
            f"(seed {seed}); list each value once"
        )
    configs[same] = point
    return cfg


def _near(path: Path, key: str, value: Any) -> Any:
    """A file path given in the experiment file (grammar.name, data.dataset) that exists beside
    it, made absolute: paths are read from the file that names them, as base: is. Others go on
    to the base config's folder, then the working directory (cfglab.config.load)."""
    from cfglab.grammar import BUILTIN_GRAMMARS

    if key not in PATH_OVERRIDES or not isinstance(value, str) or value in BUILTIN_GRAMMARS:
        return value
    local = path.parent / value
    return str(local.resolve()) if not Path(value).is_absolute() and local.exists() else value


def _filters(path: Path, only: list[str], grid: dict) -> list[tuple[str, str]]:
    out = []
    for item in only:
        if "=" not in item:
            raise ConfigError(f"--only {item!r}: write KEY=VALUE, e.g. model.position=rot")
        key, value = (x.strip() for x in item.split("=", 1))
        if key != "seed" and key not in grid:
            choices = [*grid, "seed"]
            raise ConfigError(
                f"--only {item!r}: {key!r} is not a grid key of {path}"
                f"{did_you_mean(key, choices)}; choose from {', '.join(choices)}"
            )
        out.append((key, value))
    return out


def _matches(point: dict, seed: int, key: str, value: str) -> bool:
    got = seed if key == "seed" else point[key]
    return value in (str(got), _value_text(got), _dir_part(got))
