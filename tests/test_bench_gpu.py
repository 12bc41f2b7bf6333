"""`python -m benchmarks gpu` in its CPU form (issue 18): every section runs and reports numbers
that can be wrong, so the GPU benchmark still works on the day it gets a GPU.

The benchmark runs once per module in a subprocess with CUDA hidden (the CPU form, ~25 s on 2
cores) and writes gpu.json; the tests read it. The CUDA plan's training config and the device
peak table are checked without a GPU.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench_gpu
from cfglab.model import gpt_config

ROOT = Path(__file__).resolve().parents[1]
# ~15 s of the default suite's ~3 min: with the slow tests (CI runs them), as the GPU benchmark
# itself runs on a GPU machine
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench_gpu")
    env = {
        **os.environ,
        "CFGLAB_BENCH_OUT": str(out),
        "CUDA_VISIBLE_DEVICES": "",  # the CPU form even on a GPU machine
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    for key in [k for k in env if k.startswith("CFGLAB_BENCH_GPU_")]:
        del env[key]  # the defaults, whatever the shell has set
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "gpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((out / "gpu.json").read_text()), proc.stdout


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_section_ran_and_said_so(run):
    results, stdout = run
    assert results["failed"] == []
    assert list(results["sections"]) == list(bench_gpu.SECTIONS)
    for name, section in results["sections"].items():
        assert section["ok"] and section["error"] is None, name
    n = len(bench_gpu.SECTIONS)
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert lines[-2] == f"bench gpu: {n} of {n} sections ok"  # then __main__'s "== gpu done"
    assert "== summary" in stdout


def test_throughput_rows_and_reference_ratio(run):
    results, _ = run
    s = results["sections"]
    rows = {r["row"]: r for r in s["throughput"]["rows"] + s["extra"]["rows"]}
    expected = [f"{m} {p}" for m, p in bench_gpu.ROWS + bench_gpu.EXTRA_ROWS]
    assert sorted(rows) == sorted(expected)
    for name, r in rows.items():
        assert finite_positive(r["tokens_s"]) and finite_positive(r["ms_step"]), name
        assert math.isfinite(r["loss_end"]), name
        if not name.startswith("reference"):
            assert finite_positive(r["vs_ref"]), name
    assert rows["cfglab rot bf16+compile+fused"]["optimizer"] == "fused"
    assert rows["cfglab rot bf16"]["optimizer"] == "foreach"  # cfglab's make_optimizer
    # same seed, same batch: the first step's loss agrees across fp32, bf16 and compile
    spreads = s["throughput"]["loss0_spread"]
    assert set(spreads) == {"cfglab rot", "reference", "cfglab abs"}
    assert all(v < 1e-2 for v in spreads.values()), spreads
    assert s["throughput"]["n_params"] > 0


def test_bf16_agrees_with_fp32_within_tolerance(run):
    ag = run[0]["sections"]["agreement"]
    assert ag["passed"] and ag["max_rel_diff"] <= ag["tolerance"] == bench_gpu.AGREE_TOL
    # not a trivial agreement at an untrained uniform prediction: the loss fell in between
    fp32 = ag["runs"]["fp32"]
    assert max(fp32["held_after"]) < min(fp32["held_before"]) - 0.1


def test_training_check_loss_falls(run):
    tr = run[0]["sections"]["train"]
    assert tr["final_loss"] < tr["first_loss"]
    assert math.isfinite(tr["final_val_loss"])
    assert tr["curve"][-1]["step"] == tr["max_steps"]
    assert 0 < tr["loss_floor"]["value"] < tr["final_loss"]
    assert finite_positive(tr["loop_tokens_s"]) and finite_positive(tr["loop_vs_bare"])


def test_generation_exact_and_probe_numbers(run):
    s = run[0]["sections"]
    gen = s["generation"]
    assert set(gen["rows"]) == {"cache fp32", "cache bf16", "cache bf16 cuDNN", "no cache fp32"}
    assert finite_positive(gen["cudnn_slowdown"])
    assert all(finite_positive(r["tokens_s"]) for r in gen["rows"].values())
    assert gen["same_as_no_cache"] == gen["prompts"]  # same seed, fp32: the same samples
    ex = s["exact"]
    assert ex["accepted"] == ex["n_strings"] > 0
    assert finite_positive(ex["recognize_ms"]) and finite_positive(ex["next_token_dist_ms"])
    assert ex["max_row_sum_error"] < 1e-9
    pr = s["probe"]
    assert finite_positive(pr["collect_s"]) and finite_positive(pr["layer_fit_s"])
    assert finite_positive(pr["probe_model_s"])  # small enough on a CPU to run in full


def test_cuda_plan_trains_the_papers_config_in_the_throughput_shape(tmp_path):
    plan = bench_gpu.make_plan(torch.device("cuda"))  # a plan only: nothing touches CUDA
    cfg = bench_gpu.train_config(plan, tmp_path, 1000)
    t, m = cfg.train, gpt_config(cfg.model, 7)
    assert cfg.grammar.name == "cfg3b"
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.position) == (12, 12, 768, 512, "rot")
    assert (t.batch_size, t.lr, t.decay, t.dtype, t.compile) == (96, 3e-4, "linear", "auto", True)
    assert t.batch_size // t.grad_accum == plan.batch  # the compiled throughput graph is reused
    assert t.max_steps == t.ckpt_every == 1000
    assert t.eval_every % t.log_every == 0 and 20 <= 1000 // t.log_every <= 60


@pytest.mark.parametrize(
    "name,peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA GeForce RTX 4090", None),
        ("cpu", None),
    ],
)
def test_peak_by_device_name(name, peak, monkeypatch):
    monkeypatch.delenv("CFGLAB_BENCH_GPU_PEAK_TFLOPS", raising=False)
    assert bench_gpu.peak_tflops(name) == peak
