"""`make demo-seeds`: the demo once per seed (0, 1, 2), each into its own outputs folder, and the worst seed beside
every target: the demo's claims hold for every seed, not for one lucky run.

Each seed's demo (`pipeline.demo.demo.run_demo`) goes to `<outputs>/demo_seeds/seed-N/` with `seed=N` given to
every stage (data set, training, sampling); a rerun resumes what is unfinished. `<outputs>/demo_seeds.json` holds one
record per seed (`record`) and is rewritten after each seed.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.demo.demo import run_demo
from pipeline.evaluate.model_checks import LEVEL_TOLERANCE_DB
from pipeline.files.writes import save_json

SEEDS = (0, 1, 2)


def record(seed: int, metrics: Mapping[str, Any], took: Mapping[str, Any]) -> dict[str, Any]:
    """One seed's figures from its metrics.json (the evaluate stage's) and its timings."""
    sync = metrics.get("synchrony") or {}
    codebook, vocoder = metrics.get("codebook") or {}, metrics.get("vocoder") or {}
    rows = [r for r in metrics.get("targets") or [] if r["met"] is not None]
    return {
        "seed": seed,
        "class_match": metrics.get("class_match_rate"),
        "class_match_shuffled": metrics.get("shuffled_class_match_rate"),
        "samples": metrics.get("num_fakes"),
        "synchrony": (sync.get("samples") or {}).get("rate"),
        "synchrony_shuffled": (sync.get("shuffled") or {}).get("rate"),
        "classifier_top1": metrics.get("real_class_match_rate"),
        "codebook_l1_ratio": codebook.get("l1_ratio"),
        "codes_used": codebook.get("codes_used"),
        "codes_used_share": codebook.get("codes_used_share"),
        "codebook_gan_steps": codebook.get("gan_steps"),
        "vocoder_identified": vocoder.get("identified_share"),
        "vocoder_level_db": vocoder.get("level_db"),
        "targets_met": bool(rows) and all(r["met"] for r in rows),
        "targets_missed": [r["measure"] for r in rows if not r["met"]],
        "wall_s": round(took["wall_s"], 1), "cpu_s": round(took["cpu_s"], 1),
        "load": [round(v, 2) for v in took.get("load", [])],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return math.inf if b == 0 else a / b


@dataclass(frozen=True)
class Target:
    """A demo target on one record: its value, whether it is met, and which value is worse (lower or higher)."""

    measure: str
    target: str
    value: Callable[[Mapping[str, Any]], float | None]
    met: Callable[[float], bool]
    higher_is_better: bool = True


TARGETS = (
    Target("class match of generated samples", ">= 0.9", lambda r: r["class_match"], lambda v: v >= 0.9),
    Target("class match / its shuffled baseline", ">= 2", lambda r: _ratio(r["class_match"], r["class_match_shuffled"]),
           lambda v: v >= 2),
    Target("synchrony", ">= 0.7", lambda r: r["synchrony"], lambda v: v >= 0.7),
    Target("synchrony / its shuffled baseline", ">= 2", lambda r: _ratio(r["synchrony"], r["synchrony_shuffled"]),
           lambda v: v >= 2),
    Target("classifier top-1 on the real clips", ">= 0.95", lambda r: r["classifier_top1"], lambda v: v >= 0.95),
    Target("codebook L1 / the mean spectrogram's", "<= 0.5", lambda r: r["codebook_l1_ratio"], lambda v: v <= 0.5,
           higher_is_better=False),
    Target("codebook codes used (share)", ">= 0.5", lambda r: r["codes_used_share"], lambda v: v >= 0.5),
    Target("codebook steps with its GAN on", "> 0", lambda r: r["codebook_gan_steps"], lambda v: v > 0),
    Target("vocoder: clips nearest their own mel", "all (1.0)", lambda r: r["vocoder_identified"],
           lambda v: v == 1.0),
    Target("vocoder level against the real audio (|dB|)", f"<= {LEVEL_TOLERANCE_DB:g}",
           lambda r: None if r["vocoder_level_db"] is None else abs(r["vocoder_level_db"]),
           lambda v: v <= LEVEL_TOLERANCE_DB, higher_is_better=False),
)


def worst_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Each target with every seed's value and the worst seed's; `met` is the worst seed's."""
    def fmt(v) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    head = ("measure", "target", "worst (seed)", *(f"seed {r['seed']}" for r in records), "met")
    table = [head]
    for t in TARGETS:
        values = [t.value(r) for r in records]
        known = [(v, r["seed"]) for v, r in zip(values, records) if v is not None]
        if len(known) < len(records):
            table.append((t.measure, t.target, "missing", *map(fmt, values), "NO"))
            continue
        worst, seed = (min if t.higher_is_better else max)(known, key=lambda pair: pair[0])
        table.append((t.measure, t.target, f"{fmt(worst)} ({seed})", *map(fmt, values),
                      "yes" if t.met(worst) else "NO"))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def run_seed(seed: int, out: Path) -> dict[str, Any]:
    """One seed's demo into `out`: its metrics.json and timings (the one place that says how a seed runs)."""
    return run_demo(out, seed)


def main(seeds: Sequence[int] = SEEDS) -> list[dict[str, Any]]:
    outputs = Path(os.environ.get("SPECVQGAN_OUTPUTS", "outputs"))
    records = []
    for seed in seeds:
        print(f"\n[demo-seeds] seed {seed} -> {outputs / 'demo_seeds' / f'seed-{seed}'}", flush=True)
        result = run_seed(seed, outputs / "demo_seeds" / f"seed-{seed}")
        records.append(record(seed, result["metrics"], result))
        save_json(outputs / "demo_seeds.json", records)
    print(f"\n[demo-seeds] {len(records)} seeds ({outputs / 'demo_seeds.json'}); the worst seed beside each target:")
    print(worst_table(records))
    met = all(t.value(r) is not None and t.met(t.value(r)) for t in TARGETS for r in records)
    print(f"[demo-seeds] every target met by every seed: {'yes' if met else 'NO'}")
    return records


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or SEEDS)
