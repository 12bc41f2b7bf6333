"""Membership speed: cfglab's recognizer vs NLTK's chart parser, lark's Earley parser and a
vectorised-NumPy CYK, on the same valid and corrupted cfg3f / cfg3k strings.

`python -m benchmarks parse`. cfglab runs on every string (200 cfg3f, 50 cfg3k; half of them
single-token corruptions); the references, 50-1000x slower, run on a fixed subset of those
strings, and every ratio compares the same strings. All verdicts must agree.

Then the commands end to end: `cfglab parse cfg3f FILE` and `cfglab prob cfg3f FILE --next`
on 3,000 sampled cfg3f strings, each as a fresh process (Python, NumPy and Numba start-up,
loading the compiled kernels, reading, the sweeps, writing the output to a file, exit), best of
3 runs after one warm-up run that fills Numba's on-disk cache (`cache=True`: the first run ever
compiles for ~10-20 s). Their per-string time (total / 3,000) is compared with NLTK's parse
time per string on the first 20 of the same strings, measured in the same run; the start-up
is printed apart (the command on an empty file and on a one-line file). Goal: >= 300x NLTK.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cfglab.data.sampler import sample
from cfglab.exact import cyk, inside
from cfglab.exact.normal_form import normal_form
from cfglab.grammar.builtin import load
from cfglab.grammar.cfg import Grammar

# grammar -> (valid strings, corrupted strings, reference subset size, numpy subset size)
SETUP = {"cfg3f": (100, 100, 20, 4), "cfg3k": (25, 25, 6, 2)}


def corrupted(strings: list[np.ndarray], n_t: int, seed: int) -> list[np.ndarray]:
    """One token of each string replaced by a different terminal."""
    rng = np.random.default_rng(seed)
    out = []
    for x in strings:
        y = x.copy()
        pos = rng.integers(len(y))
        y[pos] = (y[pos] - 1 + rng.integers(1, n_t)) % n_t + 1
        out.append(y)
    return out


def bench_strings(name: str, n_valid: int, n_bad: int, seed: int = 0) -> list[np.ndarray]:
    """Valid and corrupted strings interleaved, so any prefix of the list is half and half."""
    g = load(name)
    valid = sample(g, n_valid, seed=seed, labels=False).strings()
    bad = corrupted(sample(g, n_bad, seed=seed + 1, labels=False).strings(), g.n_t, seed)
    return [s for pair in zip(valid, bad, strict=True) for s in pair]


def best_of(fn, repeat: int = 3) -> float:
    """Seconds of the fastest of `repeat` runs (the machine is shared; the minimum is the
    least disturbed)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# ---- references ----------------------------------------------------------------------------
def nltk_parser(g: Grammar):
    """NLTK's chart parser for g (built, and nltk imported, outside any timing: importing nltk
    takes ~0.6 s, 30 ms per string of a 20-string subset)."""
    import nltk

    return nltk.ChartParser(nltk.CFG.fromstring(g.to_text()))


def nltk_recognize(parser, g: Grammar, strings: list[np.ndarray]) -> np.ndarray:
    start = parser.grammar().start()
    res = []
    for x in strings:
        chart = parser.chart_parse([g.terminals[t - 1] for t in x])
        res.append(
            any(True for _ in chart.select(start=0, end=len(x), is_complete=True, lhs=start))
        )
    return np.array(res)


def lark_parser(g: Grammar):
    import lark

    def sym(s: int) -> str:
        return f'"{g.symbol_name(s)}"' if g.is_terminal(s) else f"n_{s}"

    lines = ["start: n_0"]
    for a, rs in enumerate(g.rules_of):
        alts = " | ".join(" ".join(sym(s) for s in g.rules[ri].rhs) for ri in rs)
        lines.append(f"n_{a}: {alts}")
    lines.append('%ignore " "')
    return lark.Lark("\n".join(lines), parser="earley", lexer="dynamic")


def lark_recognize(parser, g: Grammar, strings: list[np.ndarray]) -> np.ndarray:
    import lark

    res = []
    for x in strings:
        try:
            parser.parse(" ".join(g.terminals[t - 1] for t in x))
            res.append(True)
        except lark.exceptions.LarkError:
            res.append(False)
    return np.array(res)


def numpy_recognize(g: Grammar, strings: list[np.ndarray]) -> np.ndarray:
    """Plain CYK vectorised with NumPy over start positions and rules (the NumPy alternative
    to the compiled sweep): chart[L][i, A] = A derives x[i:i+L]. Grammars without unary
    rules (the cfg3 family)."""
    nf = normal_form(g)
    assert not nf.has_unary
    n_sym = nf.n_sym
    to_parent = np.zeros((len(nf.bin_p), n_sym))  # (R, N): rule -> its parent
    to_parent[np.arange(len(nf.bin_p)), nf.bin_parent] = 1.0
    res = []
    for x in strings:
        n = len(x)
        chart = {1: nf.lex[x] > 0}  # (n, N)
        for length in range(2, n + 1):
            m = n - length + 1
            hit = np.zeros((m, len(nf.bin_p)), bool)  # (m, R)
            for left in range(1, length):
                lhs = chart[left][:m][:, nf.bin_left]
                rhs = chart[length - left][left : left + m][:, nf.bin_right]
                hit |= lhs & rhs
            chart[length] = (hit.astype(np.float64) @ to_parent) > 0
        res.append(bool(chart[n][0, 0]))
    return np.array(res)


def main() -> None:
    print(
        "ms per string (best of 3 runs for cfglab); refs on the first K strings of the same "
        "list (half valid, half corrupted)"
    )
    print(
        f"{'grammar':8} {'strings':>8} {'cfglab':>9} {'K':>3} {'cfglab@K':>9} {'NLTK':>9} "
        f"{'lark':>9} {'NumPy':>9} {'xNLTK':>7} {'xlark':>7} {'xNumPy':>7}  agree"
    )
    for name, (n_valid, n_bad, k_ref, k_np) in SETUP.items():
        g = load(name)
        strings = bench_strings(name, n_valid, n_bad)
        cyk.recognize(g, strings[:2])  # compile / load the cache outside the timing
        ours = cyk.recognize(g, strings)
        t_all = best_of(lambda s=strings, g=g: cyk.recognize(g, s)) / len(strings)
        sub = strings[:k_ref]
        t_sub = best_of(lambda s=sub, g=g: cyk.recognize(g, s)) / len(sub)
        nltk = nltk_parser(g)
        t0 = time.perf_counter()
        nltk_res = nltk_recognize(nltk, g, sub)
        t_nltk = (time.perf_counter() - t0) / len(sub)
        parser = lark_parser(g)
        t0 = time.perf_counter()
        lark_res = lark_recognize(parser, g, sub)
        t_lark = (time.perf_counter() - t0) / len(sub)
        t0 = time.perf_counter()
        np_res = numpy_recognize(g, strings[:k_np])
        t_np = (time.perf_counter() - t0) / k_np
        t_sub_np = best_of(lambda s=strings[:k_np], g=g: cyk.recognize(g, s)) / k_np
        agree = (
            (nltk_res == ours[:k_ref]).all()
            and (lark_res == ours[:k_ref]).all()
            and (np_res == ours[:k_np]).all()
        )
        print(
            f"{name:8} {len(strings):>8} {t_all * 1e3:>9.3f} {k_ref:>3} {t_sub * 1e3:>9.3f} "
            f"{t_nltk * 1e3:>9.1f} {t_lark * 1e3:>9.1f} {t_np * 1e3:>9.1f} "
            f"{t_nltk / t_sub:>7.0f} {t_lark / t_sub:>7.0f} {t_np / t_sub_np:>7.0f}  "
            f"{'yes' if agree else 'NO'}  (accepted {ours.sum()} of {len(strings)}; "
            f"mean length {np.mean([len(s) for s in strings]):.0f})"
        )
    print("goal on cfg3f: >= 100x NLTK, >= 10x lark")
    bench_cli()


# ---- the commands end to end -------------------------------------------------------------
CLI_STRINGS = 3000  # cfg3f strings in the file the commands read
NLTK_K = 20  # of them, the first K parsed by NLTK: the per-string reference of the CLI rows


def run_command(args: list[str], out_path: Path) -> float:
    """Wall seconds of `python -m cfglab ARGS > out_path` as a fresh process: interpreter,
    imports, loading the compiled kernels from Numba's cache, reading, work, writing, exit."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    with open(out_path, "w") as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cfglab", *args], stdout=out, env=env, check=True)
        return time.perf_counter() - t0


def bench_cli(n: int = CLI_STRINGS, repeat: int = 3) -> None:
    """`cfglab parse cfg3f FILE` and `cfglab prob cfg3f FILE --next` on n sampled strings as
    fresh processes, start-up included, against NLTK's chart parser on the first NLTK_K of the
    same strings (NLTK has no next-token distribution: its parse time is the reference of both
    commands; it runs before and after the commands, the faster pass counts, as the best of
    `repeat` processes does for cfglab). Start-up = the command on an empty file (imports and
    Numba's set-up, no kernel loaded) and on a one-line file (and the kernel loads, one
    string); the rest = (all - one line) / (n - 1)."""
    g = load("cfg3f")
    strings = sample(g, n, seed=1, labels=False).strings()
    parser = nltk_parser(g)

    def nltk_pass() -> float:
        t0 = time.perf_counter()
        assert nltk_recognize(parser, g, strings[:NLTK_K]).all()
        return (time.perf_counter() - t0) / NLTK_K

    t_nltk = nltk_pass()
    lines = [" ".join(g.terminals[t - 1] for t in x) + "\n" for x in strings]
    # the library calls the commands make, in this process (kernels loaded before timing)
    cyk.judge(g, strings[:2])
    inside.next_token_dist(g, strings[:1])

    def prob_next() -> None:  # what the command computes: one sweep per string
        for _ in inside.log_prob_and_next(g, strings):
            pass

    commands = {
        "parse": (["parse", "cfg3f"], lambda: cyk.judge(g, strings), n + 1),
        "prob --next": (["prob", "cfg3f"], prob_next, None),
    }
    rows = []  # (command, wall seconds by file, library seconds per string)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"all": Path(tmp) / "all.txt", "one": Path(tmp) / "one.txt"}
        files["all"].write_text("".join(lines))
        files["one"].write_text(lines[0])
        (Path(tmp) / "empty.txt").write_text("")
        files["empty"] = Path(tmp) / "empty.txt"
        out = Path(tmp) / "out.txt"
        for name, (args, library, n_out) in commands.items():
            extra = ["--next"] if name == "prob --next" else []
            run_command([*args, str(files["all"]), *extra], out)  # warm-up
            t = {
                k: min(run_command([*args, str(f), *extra], out) for _ in range(repeat))
                for k, f in files.items()
            }
            run_command([*args, str(files["all"]), *extra], out)
            text = out.read_text()
            if n_out is not None:  # parse: one verdict per line, then the count
                assert text.count("\n") == n_out and text.endswith(f"accepted {n} of {n}\n")
            else:
                assert text.count("# line") == n
            rows.append((name, t, best_of(library) / n))
    t_nltk = min(t_nltk, nltk_pass())
    print(
        f"end to end on {n:,} cfg3f strings (mean length {np.mean([len(x) for x in strings]):.0f}"
        f"), output to a file, best of {repeat} processes after a warm-up that fills Numba's "
        f"cache; NLTK's chart parser on the first {NLTK_K} of the same strings: "
        f"{t_nltk * 1e3:.1f} ms per string (parse only: nltk imported and the parser built "
        "before timing; the faster of two passes)"
    )
    print(
        f"{'command':22} {'total s':>8} {'ms/str':>7} {'empty s':>8} {'1 line s':>8} "
        f"{'rest ms/str':>11} {'library ms/str':>14} {'xNLTK':>6}"
    )
    for name, t, t_lib in rows:
        print(
            f"cfglab {name:15} {t['all']:>8.2f} {t['all'] / n * 1e3:>7.3f} "
            f"{t['empty']:>8.2f} {t['one']:>8.2f} "
            f"{(t['all'] - t['one']) / (n - 1) * 1e3:>11.3f} {t_lib * 1e3:>14.3f} "
            f"{t_nltk / (t['all'] / n):>6.0f}"
        )
    print(
        "goal: both commands >= 300x NLTK per string, start-up included (prob --next against "
        "NLTK's parse time: NLTK has no next-token distribution)"
    )
