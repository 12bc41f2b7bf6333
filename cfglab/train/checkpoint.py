"""Checkpoints: atomic save, keep-last-K, load for resume, and `load_model` for later stages.

Layout inside a run directory (the only place these file formats are defined)::

    ckpt/step_0000500/model.safetensors   weights of the raw model (DDP/compile unwrapped)
    ckpt/step_0000500/optim.pt            optimizer state_dict, read with weights_only=True
    ckpt/step_0000500/state.json          step, tokens seen, RNG states as plain data
    ckpt/latest                           text: the name of the last complete checkpoint

A checkpoint is written into `step_XXXXXXX.tmp/`, each file fsynced, then the folder is renamed;
`latest` is replaced by `os.replace` only after that. A process killed at any moment leaves
`latest` naming a complete checkpoint. No pickles: weights are safetensors, metadata JSON.

cfglab reads and deletes only what it writes: the folder names are rundir.CHECKPOINT_NAME's
(anything else in ckpt/, e.g. a user's step_0000010.bak, is neither listed nor pruned), and a
pruned checkpoint loses only the files of CHECKPOINT_FILES (a file a user put inside stays, with
its folder). A write that fails (a full disk) is a CheckpointError, the last checkpoint intact.
"""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn as nn

from cfglab import rundir
from cfglab.errors import CheckpointError

CKPT_DIR = rundir.CKPT
LATEST = rundir.LATEST
CHECKPOINT_FILES = ("model.safetensors", "optim.pt", "state.json")  # all a checkpoint holds


def step_dir_name(step: int) -> str:
    return rundir.checkpoint_name(step)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, as JSON-able data (torch states base64-encoded)."""
    state = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state(legacy=False)),
    }
    if torch.cuda.is_available():
        state["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch_state, python_state, numpy_state, cuda = _decode_rng(state)
    torch.set_rng_state(torch_state)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.integer):
        return int(x)
    return x


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep_last: int = 2,
    protect: frozenset[int] = frozenset(),
) -> Path:
    """Write ckpt/step_XXXXXXX atomically, point ckpt/latest at it, prune to `keep_last`
    (never the steps in `protect`: train.keep_steps, for the dynamics stage).

    `model` must be the raw module (see dist.unwrap). Call on the master rank only.
    """
    ckpt = Path(run_dir) / CKPT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    final = ckpt / step_dir_name(step)
    tmp = ckpt / (final.name + ".tmp")
    try:
        _write(tmp, model, optimizer, {"step": step, **state})
    except (OSError, RuntimeError, safetensors.SafetensorError) as exc:  # torch.save: RuntimeError
        _remove_ours(tmp)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"cannot write the checkpoint of step {step} in {ckpt} ({first}); the earlier "
            f"checkpoints are intact ({ckpt / LATEST}): free disk space, then --resume"
        ) from None
    _move_in(tmp, final)
    _fsync_dir(ckpt)
    latest_tmp = ckpt / (LATEST + ".tmp")
    latest_tmp.write_text(final.name + "\n")
    _fsync_file(latest_tmp)
    os.replace(latest_tmp, ckpt / LATEST)
    _fsync_dir(ckpt)
    _prune(ckpt, keep_last, final.name, {step_dir_name(s) for s in protect})
    return final


def _write(tmp: Path, model: nn.Module, optimizer, state: dict[str, Any]) -> None:
    """A checkpoint's files into `tmp` (a fresh folder), each fsynced."""
    _remove_ours(tmp)  # left by a killed writer
    tmp.mkdir()
    # safetensors.save_model handles tied weights (wte / lm_head) that save_file refuses
    safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)


def _move_in(tmp: Path, final: Path) -> None:
    """A written checkpoint folder to its name: a rename, or, when a user's file stays in the
    folder of that name (a re-saved step), our files one by one, state.json last (a checkpoint
    counts as complete only once it is there)."""
    if final.exists():  # re-saving a step (e.g. after resume at the same step)
        _remove_ours(final)
    if not final.exists():
        os.replace(tmp, final)
        return
    for name in sorted(CHECKPOINT_FILES, key=lambda n: n == "state.json"):
        if (tmp / name).exists():
            os.replace(tmp / name, final / name)
    tmp.rmdir()


def _remove_ours(folder: Path) -> None:
    """Delete a checkpoint folder cfglab wrote: its CHECKPOINT_FILES, then the folder if that
    left it empty (a file a user put there stays, and so does the folder)."""
    if not folder.is_dir():
        return
    for name in CHECKPOINT_FILES:
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # not empty: the user's files
        pass


def _prune(ckpt: Path, keep_last: int, current: str, protected: set[str]) -> None:
    """Keep the last `keep_last` checkpoints (the current one among them) and every protected
    one; a protected step is not counted among the last. Only folders named as cfglab names
    them are pruned."""
    done = sorted(
        p for p in ckpt.iterdir() if p.is_dir() and rundir.checkpoint_step(p.name) is not None
    )
    regular = [p for p in done if p.name not in protected or p.name == current]
    for old in regular[: max(0, len(regular) - keep_last)]:
        if old.name != current:
            _remove_ours(old)
    for stale in ckpt.iterdir():  # left by a killed writer
        if rundir.CHECKPOINT_TMP_NAME.fullmatch(stale.name):
            _remove_ours(stale)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The folder `ckpt/latest` names; CheckpointError if there is none or it is incomplete."""
    run_dir = Path(run_dir)
    pointer = run_dir / CKPT_DIR / LATEST
    if not pointer.is_file():
        raise CheckpointError(
            f"no checkpoint in {run_dir} (missing {pointer}); train first, or "
            "drop --resume to start from scratch"
        )
    name = pointer.read_text(errors="replace").strip()
    path = run_dir / CKPT_DIR / name
    if rundir.checkpoint_step(name) is None or not path.is_dir():
        raise CheckpointError(
            f"{pointer} names {name!r}, which is not a checkpoint folder; "
            f"delete {pointer} to start over"
        )
    for f in ("model.safetensors", "state.json"):
        if not (path / f).is_file():
            raise CheckpointError(
                f"checkpoint {path} is incomplete (no {f}); delete it and "
                "point ckpt/latest at an earlier step_* folder"
            )
    return path


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a run, by step; anything else in ckpt/
    (a user's folder or file, a checkpoint being written) is skipped."""
    ckpt = Path(run_dir) / CKPT_DIR
    out = []
    for p in ckpt.iterdir() if ckpt.is_dir() else []:
        step = rundir.checkpoint_step(p.name)
        complete = (p / "model.safetensors").is_file() and (p / "state.json").is_file()
        if step is not None and p.is_dir() and complete:
            out.append((step, p))
    return sorted(out)


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.json, checked: its step is the folder's, and its RNG states decode
    (so a resume either restores everything or fails here, before any work)."""
    f = path / "state.json"
    advice = (
        f"the weights in {path.name} are not affected (eval, probe and report still work); to "
        f"resume, point {path.parent / LATEST} at an earlier step_* folder"
    )
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
        step = state["step"]
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step {step!r}")
        if rundir.checkpoint_step(path.name) is not None and step_dir_name(step) != path.name:
            raise ValueError(f"step {step} in folder {path.name}")
        if "rng" in state:
            _decode_rng(state["rng"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{f} is corrupt ({type(exc).__name__}: {exc}); {advice}") from None
    return state


def _decode_rng(state: dict[str, Any]) -> tuple:
    """The RNG states of state.json as the objects torch, random and numpy take (ValueError or
    KeyError or TypeError if malformed)."""
    torch_state = torch.from_numpy(
        np.frombuffer(base64.b64decode(state["torch"], validate=True), dtype=np.uint8).copy()
    )
    version, internal, gauss = state["python"]
    python_state = (version, tuple(internal), gauss)
    numpy_state = state["numpy"]
    np.random.RandomState().set_state(numpy_state)  # validates
    random.Random().setstate(python_state)  # validates
    cuda = [
        torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())
        for s in state.get("cuda", [])
    ]
    return torch_state, python_state, numpy_state, cuda


def load_weights(model: nn.Module, path: Path) -> None:
    """Load model.safetensors into `model` (strict: every name and shape must match)."""
    try:
        missing, unexpected = safetensors.torch.load_model(
            model, str(path / "model.safetensors"), strict=False
        )
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path / 'model.safetensors'} is corrupt or does not fit the model "
            f"({first}); check the config or delete the checkpoint"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path / 'model.safetensors'} does not fit the model (missing "
            f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); was "
            "the config changed since the run was trained?"
        )


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    f = path / "optim.pt"
    try:
        sd = torch.load(f, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(sd)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} has no optim.pt, so the run cannot resume exactly from it; its weights still "
            f"serve eval, probe and report; to resume, point {path.parent / LATEST} at an "
            "earlier step_* folder"
        ) from None
    except Exception as exc:  # noqa: BLE001  (any unreadable file: one clear message)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{f} is corrupt ({first}); the weights in {path.name} are not affected (eval, "
            f"probe and report still work); to resume, point {path.parent / LATEST} at an "
            "earlier step_* folder"
        ) from None


def load_model(
    run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: Path | None = None
):
    """A run's model (its latest complete checkpoint, or `checkpoint`) and its config.

    Returns (GPT in eval mode on `device`, ExperimentConfig). The vocabulary comes from the
    run's own grammar.cfg, never from the file the run was made from. CheckpointError if the
    run has no usable checkpoint.
    """
    from cfglab.data.metadata import model_vocab_size
    from cfglab.model import build_model, gpt_config

    cfg = rundir.read_run_config(run_dir)
    path = checkpoint if checkpoint is not None else latest_checkpoint(run_dir)
    grammar = rundir.read_run_grammar(run_dir, cfg.grammar.name)
    size = model_vocab_size(grammar, cfg.data.metadata.levels)  # Vocab's, + metadata tokens
    model = build_model(gpt_config(cfg.model, size))
    load_weights(model, path)
    return model.to(device).eval(), cfg
