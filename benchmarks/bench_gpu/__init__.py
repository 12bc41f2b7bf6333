"""GPU benchmark (issue 18): does cfglab run the paper's GPT-2 small here, correctly and fast?

`python -m benchmarks gpu`. On CUDA every section uses the paper's setup (configs/paper/
gpt_rot.yaml: 12 layers, 12 heads, 768 dims, T = 512, the cfg3 vocabulary of 7 tokens); on a CPU
the same sections run a tiny model (2 layers, 2 heads, 64 dims, T = 64) on the quickstart grammar
for a few steps each (~25 s), so tests/test_bench_gpu.py keeps every code path working.

Sections, in this order (each timed; one that fails prints its error and the others go on):
1. throughput: a training step (forward + backward + clip + AdamW) on one fixed batch of real
   cfg3f windows, for a nanoGPT reference (benchmarks/bench_model.RefGPT with nanoGPT's fused
   AdamW on CUDA) and cfglab's GPT of the same shape (rot: the paper's GPT_rot; abs: positions
   like the reference's), in fp32, bf16 autocast and bf16 autocast + torch.compile. Warm-up
   steps excluded; the timed block is bracketed by torch.cuda.synchronize(). Every row starts
   from the same seed and batch, so its first loss must agree across precisions. One row swaps
   cfglab's foreach AdamW for the fused one on the compiled model (what that change would gain).
   MFU = flops/token x tokens/s / the device's dense bf16 peak; flops/token = 6 N + 12 L C T
   (nanoGPT's estimate_mfu, PaLM appendix B), N = the parameters outside embedding tables.
2. agreement: bf16 autocast vs fp32 from identical weights on the same batches: the held-out
   loss at init, the loss of each of 10 AdamW steps and the held-out loss after; PASS if the
   largest relative difference is within AGREE_TOL.
3. generation: KV-cache sampling, 64 prompts x 256 new tokens, fp32 and bf16 autocast; no cache;
   and bf16 with cuDNN attention allowed, which generate() turns off (see
   cfglab.evaluate.generate.no_cudnn_attention): the row that shows whether that still pays.
4. exact: cyk.recognize and inside.next_token_dist on 1,000 cfg3f strings (CPU, Numba).
5. probe: hidden states of 1,000 cfg3f strings (750 train / 250 test) through the 12-layer model
   on the device; one layer's probes fitted and scored as probe_model does each layer (on the
   model's device), and probe_model itself if the estimate for all layers is short.
6. train: cfglab's own `train()` on configs/paper/gpt_rot.yaml with grammar cfg3b (bf16
   autocast, torch.compile, global batch 96 as 2 micro-batches of 48, the throughput rows' shape,
   so their compiled graph is reused) for a wall-clock budget: max_steps comes from the measured
   step time, so the linear decay ends with the budget. Prints the loss curve and the loss
   reached beside the packed-window loss floor (exact log-probabilities of fresh strings).
7. extra: cfglab abs + torch.compile (a third compile), if the deadline leaves time for it.

Environment: CFGLAB_BENCH_OUT (gpu.json and the training run's metrics.jsonl go there);
CFGLAB_BENCH_GPU_TRAIN_S (training budget, default 180 s on CUDA); CFGLAB_BENCH_GPU_DEADLINE_S
(wall-time goal of the whole run, default 400 s on CUDA: the training check, the probe fit and
the extra row shrink or skip to meet it); CFGLAB_BENCH_GPU_BATCH (windows per timed step,
default 48); CFGLAB_BENCH_GPU_PROBE_S (largest probe_model estimate that is run, default 60 s);
CFGLAB_BENCH_GPU_PEAK_TFLOPS (the dense bf16 peak of a device missing from PEAK_BF16_TFLOPS).
Layout: common.py (the plan, clock, device helpers), throughput.py (sections 1, 2, 7),
stages.py (sections 3-6), this file (running them, the summary, main).
The summary is printed last; its last line names the failed sections (then exit status 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.bench_gpu.common import (
    AGREE_TOL,
    Clock,
    Plan,
    device_name,
    fmt,
    free_memory,
    make_plan,
    peak_tflops,
    print_traceback,
    short_error,
    toolchain,
)
from benchmarks.bench_gpu.stages import (
    section_exact,
    section_generation,
    section_probe,
    section_train,
    train_config,
)
from benchmarks.bench_gpu.throughput import (
    EXTRA_ROWS,
    HEADER,
    ROWS,
    row_line,
    section_agreement,
    section_extra,
    section_throughput,
)
from cfglab.train.dist import pick_device

__all__ = [
    "AGREE_TOL",
    "EXTRA_ROWS",
    "ROWS",
    "SECTIONS",
    "main",
    "make_plan",
    "peak_tflops",
    "run_all",
    "summary_lines",
    "train_config",
]


# ---- running and reporting ----------------------------------------------------------------------
SECTIONS: dict[str, Callable[[Plan, Clock, dict, dict], None]] = {
    "throughput": section_throughput,
    "agreement": section_agreement,
    "generation": section_generation,
    "exact": section_exact,
    "probe": section_probe,
    "train": section_train,  # late: its budget takes what the deadline leaves, up to the full one
    "extra": section_extra,
}


def run_all(plan: Plan) -> dict:
    clock = Clock(plan.deadline_s)
    name = device_name(plan.device)
    peak = peak_tflops(name)
    results = {
        "device": name,
        "device_type": plan.device.type,
        "peak_tflops_bf16": peak,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "toolchain": toolchain(),
        "plan": {
            k: (str(v) if isinstance(v, torch.device) else v)
            for k, v in dataclasses.asdict(plan).items()
        },
        "sections": {},
    }
    peak_text = f"{peak:g} TFLOP/s dense bf16" if peak else "peak unknown (no MFU)"
    if plan.device.type == "cpu":
        peak_text = "CPU: tiny model, no MFU"
    print(
        f"device {name} ({plan.device}); {peak_text}; torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}; fp32 matmul precision {torch.get_float32_matmul_precision()}; "
        f"torch threads {torch.get_num_threads()}; {results['toolchain']}"
    )
    for section, fn in SECTIONS.items():
        print(f"\n-- {section} (at {clock.elapsed():.0f} s)")
        out: dict = {}
        t0 = time.perf_counter()
        try:
            fn(plan, clock, out, results)
            ok, error = True, None
        except Exception as exc:  # noqa: BLE001  (report, then run the next section)
            ok, error = False, short_error(exc)
            print(f"{section} FAILED: {error}")
            print_traceback(exc)
        finally:
            free_memory()
        seconds = time.perf_counter() - t0
        results["sections"][section] = {"ok": ok, "seconds": seconds, "error": error, **out}
        print(f"-- {section}: {'ok' if ok else 'FAILED'} in {seconds:.1f} s")
    results["total_s"] = clock.elapsed()
    results["failed"] = [k for k, v in results["sections"].items() if not v["ok"]]
    return results


def summary_lines(results: dict) -> list[str]:
    """The compact table printed last (the device tool keeps only the end of the output)."""
    s, peak = results["sections"], results["peak_tflops_bf16"]
    tp, ag, tr = s.get("throughput", {}), s.get("agreement", {}), s.get("train", {})
    ge, ex, pr = s.get("generation", {}), s.get("exact", {}), s.get("probe", {})
    rows = tp.get("rows", []) + s.get("extra", {}).get("rows", [])
    lines = [
        f"== summary: {results['device']}, "
        + (f"dense bf16 peak {peak:g} TFLOP/s" if peak else "peak unknown")
        + f", torch {results['torch']}, total {results['total_s']:.0f} s"
    ]
    if rows:
        lines.append(
            f"training step {tp['shape']}, T={tp['block_size']}, batch {tp['batch']}, "
            f"N = {fmt(tp.get('n_params'), ',')} (MFU: 6N + 12LCT flops/token)"
        )
        lines += [HEADER] + [row_line(r) for r in rows]
    if "max_rel_diff" in ag:
        lines.append(
            f"bf16 vs fp32: max relative loss difference {ag['max_rel_diff']:.1e} over "
            f"{ag['steps']} steps, tolerance {ag['tolerance']:g}: "
            + ("PASS" if ag["passed"] else "FAIL")
        )
    if "final_loss" in tr:
        fl, spec = tr["loss_floor"], tr["spec_entropy_rate"]
        lines.append(
            f"training check {tr['grammar']} ({tr['config']}, batch {tr['batch_size']} = "
            f"{tr['grad_accum']} x {tr['batch_size'] // tr['grad_accum']}, compile "
            f"{tr['compile']}{' (fallback)' if tr.get('compile_fallback') else ''}): "
            f"{tr['max_steps']} steps in {tr['wall_s']:.0f} s"
        )
        lines.append(
            f"  loss {tr['first_loss']:.4f} -> {tr['final_loss']:.4f}, val "
            f"{fmt(tr['final_val_loss'], '.4f')}; perfect model {fl['value']:.4f} +- "
            f"{fl['stderr']:.4f} per packed token"
            + (f" (SPEC entropy rate {spec})" if spec else "")
        )
        lines.append(
            f"  loop {fmt(tr['loop_tokens_s'], ',.0f')} tok/s = {fmt(tr['loop_vs_bare'], '.2f')}x "
            f"the bare step; first log line after {fmt(tr['first_log_s'], '.0f')} s (compile)"
        )
    if ge.get("rows"):
        r = ge["rows"]
        lines.append(
            f"generation {ge['prompts']} x {ge['new_tokens']} tokens/s: "
            + ", ".join(f"{k} {v['tokens_s']:,.0f}" for k, v in r.items())
            + f"; KV cache {fmt(ge.get('cache_speedup'), '.1f')}x"
        )
    if "recognize_ms" in ex:
        lines.append(
            f"exact stage, {ex['n_strings']} strings of ~{ex['mean_length']:.0f} tokens: "
            f"recognize {ex['recognize_ms']:.2f} ms/string, next_token_dist "
            f"{ex['next_token_dist_ms']:.2f} ms/string"
        )
    if "collect_s" in pr:
        full = pr.get("probe_model_s")
        lines.append(
            f"probes, {pr['n_train']} + {pr['n_test']} strings x {pr['layers']} layers: "
            f"hidden states {pr['collect_s']:.1f} s; one layer's fit "
            f"{fmt(pr.get('layer_fit_s'), '.1f')} s on {pr.get('fit_device', '-')}; probe_model "
            + (f"{full:.1f} s" if full else f"~{fmt(pr.get('probe_model_estimate_s'), '.0f')} s")
        )
    lines.append(
        "sections: "
        + ", ".join(
            f"{k} {'ok' if v['ok'] else 'FAILED'} {v['seconds']:.0f} s" for k, v in s.items()
        )
    )
    return lines


def main() -> None:
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # keep the output if the run is cut short
    plan = make_plan(pick_device("auto"))
    if plan.threads:
        torch.set_num_threads(plan.threads)
    results = run_all(plan)
    out_dir = os.environ.get("CFGLAB_BENCH_OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        text = json.dumps(results, indent=1, default=lambda o: getattr(o, "tolist", o.__str__)())
        (Path(out_dir) / "gpu.json").write_text(text)
    try:
        print("\n" + "\n".join(summary_lines(results)))
    except Exception as exc:  # noqa: BLE001  (the numbers are above and in gpu.json)
        print(f"\n(summary failed: {short_error(exc)})")
    failed = results["failed"]
    for name in failed:
        print(f"  {name}: {results['sections'][name]['error']}")
    n = len(results["sections"])
    print(
        f"bench gpu: {n - len(failed)} of {n} sections ok"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
