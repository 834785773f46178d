"""`make demo-seeds`: the demo once per seed (0, 1, 2), each in an outputs folder of its own, and the worst seed beside
every target: the demo's claims hold for every seed, not for one lucky run.

Seed N is `make demo` with `seed=N` given to every stage, the data set's generator included (its clips, events and
the folder's hash split are drawn anew), under `<outputs>/demo_seeds/seed-N/`; a rerun resumes what is unfinished.
`<outputs>/demo_seeds.json` holds one record per seed (`record`) and is rewritten after each seed. The targets and
their thresholds are the evaluate stage's (`pipeline.evaluate.model_checks.targets`): this module only finds the
worst seed of each.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.chain.chain import run_chain
from pipeline.config.presets import compose_stage
from pipeline.demo import make_demo_data
from pipeline.demo.chain import demo_request
from pipeline.files.writes import save_json

SEEDS = (0, 1, 2)


def record(seed: int, metrics: Mapping[str, Any], took: Mapping[str, Any]) -> dict[str, Any]:
    """One seed's figures from its metrics.json (the evaluate stage's) and its timings."""
    sync = metrics.get("synchrony") or {}
    codebook, vocoder = metrics.get("codebook") or {}, metrics.get("vocoder") or {}
    l1, mean_l1 = codebook.get("l1"), codebook.get("mean_spectrogram_l1")
    rows = [r for r in metrics.get("targets") or [] if r["met"] is not None]
    return {
        "seed": seed,
        "class_match": metrics.get("class_match_rate"),
        "class_match_shuffled": metrics.get("shuffled_class_match_rate"),
        "samples": metrics.get("num_fakes"),
        "synchrony": (sync.get("samples") or {}).get("rate"),
        "synchrony_shuffled": (sync.get("shuffled") or {}).get("rate"),
        "classifier_top1": metrics.get("real_class_match_rate"),
        "codebook_l1_ratio": None if l1 is None or not mean_l1 else l1 / mean_l1,
        "codes_used": codebook.get("codes_used"),
        "codes_used_share": codebook.get("codes_used_share"),
        "vocoder_identified": vocoder.get("identified_share"),
        "vocoder_level_db": vocoder.get("level_db"),
        "targets": [{k: r[k] for k in ("key", "measure", "value", "target", "met", "better")}
                    for r in metrics.get("targets") or []],
        "targets_met": bool(rows) and all(r["met"] for r in rows),
        "targets_missed": [r["measure"] for r in rows if not r["met"]],
        **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in took.items()},
    }


def _badness(row: Mapping[str, Any]) -> tuple:
    """Sort key: a missed target first, then the value furthest in the wrong direction."""
    value = row["value"]
    if value is None:
        return (2, 0.0)
    direction = {"higher": -float(value), "lower": float(value), "nearer 0": abs(float(value))}[row["better"]]
    return (1 if row["met"] is False else 0, direction)


def worst_table(records: Sequence[Mapping[str, Any]]) -> tuple[str, bool]:
    """Each target (those with a verdict) with every seed's value and the worst seed's; met when every seed met it.
    Returns the table and whether every target was met by every seed."""
    def fmt(v) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    keys: list[str] = []
    for r in records:
        keys += [t["key"] for t in r["targets"] if t["met"] is not None and t["key"] not in keys]
    head = ("target", "wanted", "worst (seed)", *(f"seed {r['seed']}" for r in records), "met by every seed")
    table, all_met = [head], bool(keys)
    for key in keys:
        rows = [next((t for t in r["targets"] if t["key"] == key), None) for r in records]
        known = [(row, r["seed"]) for row, r in zip(rows, records) if row is not None and row["met"] is not None]
        met = len(known) == len(records) and all(row["met"] for row, _ in known)
        all_met &= met
        worst, seed = max(known, key=lambda pair: _badness(pair[0])) if known else (None, None)
        label = next(row for row in rows if row is not None)
        table.append((label["key"], label["target"], f"{fmt(worst['value'])} ({seed})" if worst else "missing",
                      *(fmt(row["value"]) if row else "missing" for row in rows), "yes" if met else "NO"))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table), all_met


def run_seed(seed: int, outputs: Path) -> dict[str, Any]:
    """`make demo` for one seed under `outputs` (its data set, chain, metrics.json); its record."""
    overrides = [f"paths.outputs={outputs}", f"seed={seed}"]
    tic, cpu = time.perf_counter(), _cpu_seconds()
    make_demo_data.run(compose_stage("make_demo_data", overrides))
    result = run_chain(demo_request(overrides))
    took = {"wall_s": time.perf_counter() - tic, "cpu_s": _cpu_seconds() - cpu, "load": list(os.getloadavg()),
            "run_dir": str(result["run_dir"])}
    return record(seed, result.get("metrics") or {}, took)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(seeds: Sequence[int] = SEEDS) -> bool:
    """Every seed's demo, demo_seeds.json, the worst-seed table; whether every target held for every seed."""
    outputs = Path(compose_stage("make_demo_data").paths.outputs).absolute()
    records = []
    for seed in seeds:
        out = outputs / "demo_seeds" / f"seed-{seed}"
        print(f"\n[demo-seeds] seed {seed} -> {out}", flush=True)
        records.append(run_seed(seed, out))
        save_json(outputs / "demo_seeds.json", records)
    table, met = worst_table(records)
    print(f"\n[demo-seeds] {len(records)} seeds ({outputs / 'demo_seeds.json'}); the worst seed beside each target:")
    print(table)
    print(f"[demo-seeds] every target met by every seed: {'yes' if met else 'NO'}")
    return met


if __name__ == "__main__":
    sys.exit(0 if main([int(s) for s in sys.argv[1:]] or SEEDS) else 1)
