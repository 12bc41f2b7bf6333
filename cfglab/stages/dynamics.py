"""The dynamics stage: the eval and probe measurements at every kept checkpoint of a run.

For each checkpoint that train.keep_steps kept (and the last), in one pass over the run:
validation loss beside the loss floor; cut0 generation accuracy with its interval
(dynamics.n_samples generations); next-token KL on dynamics.n_kl true strings, overall and by
the level of the NT ending before each row (cfglab.analyze.dynamics.row_levels); NT-ancestor and
NT-boundary probes per level (the probe section's settings: hidden states collected once per
checkpoint and shared by every layer's probes) at the last layer and the best layer; attention
head scores (previous token, boundary per level). The random-init twin and the majority rate,
measured once, are the baselines. Streams and settings are the eval and probe stages', so at
the final checkpoint the numbers equal theirs for the same n. Writes analyze/dynamics.jsonl (one
line per checkpoint) and analyze/dynamics.json (the baselines and the emergence table).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from cfglab import rundir
from cfglab.config import ExperimentConfig
from cfglab.errors import CfglabError
from cfglab.seeds import stream_seed
from cfglab.stages.common import load_run_model, need_levels, random_init_twin, say


def _probe_summary(result: dict) -> dict:
    """probe_layers' result -> per (target, level): last-layer and best-layer accuracy."""
    acc = np.asarray(result["accuracy"])  # (layers, G)
    out = {}
    for g, (target, level) in enumerate(result["keys"]):
        best = int(np.argmax(acc[:, g]))
        out[f"{target}_L{level}"] = {
            "last": float(acc[-1, g]),
            "best": float(acc[best, g]),
            "best_layer": best,
        }
    return out


def _head_scores(att: dict) -> dict:
    return {k: float(np.nanmax(np.asarray(v))) for k, v in att["head_scores"].items()}


def run_dynamics(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """Measure every kept checkpoint -> analyze/dynamics.jsonl and analyze/dynamics.json."""
    import torch

    from cfglab.analyze.attention import attention_model
    from cfglab.analyze.dynamics import kl_by_level, row_levels
    from cfglab.analyze.probe_tree import probe_model
    from cfglab.data.sampler import sample
    from cfglab.data.vocab import BOS, Vocab
    from cfglab.evaluate import accuracy, distribution
    from cfglab.evaluate.adapters import torch_generate_fn, torch_logprob_fn
    from cfglab.evaluate.context import EvalContext
    from cfglab.exact import inside
    from cfglab.train import checkpoint as ckpt
    from cfglab.train.objectives import loss_fn

    d, p, a = cfg.dynamics, cfg.probe, cfg.attention
    if not cfg.model.causal:
        raise CfglabError(
            f"{run_dir} is a masked-LM encoder: the dynamics stage measures generation and "
            "next-token KL, which it has not; leave dynamics out of its stages"
        )
    kept = ckpt.list_checkpoints(run_dir)
    if not kept:
        raise ckpt.CheckpointError(f"no checkpoint in {run_dir}; train it first")
    model, grammar = load_run_model(run_dir, cfg, cfg.eval, checkpoint=kept[-1][1])
    need_levels(grammar, "the dynamics stage needs")
    device = str(next(model.parameters()).device)
    vocab = Vocab.from_grammar(grammar)
    block = model.config.block_size
    settings = dataclasses.replace(cfg.eval, n_samples=d.n_samples, n_kl=d.n_kl, cuts=[0])
    t_start = time.perf_counter()

    # what every checkpoint is measured on: drawn once
    kl_batch = sample(grammar, d.n_kl, stream_seed(cfg.eval.seed, "eval_kl"), max_len=block - 1)
    kl_strings = kl_batch.strings()
    p_true = list(inside.next_token_dist(grammar, kl_strings))
    groups = [
        row_levels(kl_batch.is_boundary[:, kl_batch.offsets[i] : kl_batch.offsets[i + 1]])
        for i in range(len(kl_strings))
    ]
    floor = rundir.read_result(run_dir, f"{rundir.EVAL}/loss_floor")
    floor = floor["loss_floor"]["value"] if floor else None
    probe_seed = p.seed
    train_b = test_b = att_b = None
    if d.probe:
        train_b = sample(grammar, p.n_train, stream_seed(p.seed, "probe_train"), max_len=block - 2)
        test_b = sample(grammar, p.n_test, stream_seed(p.seed, "probe_test"), max_len=block - 2)
    if d.attention:
        att_b = sample(
            grammar, a.n_strings, stream_seed(a.seed, "attention_strings"), max_len=block - 2
        )
    val_windows = _val_windows(cfg, grammar, block)

    baseline = {}
    if d.probe or d.attention:
        twin = random_init_twin(model, cfg)
        if d.probe:
            res = probe_model(
                twin, grammar, train_b, test_b, settings=p, windows=["all"], seed=probe_seed
            )["all"]
            baseline["probe"] = _probe_summary(res)
            baseline["majority"] = {
                f"{t}_L{lev}": float(m)
                for (t, lev), m in zip(res["keys"], res["majority"], strict=True)
            }
        if d.attention:
            twin_a = random_init_twin(model, cfg)
            baseline["heads"] = _head_scores(attention_model(twin_a, grammar, att_b))

    records = []
    for step, path in kept:
        t0 = time.perf_counter()
        model, _ = load_run_model(run_dir, cfg, cfg.eval, checkpoint=path)

        def make_generate(temperature: float, model=model):
            def generate(prompts, rng):
                room = block - max(len(q) for q in prompts)
                return torch_generate_fn(
                    model,
                    eos_id=vocab.eos,
                    max_new_tokens=room,
                    temperature=temperature,
                    device=device,
                )(prompts, rng)

            return generate

        ctx = EvalContext(
            grammar,
            torch_logprob_fn(model, pad_id=vocab.pad, device=device),
            make_generate,
            settings,
            max_len=block - 1,
        )
        acc = accuracy.judged_generations(ctx, 0, 0)[0]
        logq: list[np.ndarray] = []
        for i in range(0, len(kl_strings), settings.batch_size):
            logq.extend(
                ctx.model(
                    [np.concatenate([[BOS], s]) for s in kl_strings[i : i + settings.batch_size]]
                )
            )
        dist = distribution.distribution_metrics(kl_strings, p_true, logq, grammar.n_t)
        rows = [
            distribution.row_kl(pt, distribution.model_symbol_probs(lq, grammar.n_t))
            for pt, lq in zip(p_true, logq, strict=True)
        ]
        with torch.no_grad():
            x, y = val_windows[:, :-1].to(device), val_windows[:, 1:].to(device)
            val = float(loss_fn(model(x), y))
        rec = {
            "step": step,
            "val_loss": val,
            "loss_floor": floor,
            "accuracy": {
                "cut": 0,
                "temperature": acc.temperature,
                "n": acc.n,
                "accuracy": acc.accuracy,
                "ci_low": acc.ci_low,
                "ci_high": acc.ci_high,
            },
            "kl": dist.kl,
            "kl_by_level": kl_by_level(rows, groups),
        }
        if d.probe:
            res = probe_model(
                model, grammar, train_b, test_b, settings=p, windows=["all"], seed=probe_seed
            )["all"]
            rec["probe"] = _probe_summary(res)
        if d.attention:
            rec["heads"] = _head_scores(attention_model(model, grammar, att_b))
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        records.append(rec)
        say(
            f"dynamics: step {step}: val loss {val:.4f}, cut0 {acc.accuracy:.3f}, "
            f"KL {dist.kl:.4f} ({rec['seconds']:.1f} s)"
        )

    table = emergence_table(records, baseline)
    out_path = Path(run_dir) / rundir.ANALYZE / "dynamics.jsonl"
    rundir.write_text_atomic(out_path, "".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "steps": [r["step"] for r in records],
        "baseline": baseline,
        "emergence": table,
        "settings": {"dynamics": dataclasses.asdict(d), "eval_seed": cfg.eval.seed},
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    rundir.write_result(run_dir, f"{rundir.ANALYZE}/dynamics", summary)
    from cfglab.report.plots_dynamics import emergence_markdown

    print("\n".join(emergence_markdown(table)))
    print(f"wrote {out_path}")
    return out_path


def emergence_table(records: list[dict], baseline: dict) -> list[dict]:
    """Per probe (target, level): the step its last-layer accuracy first gets halfway from the
    random-init twin's to its final value; and the same for cut0 generation accuracy (from the
    first checkpoint's value)."""
    from cfglab.analyze.dynamics import emergence

    steps = [r["step"] for r in records]
    rows = []
    for key in records[-1].get("probe") or {}:
        base = baseline.get("probe", {}).get(key, {}).get("last", 0.0)
        values = [r["probe"][key]["last"] for r in records]
        rows.append({"what": f"probe {key}", **emergence(steps, values, base)})
    values = [r["accuracy"]["accuracy"] for r in records]
    rows.append({"what": "generation accuracy cut0", **emergence(steps, values, values[0])})
    return rows


def _val_windows(cfg: ExperimentConfig, grammar, block: int):
    """The training loop's validation windows (its fixed held-out stream), stacked."""
    import torch

    from cfglab.data.dataset import VAL
    from cfglab.train.dist import DistInfo
    from cfglab.train.loop import make_data

    source = make_data(cfg, grammar, block + 1, DistInfo(0, 0, 1, torch.device("cpu")), VAL)
    return torch.cat([source.batch(i) for i in range(cfg.train.eval_batches)])
