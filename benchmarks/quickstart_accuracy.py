"""Generation accuracy of a trained run, judged by the exact recognizer (cut0, temperature 1).

    python -m benchmarks.quickstart_accuracy runs/quickstart [-n 100] [--seed 0]

Prints the accuracy, the run's last losses, and the optimal loss for reference (the grammar's
entropy per predicted token, E[-log p(x)] / (E|x| + 2) by the exact inside algorithm on fresh
samples: a perfect model's training loss on the packed stream). The evaluation stage
(`cfglab eval`) reports the same accuracy with confidence intervals; this script is the small
stand-alone check the training issue asks for.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def accuracy(run_dir: str | Path, n: int = 100, seed: int = 0) -> dict:
    import torch

    from cfglab.data.sampler import sample
    from cfglab.data.vocab import BOS, Vocab
    from cfglab.evaluate.generate import generate
    from cfglab.exact import cyk, inside
    from cfglab.train.checkpoint import load_model

    model, cfg = load_model(run_dir)
    grammar = cfg.grammar.load()
    vocab = Vocab.from_grammar(grammar)
    t0 = time.perf_counter()
    prompts = [torch.tensor([BOS])] * n
    outs = generate(
        model,
        prompts,
        cfg.model.block_size - 1,
        eos_id=vocab.eos,
        generator=torch.Generator().manual_seed(seed),
    )
    candidates, finished = [], 0
    for o in outs:
        o = o[1:].numpy()  # drop BOS
        if len(o) and o[-1] == vocab.eos:
            finished += 1
            o = o[:-1]
            # wrong without parsing: empty, or a BOS/EOS/MASK/PAD inside the string
            if len(o) and o.min() >= 1 and o.max() <= len(vocab.terminals):
                candidates.append(o)
    correct = int(cyk.recognize(grammar, candidates).sum()) if candidates else 0
    gen_s = time.perf_counter() - t0
    true = sample(grammar, 200, seed=seed + 1, labels=False).strings()
    lp = inside.log_prob(grammar, true)
    optimal = float(-lp.mean() / (np.mean([len(s) for s in true]) + 2))
    return {
        "run_dir": str(run_dir),
        "n": n,
        "correct": correct,
        "accuracy": correct / n,
        "finished": finished,
        "optimal_loss": optimal,
        "seconds": gen_s,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", default="runs/quickstart")
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    r = accuracy(a.run_dir, a.n, a.seed)
    metrics = Path(a.run_dir) / "metrics.jsonl"
    lines = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    last = lines[-1] if lines else {}
    print(
        f"cut0 accuracy {r['correct']}/{r['n']} = {r['accuracy']:.2%} "
        f"({r['finished']} ended with EOS; {r['seconds']:.1f} s)"
    )
    print(
        f"last train loss {last.get('loss', float('nan')):.4f}, val loss "
        f"{last.get('val_loss', float('nan')):.4f}; optimal (grammar entropy per predicted "
        f"token) {r['optimal_loss']:.4f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
