"""`make demo`: the whole pipeline on a generated data set, on CPU, in minutes.

Each step is a real stage run as `python -m stages.NAME key=value ...` (exactly what a user types), chained
through the paths the configs derive. Outputs go under `outputs/` (or `SPECVQGAN_OUTPUTS`); a rerun skips what
is finished (extraction stages skip written clips, training stages resume from their last checkpoint).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("SPECVQGAN_OUTPUTS", "outputs"))
DATA = "dataset=demo"


def steps() -> list[tuple[str, list[str]]]:
    return [
        ("make_demo_data", []),
        ("extract_mels", [DATA, "chain=direct", "split=null"]),
    ]


def run(stage: str, args: list[str]) -> None:
    cmd = [sys.executable, "-m", f"stages.{stage}", *args]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise SystemExit(f"demo step {stage} failed (exit {result.returncode}); its run folder under {OUT}/"
                         f"{stage}/ has the log. Rerun `make demo` to resume after fixing the cause.")
    print(f"[demo] {stage} done in {time.perf_counter() - start:.1f} s", flush=True)


def main() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    start = time.perf_counter()
    for stage, args in steps():
        run(stage, args)
    print(f"\n[demo] finished in {time.perf_counter() - start:.0f} s. Outputs under {OUT.resolve()}:")
    for path in sorted(OUT.glob("*")):
        print(f"  {path}")


if __name__ == "__main__":
    main()
