"""The metric families of an evaluation, in the order they run: one line per family.

A family is a module with `DEFINITIONS` (metric name -> what exactly is averaged over what),
`measure(ctx: EvalContext)` -> a JSON-ready result (None: not applicable to these settings) and
`summary_rows(result)` -> rows {metric, value, [ci_low, ci_high,] n, [qualifiers such as cut,
temperature, gamma]} that the CLI table, the report and `cfglab compare` render without knowing
the family. Its result is written to eval/<name>.json. A new family is one new module and one
line here.
"""

from __future__ import annotations

from types import ModuleType

from cfglab.evaluate import (
    accuracy,
    composition,
    distribution,
    diversity,
    in_context,
    loss_floor,
    memorisation,
    metadata,
    robustness,
)

FAMILIES: dict[str, ModuleType] = {
    "accuracy": accuracy,  # generations in the language, per cut and temperature
    "distribution": distribution,  # next-token KL and sequence KL to the exact distribution
    "loss_floor": loss_floor,  # a perfect model's training loss
    "diversity": diversity,  # distinct strings, entropy, reverse KL, subtree yields
    "robustness": robustness,  # completions of corrupted prompts (eval.corrupt)
    "memorisation": memorisation,  # generations and test strings seen in training, novelty
    "composition": composition,  # held-out rule combinations (eval.compositions, data.exclude)
    "metadata": metadata,  # prompts that name the tree's top rules (data.metadata, eval.metadata)
    "in_context": in_context,  # grammars learned in context (data.in_context): loss by k
}
