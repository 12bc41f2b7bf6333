"""Languages beyond context-free grammars, with exact ground truth: the protocol and its registry.

A language stands beside a `Grammar` (stage 1, "what"; no torch): it samples strings with
structure labels, and it answers the exact questions cfglab.exact answers for a grammar, under
its own sampling distribution. Built-ins, one module and one `LANGUAGES` line each:

    anbncn         aⁿbⁿcⁿ, n ~ CountPmf(n_min, n_max, ratio)            (anbncn.py)
    copy           ww over `alphabet` letters, |w| ~ CountPmf(...)       (copy.py)
    cross_serial   aⁿbᵐcⁿdᵐ, n and m independent CountPmfs               (cross_serial.py)

A spec names one with its parameters; `load_language` reads it, `lang.spec` writes it::

    lang = load_language("anbncn n_max=10 ratio=0.9")
    batch = lang.sample(1000, seed=0)                  # LanguageBatch: ids, offsets, labels
    ok, err = lang.judge(batch.strings())              # as cfglab.exact.cyk.judge(g, strings)
    rows = lang.next_token_dist(batch.strings())       # as cfglab.exact.inside.next_token_dist

## The protocol (cfglab.languages.base.Language)
Grammar facts: `name`, `terminals` (token id j is terminals[j-1]; cfglab.data.vocab's layout,
so `Vocab.from_grammar(lang)` works: BOS 0, EOS T+1, MASK T+2, PAD T+3), `n_t`, `mean_length`,
`length_sd`, `levels` (None: no tree levels), `to_text()` (the run file's text), equality by
parameters. Sampling: `sample(n, seed, *, max_len=None, labels=True)` and `sample_parts` (the
same strings in parts of bounded memory), the grammar sampler's signatures; labels per token in
`batch.labels` ("block", "offset", "dependent", each (N_total,) int64; LanguageBatch's
docstring), class counts in `label_classes`. Exact, the same names and return shapes as
cfglab.exact's functions with the grammar argument dropped: `judge`, `recognize`,
`first_error`, `log_prob`, `log_prefix_prob`, `next_token_dist`, `log_prob_and_next`, and
`parse` (per sentence, its labels). Membership is the formal language (any count);
probabilities are the sampling distribution's (zero past the counts it draws).
cfglab.languages.adapters: the oracle as an evaluation model (LogProbFn).

## How the languages plug into the rest (design note; those modules are not changed here)
What reads a grammar, and what each needs from a language so the stage runs unchanged:
- Loading and the run record: `GrammarConfig.load` (config/schema.py) and the CLI's
  `grammar.load(name)` take a name; rundir.write_run_record writes `grammar.to_text()` to
  grammar.cfg and read_run_grammar parses it back with Grammar.from_text; record_changes
  compares by `==`. Needs: a spec accepted wherever a grammar name is (`load_language` when
  the first word is in LANGUAGES) and `%language` text read back by `load_language`.
- Data (data/dataset.py, evaluate/context.py, analyze/context.py, stages/analysis.py, cli
  `sample`): everything draws through `data.sampler.sample(grammar, n, seed, max_len=,
  labels=)` / `sample_parts`, then uses the batch's ids, offsets, lengths, strings();
  dataset.py sizes its draws with `grammar.mean_length`. Needs: `lang.sample` and
  `lang.sample_parts` (same signatures) behind one dispatch in sample / sample_parts. CFG
  only: the physicslm4 sampler, rule noise (data/noise.py), saved datasets' tree labels.
- Exact (evaluate accuracy, distribution, loss_floor, diversity's log P; train/steps.py's
  noise check; cli `parse` and `prob --next`): cyk.judge / recognize / first_error and
  inside.log_prob / next_token_dist / log_prob_and_next. Needs: the same-named methods behind
  one dispatch per function. CFG only: cyk.parse / count_parses / min_substitutions,
  exact.posterior (probe ceilings), exact.repair (robustness references), exact.language.
- Evaluate: accuracy, distribution (but kl_by_level, which groups rows by tree_labels' ends:
  for a language, group by the "block" label), loss_floor run with the two dispatches;
  diversity's subtree part and robustness are CFG only (skip / refuse at check time).
- Analyze: probe targets come from data.tree.tree_labels (ancestors, boundaries, NT ends) and
  attention statistics from the same; for a language, targets from `batch.labels` ("block",
  "offset": `label_classes` classes) and an attention score on "dependent" (does a head attend
  from each token to the token it must agree with). Embedding bags read rules: CFG only.
- Train (loop.py, steps.py), dynamics and compare: only through the above (Vocab, sampling,
  the exact dispatch, the families' rows); report and compare render rows, so nothing else.
"""

from __future__ import annotations

from dataclasses import fields

from cfglab.errors import GrammarError, did_you_mean
from cfglab.languages.anbncn import AnBnCn
from cfglab.languages.base import TEXT_PREFIX, Language, LanguageBatch
from cfglab.languages.copy import Copy
from cfglab.languages.cross_serial import CrossSerial

LANGUAGES: dict[str, type[Language]] = {
    "anbncn": AnBnCn,
    "copy": Copy,
    "cross_serial": CrossSerial,
}

__all__ = ["LANGUAGES", "Language", "LanguageBatch", "is_language_spec", "load_language"]


def _value(text: str) -> int | float:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise ValueError(text)


def is_language_spec(text: str) -> bool:
    """The text names a language (its first word is a LANGUAGES name, or it is a run file's
    `%language ...` text), not a grammar."""
    words = text.split()
    if words and words[0] == TEXT_PREFIX:
        words = words[1:]
    return bool(words) and words[0] in LANGUAGES


def load_language(spec: str) -> Language:
    """The language of a spec 'name key=value ...' (or a run file's '%language name ...'):
    e.g. 'copy alphabet=3 m_max=10'. GrammarError names an unknown language or parameter."""
    words = spec.split()
    if words and words[0] == TEXT_PREFIX:
        words = words[1:]
    if not words or words[0] not in LANGUAGES:
        name = words[0] if words else ""
        raise GrammarError(
            f"unknown language {name!r}{did_you_mean(name, LANGUAGES)}; choose from "
            f"{', '.join(LANGUAGES)} (a spec is 'name key=value ...')"
        )
    cls = LANGUAGES[words[0]]
    known = [f.name for f in fields(cls)]
    params: dict[str, int | float] = {}
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq or key not in known:
            raise GrammarError(
                f"language {words[0]}: {word!r} is not a parameter{did_you_mean(key, known)}; "
                f"give key=value with key one of {', '.join(known)}"
            )
        try:
            params[key] = _value(value)
        except ValueError:
            raise GrammarError(
                f"language {words[0]}: {key}={value!r} is not a number; give e.g. {key}=10"
            ) from None
    return cls(**params)
