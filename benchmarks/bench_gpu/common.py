"""What every section of the GPU benchmark shares: the plan (paper sizes on CUDA, a tiny model
on a CPU), the clock, device helpers, error and number formatting."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.metadata
import math
import os
import shutil
import time
import traceback
from pathlib import Path

import torch

# cfglab's own pieces, so the benchmark measures the real code (one block: paths may move)
from cfglab.config import ExperimentConfig, ProbeConfig, load_config
from cfglab.data.dataset import FreshStream
from cfglab.data.vocab import Vocab
from cfglab.train.objectives import get_objective

ROOT = Path(__file__).resolve().parents[2]
PAPER_CONFIG = ROOT / "configs" / "paper" / "gpt_rot.yaml"
QUICKSTART_GRAMMAR = ROOT / "configs" / "grammars" / "quickstart.cfg"

# dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from NVIDIA's datasheets; first match wins
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("GH200", 989.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
)
# a perfect model's loss per predicted token (n tokens + EOS), SPEC.md "Grammars"
ENTROPY_RATE = {"cfg3b": 0.423, "cfg3i": 0.415, "cfg3h": 0.600, "cfg3g": 0.743, "cfg3f": 0.747}
AGREE_TOL = 2e-2  # bf16 vs fp32: largest relative loss difference allowed
LOOP_OVERHEAD = 1.15  # train() step time / bare step time, for sizing the training check


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every section runs: the paper's sizes on CUDA, a tiny model on a CPU."""

    device: torch.device
    model_overrides: tuple[str, ...]  # on top of configs/paper/gpt_rot.yaml
    grammar: str  # throughput, agreement, generation, exact stage, probes
    batch: int  # windows per timed step (the training check's micro-batch)
    warmup: int  # untimed steps before each timed block (the first compiles)
    steps: int  # timed steps per bf16 row (fp32 rows: half)
    compile_backend: str  # torch.compile backend
    agree_batch: int
    agree_steps: int
    agree_lr: float  # peak of the linear decay over agree_steps
    train_grammar: str
    train_overrides: tuple[str, ...]
    train_seconds: float  # the training check's wall-clock budget
    train_reserve_s: float  # of it: compiles, validation, checkpoint (not steps)
    train_row: str  # the throughput row whose step time sizes the training check
    n_prompts: int
    new_tokens: int
    n_exact: int
    n_probe: int
    probe_settings: ProbeConfig
    probe_full_s: float  # run probe_model when its estimate is below this
    n_floor: int  # strings for the loss floor
    deadline_s: float  # wall-time goal of the whole benchmark
    threads: int | None  # torch CPU threads (None: torch's default)

    def config(self, grammar: str, extra: tuple[str, ...] = ()) -> ExperimentConfig:
        return load_config(PAPER_CONFIG, [f"grammar.name={grammar}", *self.model_overrides, *extra])


def make_plan(device: torch.device) -> Plan:
    env = os.environ.get
    if device.type == "cuda":
        return Plan(
            device=device,
            model_overrides=(),  # the paper's: preset gpt2-small, block_size 512, rot
            grammar="cfg3f",
            batch=int(env("CFGLAB_BENCH_GPU_BATCH", "48")),
            warmup=3,
            steps=20,
            compile_backend="inductor",
            agree_batch=8,
            agree_steps=10,
            agree_lr=3e-4,  # the paper's
            train_grammar="cfg3b",
            # global batch 96 (the paper's) as 2 micro-batches of 48: the compiled graph of
            # the throughput rows is reused
            train_overrides=("train.grad_accum=2", "train.compile=true"),
            train_seconds=float(env("CFGLAB_BENCH_GPU_TRAIN_S", "180")),
            train_reserve_s=45.0,
            train_row="cfglab rot bf16+compile",
            n_prompts=64,
            new_tokens=256,
            n_exact=1000,
            n_probe=1000,
            probe_settings=ProbeConfig(),
            probe_full_s=float(env("CFGLAB_BENCH_GPU_PROBE_S", "60")),
            n_floor=2000,
            deadline_s=float(env("CFGLAB_BENCH_GPU_DEADLINE_S", "400")),
            threads=None,
        )
    tiny = ("model.preset=null", "model.n_layer=2", "model.n_head=2", "model.n_embd=64")
    return Plan(
        device=device,
        model_overrides=(*tiny, "model.block_size=64"),
        grammar=str(QUICKSTART_GRAMMAR),
        batch=int(env("CFGLAB_BENCH_GPU_BATCH", "4")),
        warmup=1,
        steps=3,
        compile_backend="aot_eager",  # traces like inductor (graph breaks show); compiles in ~1 s
        agree_batch=4,
        agree_steps=10,
        agree_lr=1e-3,  # a tiny model moves little at 3e-4 in 10 steps
        train_grammar=str(QUICKSTART_GRAMMAR),
        train_overrides=("train.grad_accum=2", "train.batch_size=8", "train.lr=3e-3"),
        train_seconds=float(env("CFGLAB_BENCH_GPU_TRAIN_S", "4")),
        train_reserve_s=1.0,
        train_row="cfglab rot fp32",
        n_prompts=8,
        new_tokens=24,
        n_exact=200,
        n_probe=80,
        probe_settings=ProbeConfig(steps=20),
        probe_full_s=float(env("CFGLAB_BENCH_GPU_PROBE_S", "60")),
        n_floor=200,
        deadline_s=float(env("CFGLAB_BENCH_GPU_DEADLINE_S", "120")),
        threads=1,  # tiny ops on a shared machine: a second thread mostly waits for a free core
    )


class Clock:
    """Seconds since the benchmark started, and what is left of its deadline."""

    def __init__(self, deadline_s: float) -> None:
        self.t0, self.deadline_s = time.perf_counter(), deadline_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        return self.deadline_s - self.elapsed()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a CUDA device by name ($CFGLAB_BENCH_GPU_PEAK_TFLOPS first); None
    if unknown or a CPU (no MFU)."""
    if name == "cpu":
        return None
    if os.environ.get("CFGLAB_BENCH_GPU_PEAK_TFLOPS"):
        return float(os.environ["CFGLAB_BENCH_GPU_PEAK_TFLOPS"])
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def real_batch(cfg: ExperimentConfig, n: int, step: int, seed: int, device: torch.device):
    """(x, y) (n, T) on `device`: n fresh packed windows, moved whole and then split as train()
    does (so x has the loop's strides and a compiled graph is reused)."""
    grammar = cfg.grammar.load()
    vocab = Vocab.from_grammar(grammar)
    w = FreshStream(grammar, cfg.model.block_size + 1, n, seed=seed).batch(step)  # (n, T+1)
    return get_objective("next_token").make_batch(w.to(device), vocab.eos, vocab.mask)


def toolchain() -> str:
    """What torch.compile needs on CUDA besides torch: Triton, and a C compiler for the launcher
    Triton builds on first use (a bare machine may lack one: the compile rows then fail)."""
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = "none"
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    return f"triton {triton}, C compiler {cc or 'none'}"


def short_error(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}"


def print_traceback(exc: BaseException, lines: int = 25) -> None:
    """The last lines of the traceback (compile errors are hundreds of lines long)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    print("\n".join("    " + ln for ln in text[-lines:]))


def fmt(x, spec: str, missing: str = "-") -> str:
    return (
        missing if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)
    )
