"""`make bench`: run every benchmark module in this package (each has a `main()` that prints its ratios).

`python -m pipeline.bench NAME ...` runs only the named ones; those in ON_REQUEST (`gpu`: `make bench-gpu`) run
only when named. A module's `main()` may return a few headline
lines (a list of str); they are repeated in the summary at the end, with each module's wall time. The torch
thread count is restored after each module, so one module's setting does not leak into the next.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path

import pipeline.bench as package

ON_REQUEST = ("gpu",)  # not in the default run: needs hardware the default machine lacks
# BENCH_QUICK=1 (`make bench QUICK=1`): only the sampling benchmarks, each in its shorter form (its docstring)
QUICK = ("transformer_sampling", "evaluation_workload", "trained_fast_paths")


def _found() -> list[str]:
    """The benchmark modules: those that define `main()` (the others are their shared helpers)."""
    folder = Path(package.__path__[0])
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                  if not m.name.startswith("_") and "\ndef main(" in (folder / f"{m.name}.py").read_text())


def default_names() -> list[str]:
    """The benchmarks `make bench` runs: every module but ON_REQUEST's (QUICK's alone with BENCH_QUICK)."""
    if os.environ.get("BENCH_QUICK", "") not in ("", "0"):
        return [name for name in _found() if name in QUICK]
    return [name for name in _found() if name not in ON_REQUEST]


def main(names: list[str]) -> None:
    import torch

    found = _found()
    unknown = set(names) - set(found)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; available: {found}")
    threads = torch.get_num_threads()
    print(f"{threads} torch thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: spinning)')}")
    if not names and os.environ.get("BENCH_QUICK", "") not in ("", "0"):
        print(f"BENCH_QUICK: only {', '.join(QUICK)}, in their shorter forms; skipped: "
              f"{', '.join(n for n in found if n not in QUICK and n not in ON_REQUEST)}")
    results: list[tuple[str, float, list[str]]] = []
    total = time.perf_counter()
    for name in names or default_names():
        print(f"\n=== benchmark: {name} ===", flush=True)
        start = time.perf_counter()
        try:
            headlines = importlib.import_module(f"pipeline.bench.{name}").main()
        except Exception as e:  # noqa: BLE001 - one broken benchmark should not hide the others' numbers
            headlines = [f"FAILED: {type(e).__name__}: {e}"]
            print(headlines[0], flush=True)
        finally:
            torch.set_num_threads(threads)
        seconds = time.perf_counter() - start
        results.append((name, seconds, [h for h in headlines or [] if isinstance(h, str)]))
        print(f"=== {name} took {seconds:.1f} s ===", flush=True)
    print(f"\n=== summary: {time.perf_counter() - total:.0f} s in all; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs ===")
    for name, seconds, headlines in results:
        print(f"{name:>22}: {seconds:6.1f} s" + "".join(f"\n{'':>24}{h}" for h in headlines))
    if any(h.startswith("FAILED") for _, _, hs in results for h in hs):
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
