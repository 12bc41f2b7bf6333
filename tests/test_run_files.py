"""The files of a run under hostile conditions: a user's files in ckpt/ (never deleted, never
read), a run held by another process (every writing command refused, naming it), a read-only
folder or a full disk (one line, before the work where it can be known, nothing half-written),
a saved dataset moved away, and a run folder whose checkpoints were removed (never trained
over). Each refusal is one line `cfglab: error: ...`, exit 2, the run unchanged byte for byte."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cfglab.cli import main
from tests.test_hostile_runs import QUICKSTART, ROOT, TINY, one_error, snapshot

# {run} is the run folder; a command's extra --set items go at its end
RESUME = ["train", QUICKSTART, "--resume", "--allow-changes", "--no-progress", "--out", "{run}"]
DYNAMICS = ["--n", "2", "--n-kl", "2"]
# every command that writes into a run
WRITERS = {
    "train --resume": [*RESUME, "--set", *TINY],
    "run": ["run", QUICKSTART, "--no-progress", "--out", "{run}", "--set", *TINY],
    "eval": ["eval", "{run}"],
    "analyze": ["analyze", "{run}"],
    "probe": ["probe", "{run}"],
    "attention": ["attention", "{run}"],
    "dynamics": ["dynamics", "{run}", *DYNAMICS],
    "report": ["report", "{run}"],
}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("files") / "run"
    argv = ["run", QUICKSTART, "--no-progress", "--out", str(run), "--set", *TINY]
    assert main(argv) == 0
    return run


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def argv_for(name: str, run: Path) -> list[str]:
    return [a.format(run=run) for a in WRITERS[name]]


# ---- a user's files in ckpt/ -------------------------------------------------------------------
def plant_user_files(run: Path) -> dict[str, str]:
    """Files and folders a user keeps in ckpt/, named like cfglab's but not cfglab's."""
    ckpt = run / "ckpt"
    planted = {
        "step_0000010.bak/model.safetensors": "a user's copy",
        "step_old/notes.txt": "not a checkpoint",
        "step_0000002.tmp.keep/x": "mine",
        "step_notes.txt": "a file",
        "step_0000002/README": "inside a checkpoint that will be pruned",
    }
    for rel, text in planted.items():
        (ckpt / rel).parent.mkdir(parents=True, exist_ok=True)
        (ckpt / rel).write_text(text)
    return planted


def test_training_and_dynamics_keep_and_skip_a_users_files(run, capsys):
    """Resuming prunes step_0000002 (keep_last 2 of steps 2..8): only cfglab's three files go,
    the folder stays with the user's README; every planted name survives, and the dynamics
    stage measures exactly cfglab's checkpoints."""
    planted = plant_user_files(run)
    assert main([*argv_for("train --resume", run), "train.max_steps=8"]) == 0
    ckpt = run / "ckpt"
    for rel, text in planted.items():
        assert (ckpt / rel).read_text() == text, rel
    assert sorted(p.name for p in (ckpt / "step_0000002").iterdir()) == ["README"]
    assert main(["dynamics", str(run), *DYNAMICS]) == 0
    steps = json.loads((run / "analyze" / "dynamics.json").read_text())["steps"]
    assert steps == [6, 8]  # the two kept (keep_last 2); not 2 (pruned), not 10 (a user's)


# ---- one process per run ------------------------------------------------------------------------
@pytest.mark.parametrize("command", list(WRITERS))
def test_every_writing_command_is_refused_while_another_process_holds_the_run(run, capsys, command):
    """A sweep's worker (or any cfglab command) holds run.lock with its pid: every command that
    writes into the run stops at once, naming that pid; nothing changes."""
    with open(run / "run.lock", "w") as held:
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        before = snapshot(run)
        line = one_error(capsys, main(argv_for(command, run)))
        assert "pid 4242" in line and "in use by another cfglab process" in line, line
        assert snapshot(run) == before


def test_the_lock_is_free_and_empty_after_each_command(run):
    assert main(["report", str(run)]) == 0
    assert (run / "run.lock").read_text() == ""
    with open(run / "run.lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free


def test_a_refused_new_run_leaves_no_folder(tmp_path, capsys):
    """A new run refused after taking its lock (a batch the processes cannot split) leaves no
    folder and no lock file behind."""
    out = tmp_path / "a" / "b" / "run"
    argv = ["train", QUICKSTART, "--out", str(out), "--set", *TINY, "train.grad_accum=3"]
    one_error(capsys, main(argv))
    assert not (tmp_path / "a").exists()


# ---- a run folder whose checkpoints were removed ------------------------------------------------
@pytest.mark.parametrize("command", ["run", "train"])
def test_results_without_a_checkpoint_are_never_trained_over(run, capsys, command):
    shutil.rmtree(run / "ckpt")
    before = snapshot(run)
    argv = [command, QUICKSTART, "--no-progress", "--out", str(run), "--set", *TINY]
    line = one_error(capsys, main(argv))
    assert "holds a run's results" in line and "no checkpoint" in line and "move" in line, line
    assert snapshot(run) == before


# ---- read-only folders and full disks -----------------------------------------------------------
def cfglab(argv: list[str], prefix: list[str] = (), fsize: int | None = None):
    """`python -m cfglab ARGV` in a child process (under `prefix`, with a file size limit)."""

    def limit() -> None:  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "cfglab", *argv],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limit,
        timeout=300,
    )


def read_only_prefix(folder: Path) -> list[str] | None:
    """A command prefix under which `folder` is read-only: none needed for a user (chmod does
    it); for root, which chmod does not stop, a private read-only bind mount (unshare -m);
    None when neither is possible here."""
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
        return []
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    prefix = ["unshare", "-m", "sh", "-c", script, str(folder)]
    probe = subprocess.run([*prefix, "sh", "-c", f"! touch {folder}/.x"], capture_output=True)
    return prefix if shutil.which("unshare") and probe.returncode == 0 else None


def test_the_write_check_refuses_unwritable_places(tmp_path):
    """The check itself, wherever the tests run (root too): a folder under a file, a folder the
    kernel refuses files in, and a writable one; it leaves no file behind."""
    from cfglab import rundir
    from cfglab.errors import CfglabError

    (tmp_path / "f").write_text("x")
    with pytest.raises(CfglabError, match="is a file, not a folder"):
        rundir.check_writable(tmp_path / "f" / "eval", "fix it")
    with pytest.raises(CfglabError, match="cannot write in /sys"):
        rundir.check_writable(Path("/sys/cfglab-run"), "fix it")
    rundir.check_writable(tmp_path / "new" / "eval", "fix it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize("command", ["eval", "dynamics", "report", "train --resume"])
def test_a_read_only_run_is_refused_before_the_work(run, command):
    prefix = read_only_prefix(run)
    if prefix is None:
        pytest.skip("running as root without `unshare -m` and mount: no read-only folder here")
    before = snapshot(run)
    argv = argv_for(command, run) + (["train.max_steps=8"] if command.startswith("train") else [])
    out = cfglab(argv, prefix)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1, out.stderr
    assert err[0].startswith("cfglab: error: cannot write in") and str(run) in err[0]
    assert not out.stdout  # nothing measured: refused before the work
    assert snapshot(run) == before


def test_a_read_only_compare_folder_is_refused(run, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    prefix = read_only_prefix(out_dir)
    if prefix is None:
        pytest.skip("running as root without `unshare -m` and mount: no read-only folder here")
    out = cfglab(["compare", str(run), "--out", str(out_dir)], prefix)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and "cannot write in" in err[0], out.stderr
    assert list(out_dir.iterdir()) == []


def test_a_full_disk_while_training_keeps_the_last_checkpoint(run):
    """The checkpoint of step 6 cannot be written (a file size limit below the model's size
    stands in for a full disk): one line, ckpt/latest still names step 4, nothing half-written
    left in ckpt/."""
    model_bytes = (run / "ckpt" / "step_0000004" / "model.safetensors").stat().st_size
    out = cfglab([*argv_for("train --resume", run), "train.max_steps=6"], fsize=model_bytes // 2)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and err[-1].startswith("cfglab: error: cannot write the checkpoint")
    assert "Traceback" not in out.stderr and "intact" in err[-1]
    assert (run / "ckpt" / "latest").read_text().strip() == "step_0000004"
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == [
        "latest",
        "step_0000002",
        "step_0000004",
    ]
    assert main(["eval", str(run)]) == 0  # the kept checkpoint still serves


def test_a_full_disk_while_writing_results_leaves_the_old_ones(run):
    before = snapshot(run / "eval")
    out = cfglab(["eval", str(run), "--seed", "7", "--threads", "1"], fsize=200)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and "File too large" in err[0], out.stderr
    assert snapshot(run / "eval") == before  # no new file half-written, no temporary left


# ---- a saved dataset moved away -----------------------------------------------------------------
def test_a_run_whose_saved_dataset_moved_says_what_is_missing(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["data", QUICKSTART, "--out", str(data), "-n", "200", "--set", *TINY]) == 0
    run = tmp_path / "run"
    sets = [*TINY, f"data.dataset={data}", "stages=[train, eval, dynamics]"]
    assert main(["run", QUICKSTART, "--no-progress", "--out", str(run), "--set", *sets]) == 0
    data.rename(tmp_path / "moved")
    before = snapshot(run)
    for argv in (["eval", str(run)], ["dynamics", str(run), *DYNAMICS]):
        capsys.readouterr()
        line = one_error(capsys, main(argv))
        assert f"trained on the saved dataset {data}" in line and "move the dataset back" in line
        assert snapshot(run) == before
    assert main(["analyze", str(run)]) == 0  # the analyses draw fresh strings: no dataset needed
    (tmp_path / "moved").rename(data)
    assert main(["eval", str(run)]) == 0


# ---- a resumed run's records --------------------------------------------------------------------
def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    """Killed after logging step 4 with its last checkpoint at 2: the resumed run logs 3 and 4
    again, and TensorBoard (as its own reader sees the events) keeps each step once."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    sets = [*TINY, "train.tensorboard=true"]
    assert main(["train", QUICKSTART, "--no-progress", "--out", str(run), "--set", *sets]) == 0
    shutil.rmtree(run / "ckpt" / "step_0000004")
    (run / "ckpt" / "latest").write_text("step_0000002\n")
    argv = ["train", QUICKSTART, "--resume", "--no-progress", "--out", str(run), "--set", *sets]
    assert main(argv) == 0
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss")]
    assert steps == [1, 2, 3, 4]
    metrics = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics == steps  # the record and its view agree
