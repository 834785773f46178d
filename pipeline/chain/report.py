"""What a chain run made, printed: the skipped files with their reasons, the models, the samples, metrics.json,
report.html and the table of targets (each beside its baseline)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.chain.graph import ChainSpec, Graph
from pipeline.chain.steps import data_dir, samples_dir
from pipeline.evaluate.model_checks import format_targets
from pipeline.runs.folders import checkpoint_dir


def summary(graph: Graph, spec: ChainSpec) -> dict[str, Any]:
    """Print what the chain made (skipped files, models, samples, the report) and the table of targets."""
    skipped_file = Path(spec.cfg["dataset"]["skipped"])
    skipped = json.loads(skipped_file.read_text())["skipped"] if skipped_file.is_file() else []
    print(f"\n[chain] {len(skipped)} file(s) skipped (all reasons in {skipped_file}):")
    for row in skipped:
        print(f"  {row['file']}{' (' + row['clip'] + ')' if row.get('clip') else ''}: {row['reason']}")
    print(f"[chain] results of {spec.run_dir}:\n  data (index, splits, mels, features): {data_dir(spec)}")
    for step in graph:
        for path in sorted(checkpoint_dir(step.run_dir).glob("*.pt")):
            print(f"  {step.name}: {path}")
    out: dict[str, Any] = {"run_dir": spec.run_dir, "skipped": skipped}
    samples = samples_dir(spec)
    if not graph["evaluate"].done():
        print("  no evaluation yet")
        return out
    metrics = json.loads((samples / "metrics.json").read_text())
    print(f"  samples: {samples}\n  metrics: {samples / 'metrics.json'}\n  report:  {samples / 'report.html'}")
    print(f"\n[chain] targets, each beside its baseline from this run (report: {samples / 'report.html'}):")
    print(format_targets(metrics.get("targets") or []))
    out.update({"metrics": metrics, "samples": samples, "report": samples / "report.html"})
    return out
