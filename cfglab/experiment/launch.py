"""Running an experiment's runs: a local process pool or SLURM through submitit.

`sweep(exp)` writes the plan (experiment.json), skips the runs whose stages are all done under
the same settings (cfglab.stages.stage_key), and hands the others to an executor; each run is
`run_one(spec)`: the run's stages in order, resuming training from its checkpoint, its output in
RUN_DIR/log.txt and its state in RUN_DIR/run_status.json (running / done / failed / interrupted,
wall time, the error line). The experiment's status.json gathers the runs' states. A failed run
is recorded and the others go on. Ctrl-C stops the sweep: the runs in flight save a checkpoint,
queued runs do not start, and a later sweep finishes only what is missing. A run is held by one
process at a time (expdir.run_lock); pool workers whose sweep was killed save, then exit.

Local executor: a pool of `workers` processes, each with cores // workers torch threads
(CFGLAB_MAX_THREADS), so workers x threads <= cores. SLURM: one job-array task per run through
submitit (`executor.kind: slurm`), at most `array_parallelism` at a time, `gpus_per_run` GPUs
(DDP inside the job, with torchrun's environment variables), requeued on preemption or time-out
and resumed from the last checkpoint. `cluster="local"` runs the same path under submitit's
local executor (tests).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cfglab import expdir, rundir
from cfglab.config import config_from_dict
from cfglab.errors import CfglabError, ConfigError
from cfglab.experiment.grid import Experiment, RunSpec

ORPHAN_GRACE_S = 120.0  # a worker whose sweep died: time for its run to checkpoint, then exit
STATUS_EVERY_S = 5.0  # status.json is refreshed at least this often while local runs go on


def pending_stages(spec: RunSpec) -> list[str]:
    """The run's stages not yet completed under its settings (no torch needed to tell)."""
    from cfglab.stages import stage_is_done

    marks = rundir.read_stage_marks(spec.dir)
    return [s for s in spec.config.stages if not stage_is_done(marks, spec.config, s)]


def check_run_folders(exp: Experiment) -> None:
    """Before any work: the experiment folder is this experiment's, and every run folder that
    holds a trained run holds the run this experiment would train (same grammar by content, same
    data, model and train settings). A sweep resumes and skips by folder, so a run trained under
    other settings would be reused or refused mid-sweep, and compare would report its old
    numbers under the new settings: ConfigError naming the first such run and the fix."""
    from cfglab.stages.common import check_results_have_checkpoint

    try:
        recorded = (expdir.read_plan(exp.out) or {}).get("file")
    except CfglabError:  # a corrupt plan is rewritten by this sweep
        recorded = None
    if recorded and Path(recorded).resolve() != exp.file.resolve() and Path(recorded).is_file():
        raise ConfigError(
            f"{exp.file}: {exp.out} holds the runs of another experiment file ({recorded}); give "
            "this experiment its own name or out_dir"
        )
    grammars: dict[str, object] = {}
    stale = []
    for spec in exp.all_runs:
        if rundir.latest_step(spec.dir) is None:
            check_results_have_checkpoint(spec.dir, f"{exp.file}: ")  # lost its checkpoints
            continue  # never trained, or killed before its first checkpoint: trained afresh
        if not (spec.dir / rundir.CONFIG).is_file():
            continue
        section = json.dumps(spec.config.to_dict()["grammar"], sort_keys=True)
        if section not in grammars:
            grammars[section] = spec.config.grammar.load()
        changes = rundir.record_changes(spec.dir, spec.config, grammars[section])
        if changes:
            what = ", ".join(
                "the grammar's content" if k == "grammar" else f"{k} {old!r} -> {new!r}"
                for k, (old, new) in changes.items()
            )
            stale.append(f"{spec.dir.name} ({what})")
    if stale:
        more = f" and {len(stale) - 1} more" if len(stale) > 1 else ""
        raise ConfigError(
            f"{exp.file}: {exp.out} holds runs trained with other settings: {stale[0]}{more}; a "
            "sweep would mix their results with this file's: move or delete those run folders to "
            "retrain them, or give the experiment a new name or out_dir"
        )


def check_executor(exp: Experiment, cluster: str | None = None) -> None:
    """Before any work: a SLURM executor needs SLURM here (submitit would otherwise fall back
    to running every run locally, all at once). ConfigError naming the fix."""
    if exp.executor["kind"] != "slurm" or cluster is not None:
        return
    from submitit.slurm.slurm import SlurmExecutor

    if SlurmExecutor.affinity() <= 0:  # submitit's own test for SLURM: srun on PATH
        raise ConfigError(
            f"{exp.file}: executor slurm, but SLURM is not here (no srun or sbatch on PATH): "
            "sweep from a SLURM login node, or run here with --executor local (--dry-run shows "
            "the plan and the sbatch settings anywhere)"
        )


def sbatch_lines(exp: Experiment, n_runs: int) -> list[str]:
    """The #SBATCH settings submitit will submit the job array of `n_runs` runs with (for the
    dry run: made by submitit's own script writer, without SLURM)."""
    from submitit.slurm import slurm

    equivalent = slurm.SlurmExecutor._equivalence_dict()
    params = {}
    for key, value in submitit_parameters(exp.executor, f"cfglab-{exp.name}").items():
        if key == "mem_gb":
            params["mem"] = slurm._convert_mem(value)
        else:
            params[equivalent.get(key, key.removeprefix("slurm_"))] = value
    script = slurm._make_sbatch_string(
        command="...", folder=exp.out / "submitit" / "%j", map_count=n_runs, **params
    )
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def _job(spec: RunSpec) -> dict[str, Any]:
    """What a worker needs (plain data: it crosses a process boundary)."""
    return {"dir": str(spec.dir), "config": spec.config.to_dict()}


def run_one(job: dict[str, Any], started: Callable[[], object] | None = None) -> dict[str, Any]:
    """A run's stages in order (done stages skipped, training resumed), in this process;
    `started` is called once the run is marked running. Never raises for a run's own failure:
    returns {state, seconds, error}."""
    from cfglab.stages import run_held

    run_dir = Path(job["dir"])
    with run_held(run_dir) as owner:
        if owner is not None:  # e.g. a worker of a killed sweep, still saving its checkpoint
            return {
                "state": "failed",
                "seconds": None,
                "error": f"another process (pid {owner}) is running this run; sweep again "
                "when it has ended",
            }
        return _run_locked(run_dir, job, started)


def _run_locked(
    run_dir: Path, job: dict[str, Any], started: Callable[[], object] | None
) -> dict[str, Any]:
    earlier = expdir.read_run_status(run_dir).get("seconds")  # a resumed run's earlier segments
    earlier = earlier if isinstance(earlier, (int, float)) else 0.0
    status = {"state": "running", "seconds": earlier or None, "error": None, "pid": os.getpid()}
    expdir.write_run_status(run_dir, status)
    if started is not None:
        started()
    t0 = time.perf_counter()
    with expdir.open_run_log(run_dir) as log:
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                from cfglab.stages import run_stages

                run_stages(config_from_dict(job["config"]), run_dir, skip_done=True, progress=False)
            status["state"] = "done"
        except KeyboardInterrupt:
            status.update(state="interrupted", error="interrupted (Ctrl-C); sweep again to resume")
        except CfglabError as exc:
            status.update(state="failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001  (a bug in one run must not stop the others)
            log.write(traceback.format_exc())
            status.update(state="failed", error=f"{type(exc).__name__}: {exc} (see log.txt)")
    status["seconds"] = round(earlier + time.perf_counter() - t0, 1)
    status.pop("pid")
    expdir.write_run_status(run_dir, status)
    return status


_STOP = None  # in a pool worker: the sweep's stop event (set on Ctrl-C: queued runs do not start)


def _worker_init(threads: int, stop=None) -> None:
    """A local worker: its torch threads; for a pool worker also its own process group (a
    terminal's Ctrl-C reaches only the sweep, which forwards one SIGINT to each worker: a run
    interrupted twice would stop without saving its checkpoint) and a watch on the sweep (if
    it dies, the run is interrupted, checkpoints, and the worker exits)."""
    global _STOP
    os.environ["CFGLAB_MAX_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    if stop is not None:
        _STOP = stop
        if hasattr(os, "setpgrp"):
            os.setpgrp()
        threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGINT)  # the run in flight saves a checkpoint and stops
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def _pool_run(job: dict[str, Any]) -> dict[str, Any]:
    if _STOP is not None and _STOP.is_set():
        return {"state": "pending", "seconds": None, "error": None}
    return run_one(job)


def write_status(exp: Experiment) -> dict[str, dict]:
    """status.json: every run's state (pending when it has not started)."""
    states = {spec.dir.name: expdir.read_run_status(spec.dir) for spec in exp.all_runs}
    expdir.write_status(exp.out, states)
    return states


def worker_threads(workers: int) -> int:
    """Each local worker's torch threads (its cap, CFGLAB_MAX_THREADS): cores // workers."""
    return max(1, (os.cpu_count() or 1) // workers)


def run_local(exp: Experiment, specs: list[RunSpec], workers: int) -> None:
    threads = worker_threads(workers)
    if workers == 1:  # in this process: no pool to start
        _worker_init(threads)
        for spec in specs:
            print(f"run {spec.dir.name}", file=sys.stderr, flush=True)
            state = run_one(_job(spec), started=lambda: write_status(exp))["state"]
            write_status(exp)
            if state == "interrupted":  # Ctrl-C stops the sweep, not only the run in flight
                raise KeyboardInterrupt
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    stop = ctx.Event()
    with cf.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_worker_init, initargs=(threads, stop)
    ) as pool:
        futures = {pool.submit(_pool_run, _job(spec)): spec for spec in specs}
        pending = set(futures)
        try:
            while pending:
                # woken by a finished run or every STATUS_EVERY_S, so that status.json shows
                # the runs that started since (not only those that ended)
                done, pending = cf.wait(pending, STATUS_EVERY_S, cf.FIRST_COMPLETED)
                for future in done:
                    spec = futures[future]
                    try:
                        state = future.result()["state"]
                    except Exception as exc:  # noqa: BLE001  (a worker that died)
                        state = "failed"
                        expdir.write_run_status(
                            spec.dir,
                            {"state": "failed", "seconds": None, "error": f"worker died: {exc}"},
                        )
                    print(f"run {spec.dir.name}: {state}", file=sys.stderr, flush=True)
                write_status(exp)
        except KeyboardInterrupt:
            stop.set()  # runs already queued to a worker return at once
            for f in futures:
                f.cancel()
            # the workers sit in process groups of their own: one SIGINT each, so the runs in
            # flight save a checkpoint and stop (the pool's exit waits for that)
            for proc in list(getattr(pool, "_processes", {}).values()):
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGINT)
            raise


class SubmititRun:
    """One run as a submitit job: requeued on preemption or time-out (submitit's checkpoint()
    hook), and then resumed from the run's last checkpoint by run_one."""

    def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # DDP inside the job: torchrun's variables for cfglab.train.dist
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            if env.global_rank > 0:  # every rank trains; rank 0 runs the later stages and logs
                from cfglab.stages import run_stages

                run_stages(
                    config_from_dict(job["config"]),
                    Path(job["dir"]),
                    skip_done=True,
                    progress=False,
                )
                return {"state": "done", "rank": env.global_rank}
        return run_one(job)

    def checkpoint(self, job: dict[str, Any]):
        import submitit

        return submitit.helpers.DelayedSubmission(SubmititRun(), job)


def submitit_parameters(block: dict[str, Any], name: str) -> dict[str, Any]:
    """The executor block as submitit's update_parameters arguments (SLURM names prefixed)."""
    gpus = block.get("gpus_per_run", 0)
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": block.get("time_min", 60),
        "nodes": block.get("nodes", 1),
        "tasks_per_node": max(1, gpus),
        "cpus_per_task": block.get("cpus_per_run", 2),
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if "mem_gb" in block:
        params["mem_gb"] = block["mem_gb"]
    for key, slurm_key in (
        ("partition", "slurm_partition"),
        ("array_parallelism", "slurm_array_parallelism"),
        ("account", "slurm_account"),
        ("qos", "slurm_qos"),
        ("constraint", "slurm_constraint"),
        ("setup", "slurm_setup"),
    ):
        if key in block:
            params[slurm_key] = block[key]
    return params


def submitit_executor(exp: Experiment, cluster: str | None = None):
    """A submitit AutoExecutor for the experiment (cluster None: SLURM if available)."""
    import submitit

    executor = submitit.AutoExecutor(folder=exp.out / "submitit" / "%j", cluster=cluster)
    executor.update_parameters(**submitit_parameters(exp.executor, f"cfglab-{exp.name}"))
    return executor


def run_submitit(exp: Experiment, specs: list[RunSpec], cluster: str | None = None) -> None:
    executor = submitit_executor(exp, cluster)
    jobs = executor.map_array(SubmititRun(), [_job(s) for s in specs])
    print(
        f"submitted {len(jobs)} jobs to {executor.cluster} (array {jobs[0].job_id})",
        file=sys.stderr,
        flush=True,
    )
    for job, spec in zip(jobs, specs, strict=True):
        try:
            state = job.result()["state"]
        except Exception as exc:  # noqa: BLE001  (the scheduler's error: time limit, OOM, ...)
            state = "failed"
            line = str(exc).strip().splitlines()
            expdir.write_run_status(
                spec.dir,
                {"state": "failed", "seconds": None, "error": line[-1] if line else repr(exc)},
            )
        print(f"run {spec.dir.name}: {state}", file=sys.stderr, flush=True)
        write_status(exp)


def sweep(exp: Experiment, *, cluster: str | None = None) -> tuple[dict[str, dict], int]:
    """Run every run of the experiment that has stages left; returns (status.json's content,
    number of runs this call ran)."""
    check_executor(exp, cluster)
    check_run_folders(exp)
    try:
        expdir.make_folder(exp.out)
    except OSError as exc:  # a file in the way, or no permission
        raise CfglabError(
            f"{exp.file}: out_dir: cannot make {exp.out} ({exc.strerror}); give a folder path"
        ) from None
    expdir.write_plan(exp.out, exp.plan())
    todo = [spec for spec in exp.runs if pending_stages(spec)]
    for spec in todo:  # a stale "running" from a killed sweep is pending again
        expdir.clear_run_status(spec.dir)
    pending = {spec.dir for spec in todo}
    for spec in exp.runs:  # every stage done, maybe by stage commands since a failed sweep
        status = expdir.read_run_status(spec.dir)
        if spec.dir not in pending and spec.dir.is_dir() and status.get("state") != "done":
            expdir.write_run_status(spec.dir, {**status, "state": "done", "error": None})
    write_status(exp)
    try:
        if todo:
            if exp.executor["kind"] == "slurm" or cluster is not None:
                run_submitit(exp, todo, cluster)
            else:
                run_local(exp, todo, exp.executor["workers"])
    finally:
        states = write_status(exp)
    return states, len(todo)
