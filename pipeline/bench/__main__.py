"""`make bench`: run every benchmark module in this package (each has a `main()` that prints its ratios).

`python -m pipeline.bench NAME ...` runs only the named ones.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import pipeline.bench as package


def main(names: list[str]) -> None:
    found = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
    unknown = set(names) - set(found)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; available: {found}")
    for name in names or found:
        print(f"\n=== benchmark: {name} ===", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"pipeline.bench.{name}").main()
        print(f"=== {name} took {time.perf_counter() - start:.1f} s ===", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
