"""`make demo`: the whole pipeline on a generated data set, on CPU, in minutes.

Each step is a real stage run as `python -m stages.NAME key=value ...` (exactly what a user types), chained
through the paths the configs derive. Outputs go under `outputs/` (or `SPECVQGAN_OUTPUTS`); a rerun skips what
is finished (extraction stages skip written clips, training stages resume from their last checkpoint).
`run_demo(outputs, seed)` is one demo: every step gets `seed=N` (its run folders are named by it), the data set
too; `make demo-seeds` (`pipeline.demo.demo_seeds`) runs it for several seeds.
"""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf

from pipeline import CONF
from pipeline.evaluate.model_checks import format_targets
from pipeline.runs.folders import run_name

DATA = "dataset=demo"


class Demo:
    """The stages of one demo in `out` (`paths.outputs`), every one seeded by `seed` (None: the configs' seed,
    conf/base.yaml, and run folders without it)."""

    def __init__(self, out: str | Path, seed: int | None = None):
        self.out, self.seed = Path(out), seed

    def args(self, *overrides: str) -> list[str]:
        """A stage's overrides: the data set, these, and the seed."""
        return [DATA, *overrides, *([] if self.seed is None else [f"seed={self.seed}"])]

    def run_dir(self, stage: str, *overrides: str) -> Path:
        """The run folder `stage` derives from these overrides (conf/base.yaml's hydra.run.dir)."""
        return self.out / stage / "demo" / run_name(self.args(*overrides))

    def checkpoint(self, stage: str, *overrides: str, name: str = "best.pt") -> str:
        return str(self.run_dir(stage, *overrides) / "checkpoints" / name)

    def samples_per_clip(self) -> int:
        """Samples of each validation clip so that the class-match target counts over evaluate's `min_samples`."""
        wanted = int(OmegaConf.load(CONF / "evaluate.yaml").min_samples)
        split = self.out / "demo_data" / "demo_valid.txt"
        clips = [line for line in split.read_text().splitlines() if line.strip()]
        return max(1, math.ceil(wanted / max(len(clips), 1)))

    def split_sampling(self) -> list[str]:
        """The sample stage's overrides for the validation split: every valid clip, >= min_samples in all. The
        transformer is its last.pt, the end of its schedule (conf/transformer/tiny.yaml says why not best.pt)."""
        return [f"samples_per_clip={self.samples_per_clip()}", "batch_size=8",
                f"transformer.ckpt={self.checkpoint('train_transformer', name='last.pt')}"]

    def sample_dir(self, overrides: list[str]) -> Path:
        """The samples folder of a sample run with these overrides."""
        return self.run_dir("sample", *overrides) / "samples" / "valid"

    def steps(self) -> Iterator[tuple[str, list[str]]]:
        """The stages in data-flow order; each later one finds the earlier ones' outputs by derived paths.

        A generator: the sampling steps read the validation split that the first step writes.
        """
        codebook = f"codebook.ckpt={self.checkpoint('train_codebook')}"
        vocoder = f"vocoder.ckpt={self.checkpoint('train_vocoder')}"
        classifier = f"classifier.ckpt={self.checkpoint('train_classifier', 'classifier=melception_tiny')}"
        video = self.out / "demo_data" / "videos" / "00_chirp_circle" / "video_00004.mp4"
        codes = self.out / "codec" / "demo_clip.svqc"
        yield "make_demo_data", self.args()
        yield "extract_mels", self.args("chain=direct")
        yield "extract_features", self.args()                     # EfficientNet-Lite0: weights ship offline
        yield "train_codebook", self.args()                       # codebook=tiny via dataset=demo
        yield "train_vocoder", self.args()                        # vocoder=tiny
        yield "train_classifier", self.args("classifier=melception_tiny")
        yield "train_transformer", self.args(codebook)            # transformer=tiny, 53 frames: one per column
        split = self.split_sampling()
        shuffled = [*split, "condition_shuffle=true", "write_wav=false"]  # the baseline: other clips' pictures
        yield "sample", self.args(*split, vocoder)                # the valid split, vocoded with the tiny MelGAN
        yield "sample", self.args(*shuffled)
        yield "sample", self.args(f"video={video}", split[-1], vocoder)  # a "user" video -> wav + mp4
        yield "evaluate", self.args(classifier, f"samples_dir={self.sample_dir(split)}", codebook, vocoder,
                                    f"shuffled_samples_dir={self.sample_dir(shuffled)}")
        yield "codec", self.args("mode=encode", f"input={video}", f"output={codes}", codebook)
        yield "codec", self.args("mode=decode", f"input={codes}", f"output={codes.with_name('demo_clip_decoded.wav')}",
                                 codebook, vocoder)

    def metrics_file(self) -> Path:
        return self.sample_dir(self.split_sampling()) / "metrics.json"

    def report(self) -> None:
        """Where the demo's results are, and the targets table of the evaluation."""
        print(f"\n[demo] results under {self.out.resolve()}:")
        for pattern in ("demo_data", "train_*/demo/*/checkpoints", "sample/demo/*/samples/valid",
                        "sample/demo/*video-*/*.mp4", "codec/*"):
            for path in sorted(self.out.glob(pattern)):
                print(f"  {path}")
        metrics = self.metrics_file()
        if not metrics.exists():
            print(f"[demo] no evaluation at {metrics}")
            return
        values = json.loads(metrics.read_text())
        print(f"[demo] evaluation ({metrics}):")
        for key, value in sorted(values.items()):
            if not isinstance(value, (dict, list)):
                print(f"  {key}: {value}")
        for name, note in sorted((values.get("notes") or {}).items()):
            print(f"  note on {name}: {note}")
        print(f"\n[demo] targets, each beside its baseline from this run (report: {metrics.parent / 'report.html'}):")
        print(format_targets(values.get("targets") or []))


def run_step(out: Path, stage: str, args: list[str]) -> dict[str, float]:
    """One stage as a subprocess writing under `out`; its wall and CPU seconds."""
    cmd = [sys.executable, "-m", f"stages.{stage}", *args]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start, cpu = time.perf_counter(), _children_cpu()
    result = subprocess.run(cmd, env={**os.environ, "SPECVQGAN_OUTPUTS": str(out)})
    if result.returncode != 0:
        raise SystemExit(f"demo step {stage} failed (exit {result.returncode}); its run folder under {out}/"
                         f"{stage}/ has the log. Rerun to resume after fixing the cause.")
    took = {"wall_s": time.perf_counter() - start, "cpu_s": _children_cpu() - cpu}
    print(f"[demo] {stage} done in {took['wall_s']:.1f} s ({took['cpu_s']:.1f} CPU s)", flush=True)
    return took


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_demo(out: str | Path, seed: int | None = None) -> dict[str, Any]:
    """Every step of one demo into `out`; returns its evaluation (metrics.json) and timings
    {"metrics", "steps": [(stage, {"wall_s", "cpu_s"})], "wall_s", "cpu_s", "load": 1-min load averages}."""
    os.environ.setdefault("WANDB_MODE", "offline")
    demo = Demo(out, seed)
    start, cpu, loads, steps = time.perf_counter(), _children_cpu(), [os.getloadavg()[0]], []
    for stage, args in demo.steps():
        steps.append((stage, run_step(demo.out, stage, args)))
        loads.append(os.getloadavg()[0])
    demo.report()
    took = {"wall_s": time.perf_counter() - start, "cpu_s": _children_cpu() - cpu}
    print(f"[demo] finished in {took['wall_s']:.0f} s ({took['cpu_s']:.0f} CPU s; load average "
          f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores)")
    return {"metrics": json.loads(demo.metrics_file().read_text()), "steps": steps, **took, "load": loads}


def main() -> None:
    run_demo(os.environ.get("SPECVQGAN_OUTPUTS", "outputs"))


if __name__ == "__main__":
    main()
