"""Read a run directory's result files into plain tables (no torch): the report's only input.

A run directory (see DESIGN.md) holds `config.json`, `metrics.jsonl` (one JSON object per logged
training step) and `eval/*.json` written by `cfglab eval` (`accuracy.json`, `distribution.json`,
`diversity.json`, `summary.json`). Everything here is optional except the directory itself, so a
report can be built for a run that has only trained, or only been evaluated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cfglab.errors import CfglabError

EVAL_FILES = ("accuracy", "distribution", "diversity", "robustness", "summary")


@dataclass
class RunResults:
    """Everything the report shows, as read from disk."""

    run_dir: Path
    config: dict = field(default_factory=dict)  # config.json, or {} if absent
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl rows, in file order
    eval: dict[str, dict] = field(default_factory=dict)  # eval/<name>.json by name

    @property
    def name(self) -> str:
        return self.config.get("name") or self.run_dir.name

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metrics.jsonl key, skipping rows without it."""
        rows = [r for r in self.metrics if isinstance(r.get(key), (int, float))]
        return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]

    @property
    def accuracy(self) -> list[dict]:
        return self.eval.get("accuracy", {}).get("accuracy", [])

    @property
    def distribution(self) -> dict:
        return self.eval.get("distribution", {}).get("distribution", {})

    @property
    def diversity(self) -> dict:
        return self.eval.get("diversity", {}).get("diversity") or {}

    @property
    def robustness(self) -> list[dict]:
        return self.eval.get("robustness", {}).get("robustness", [])

    @property
    def definitions(self) -> dict[str, str]:
        for body in self.eval.values():
            if body.get("definitions"):
                return body["definitions"]
        return {}


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    if not path.is_file():
        return rows
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise CfglabError(
                f"{path}:{i + 1}: not a JSON object; metrics.jsonl holds one JSON "
                "object per line (fix or delete the line)"
            ) from None
    return rows


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CfglabError(
            f"{path}: invalid JSON ({exc}); re-run the stage that writes it (`cfglab eval RUN_DIR`)"
        ) from None


def load_run(run_dir: str | Path) -> RunResults:
    """Read a run directory. CfglabError if it does not exist or a result file is corrupt."""
    d = Path(run_dir)
    if not d.is_dir():
        raise CfglabError(
            f"no run directory {d}; give the folder `cfglab train` wrote (runs/<name>)"
        )
    res = RunResults(run_dir=d)
    if (d / "config.json").is_file():
        res.config = _read_json(d / "config.json")
    res.metrics = read_metrics(d / "metrics.jsonl")
    for name in EVAL_FILES:
        p = d / "eval" / f"{name}.json"
        if p.is_file():
            res.eval[name] = _read_json(p)
    if not res.metrics and not res.eval:
        raise CfglabError(
            f"{d} has neither metrics.jsonl nor eval/*.json: train it "
            "(`cfglab train`) or evaluate it (`cfglab eval`) first"
        )
    return res
