"""Run benchmarks: `python -m benchmarks` (all) or `python -m benchmarks NAME [NAME ...]`.

Each `benchmarks/bench_NAME.py` has a `main() -> None` that prints its own table. Targets are
ratios against a reference measured in the same run, so they hold on any machine; they are
printed, never asserted (the tests assert correctness, not speed).
"""

import importlib
import pkgutil
import sys
import time

import benchmarks


def available() -> list[str]:
    return sorted(
        m.name[len("bench_") :]
        for m in pkgutil.iter_modules(benchmarks.__path__)
        if m.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(
            f"benchmarks: error: unknown benchmark {', '.join(unknown)}; "
            f"choose from {', '.join(available())}",
            file=sys.stderr,
        )
        return 2
    for name in names:
        print(f"== benchmark {name}")
        t0 = time.perf_counter()
        importlib.import_module(f"benchmarks.bench_{name}").main()
        print(f"== {name} done in {time.perf_counter() - t0:.1f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
