"""Generation accuracy: are the model's generations in the language? (stage 6a, metric family)

The model completes prompts (cutC: BOS + the first C tokens of a fresh true string; cut0: BOS
alone) at each temperature; a generation is correct iff prompt + completion, up to its first
EOS, is in the language by exact CYK recognition (cfglab.exact.cyk). Reported per (cut,
temperature) with Wilson and Clopper-Pearson intervals, and where wrong generations first go
wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from cfglab.data.vocab import BOS
from cfglab.evaluate.context import EvalContext
from cfglab.evaluate.stats import clopper_pearson_interval, wilson_interval
from cfglab.grammar.cfg import Grammar

DEFINITIONS: dict[str, str] = {
    "accuracy": (
        "share of generated strings (prompt + completion, up to the first EOS, EOS excluded) that"
        " are in the grammar's language, by exact CYK recognition; a generation that never emits "
        "EOS within the token budget, or emits a special token (BOS/MASK/PAD) before EOS, is "
        "wrong. cutC: the prompt is BOS + the first C tokens of a fresh true sample (samples no "
        "longer than C are redrawn); cut0 = BOS only."
    ),
    "accuracy_ci": (
        "95% confidence interval of the accuracy: Wilson score interval (Clopper-Pearson exact "
        "interval also stored) over the n generations, treated as independent Bernoulli trials."
    ),
    "first_error": (
        "for a wrong generation, the 0-based index (in the whole string, prompt included) of the "
        "first token after which the string is no longer a prefix of any sentence; a premature "
        "EOS counts as a token at index len(string); generations that stop without EOS while "
        "still viable are counted as 'unfinished'."
    ),
}


@dataclass
class AccuracyResult:
    """Generation accuracy for one (cut, temperature); see DEFINITIONS['accuracy']."""

    cut: int
    temperature: float
    n: int
    n_correct: int
    accuracy: float
    ci_low: float  # Wilson, 95%
    ci_high: float
    cp_low: float  # Clopper-Pearson, 95%
    cp_high: float
    n_unfinished: int  # no EOS within the budget, still a viable prefix
    n_bad_token: int  # a special token (BOS/MASK/PAD) before EOS
    first_error: list[int] = field(default_factory=list)  # per wrong generation, -1 = unfinished
    lengths: list[int] = field(default_factory=list)  # generated string lengths (prompt included)

    def to_dict(self) -> dict:
        return asdict(self)


def split_generation(seq: np.ndarray, n_terminals: int) -> tuple[np.ndarray, bool, int]:
    """A generated sequence (BOS + prompt + completion [+ EOS ...]) -> (string, ended, bad_at).

    string: the terminal ids before the first EOS (BOS dropped); ended: an EOS was produced;
    bad_at: index in `string` of the first special token (not 1..T) before EOS, or -1.
    """
    seq = np.asarray(seq, dtype=np.int64)
    if len(seq) and seq[0] == BOS:
        seq = seq[1:]
    eos = n_terminals + 1
    where = np.flatnonzero(seq == eos)
    ended = len(where) > 0
    string = seq[: where[0]] if ended else seq
    bad = np.flatnonzero((string < 1) | (string > n_terminals))
    return string, ended, int(bad[0]) if len(bad) else -1


def judge_generations(
    grammar: Grammar, sequences: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Judge generated sequences exactly: (correct, first_error, strings, ended, bad_token).

    first_error[i]: -1 if correct or unfinished-but-viable; else the index defined in
    DEFINITIONS['first_error'].
    """
    from cfglab.exact import cyk

    t = grammar.n_t
    parts = [split_generation(s, t) for s in sequences]
    strings = [p[0] for p in parts]
    ended = np.array([p[1] for p in parts], dtype=bool)
    bad_at = np.array([p[2] for p in parts], dtype=np.int64)
    # judge only the clean part: the tokens before any special token
    clean = [s if b < 0 else s[:b] for s, b in zip(strings, bad_at, strict=True)]
    n = len(clean)
    in_lang = np.zeros(n, dtype=bool)
    first_err = np.full(n, -1, dtype=np.int64)
    if n:
        in_lang = np.asarray(cyk.recognize(grammar, clean), dtype=bool)
        first_err = np.asarray(cyk.first_error(grammar, clean), dtype=np.int64).copy()
    correct = in_lang & ended & (bad_at < 0)
    for i in range(n):
        if correct[i] or first_err[i] >= 0:
            continue
        # every prefix of the clean part is viable: the error is the special token, the premature
        # EOS (both sit at index len(clean)), or there is none yet (unfinished)
        if bad_at[i] >= 0 or ended[i]:
            first_err[i] = len(clean[i])
    first_err[correct] = -1
    return correct, first_err, strings, ended, bad_at >= 0


def accuracy_from_judgements(
    correct: np.ndarray,
    *,
    cut: int = 0,
    temperature: float = 1.0,
    first_error: np.ndarray | None = None,
    ended: np.ndarray | None = None,
    bad_token: np.ndarray | None = None,
    lengths: Sequence[int] = (),
    conf: float = 0.95,
) -> AccuracyResult:
    """Accuracy with its Wilson and Clopper-Pearson intervals from per-generation verdicts."""
    correct = np.asarray(correct, dtype=bool)
    n, k = len(correct), int(correct.sum())
    lo, hi = wilson_interval(k, n, conf)
    cp_lo, cp_hi = clopper_pearson_interval(k, n, conf)
    wrong = ~correct
    fe = first_error if first_error is not None else np.full(n, -1)
    unfinished = wrong & (fe < 0)
    return AccuracyResult(
        cut=cut,
        temperature=temperature,
        n=n,
        n_correct=k,
        accuracy=k / n if n else float("nan"),
        ci_low=lo,
        ci_high=hi,
        cp_low=cp_lo,
        cp_high=cp_hi,
        n_unfinished=int(unfinished.sum()),
        n_bad_token=int(np.asarray(bad_token).sum()) if bad_token is not None else 0,
        first_error=[int(x) for x in np.asarray(fe)[wrong]],
        lengths=[int(x) for x in lengths],
    )


def judge_accuracy(
    grammar: Grammar, sequences: Sequence[np.ndarray], *, cut: int = 0, temperature: float = 1.0
):
    """Judge generated sequences and score them: (AccuracyResult, judge_generations' tuple
    (correct, first_error, strings, ended, bad_token))."""
    judged = judge_generations(grammar, sequences)
    correct, first_err, strings, ended, bad = judged
    res = accuracy_from_judgements(
        correct,
        cut=cut,
        temperature=temperature,
        first_error=first_err,
        ended=ended,
        bad_token=bad,
        lengths=[len(s) for s in strings],
    )
    return res, judged


def judged_generations(ctx: EvalContext, cut: int, t_index: int):
    """The generations at (cut, temperature index), generated and judged once per context:
    judge_accuracy's (AccuracyResult, judged tuple)."""
    key = (cut, t_index)
    if key not in ctx.judged:
        temperature = ctx.settings.temperatures[t_index]
        seqs = ctx.generate(
            temperature, ctx.prompts(ctx.n, cut), ctx.rng("eval_generate", t_index, cut)
        )
        ctx.judged[key] = ctx.exact(
            judge_accuracy, ctx.grammar, seqs, cut=cut, temperature=temperature
        )
    return ctx.judged[key]


def measure(ctx: EvalContext) -> list[dict]:
    """AccuracyResult per (temperature, cut), temperatures outermost."""
    return [
        judged_generations(ctx, cut, ti)[0].to_dict()
        for ti in range(len(ctx.settings.temperatures))
        for cut in ctx.settings.cuts
    ]


def summary_rows(result: list[dict]) -> list[dict]:
    return [
        {
            "metric": "accuracy",
            "cut": a["cut"],
            "temperature": a["temperature"],
            "value": a["accuracy"],
            "ci_low": a["ci_low"],
            "ci_high": a["ci_high"],
            "n": a["n"],
        }
        for a in result
    ]
