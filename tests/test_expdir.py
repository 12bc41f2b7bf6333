"""The experiment folder's owner: the plan, run states, the run lock and the comparison CSVs."""

from __future__ import annotations

import csv
import os

import pytest

from cfglab import expdir
from cfglab.errors import CfglabError


def test_the_plan_reads_back_and_a_corrupt_one_names_the_fix(tmp_path):
    assert expdir.read_plan(tmp_path) is None and expdir.read_plan_text(tmp_path) is None
    expdir.write_plan(tmp_path, {"name": "t", "runs": []})
    assert expdir.read_plan(tmp_path) == {"name": "t", "runs": []}
    for text in ("{not json", "[1, 2]"):
        (tmp_path / expdir.PLAN).write_text(text)
        with pytest.raises(CfglabError, match="experiment.json is corrupt; run `cfglab sweep`"):
            expdir.read_plan(tmp_path)
        assert expdir.read_plan_text(tmp_path) == text


def test_a_run_without_a_readable_status_is_pending(tmp_path):
    assert expdir.read_run_status(tmp_path)["state"] == "pending"
    expdir.write_run_status(tmp_path, {"state": "done", "seconds": 1.5, "error": None})
    assert expdir.read_run_status(tmp_path) == {"state": "done", "seconds": 1.5, "error": None}
    (tmp_path / expdir.RUN_STATUS).write_text("{torn")
    assert expdir.read_run_status(tmp_path)["state"] == "pending"
    expdir.clear_run_status(tmp_path)
    assert not (tmp_path / expdir.RUN_STATUS).exists()


@pytest.mark.skipif(os.name != "posix", reason="run locks are POSIX flock")
def test_the_run_lock_is_held_by_one_holder_at_a_time(tmp_path):
    run = tmp_path / "run"
    with expdir.run_lock(run) as owner:
        assert owner is None and run.is_dir()
        with expdir.run_lock(run) as other:  # a second open file: refused, names the holder
            assert other == str(os.getpid())
    with expdir.run_lock(run) as owner:  # released
        assert owner is None


def test_csv_has_its_columns_and_leaves_missing_values_empty(tmp_path):
    rows = [{"a": 1, "b": "x,y", "extra": 3}, {"a": 2}]
    path = expdir.write_csv(tmp_path / "r.csv", rows, ["a", "b"])
    with open(path, newline="", encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == [{"a": "1", "b": "x,y"}, {"a": "2", "b": ""}]
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]  # no temporary file left
