"""`make demo`: the whole pipeline on a generated data set, on CPU, in minutes.

Each step is a real stage run as `python -m stages.NAME key=value ...` (exactly what a user types), chained
through the paths the configs derive. Outputs go under `outputs/` (or `SPECVQGAN_OUTPUTS`); a rerun skips what
is finished (extraction stages skip written clips, training stages resume from their last checkpoint).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline import CONF
from pipeline.evaluate.model_checks import format_targets
from pipeline.runs.folders import run_name

OUT = Path(os.environ.get("SPECVQGAN_OUTPUTS", "outputs"))
DATA = "dataset=demo"


def samples_per_clip() -> int:
    """Samples of each validation clip so that the class-match target counts over evaluate's `min_samples`."""
    import math

    from omegaconf import OmegaConf

    wanted = int(OmegaConf.load(CONF / "evaluate.yaml").min_samples)
    clips = [line for line in Path(f"{OUT}/demo_data/demo_valid.txt").read_text().splitlines() if line.strip()]
    return max(1, math.ceil(wanted / max(len(clips), 1)))


def transformer_ckpt() -> str:
    """The transformer every sample step uses: last.pt, the end of its schedule (conf/transformer/tiny.yaml says
    why not best.pt)."""
    return f"{OUT}/train_transformer/demo/default/checkpoints/last.pt"


def split_sampling() -> list[str]:
    """The sample stage's overrides for the validation split: every valid clip, >= 32 samples in all."""
    return [f"samples_per_clip={samples_per_clip()}", "batch_size=8", f"transformer.ckpt={transformer_ckpt()}"]


def sample_dir(overrides: list[str]) -> str:
    """The samples folder of a sample run with these overrides (the run folder the stage derives)."""

    return f"{OUT}/sample/demo/{run_name(overrides)}/samples/valid"


def steps():
    """The stages in data-flow order; each later one finds the earlier ones' outputs by derived paths.

    A generator: the sampling steps read the validation split that the first step writes.
    """
    codebook = f"{OUT}/train_codebook/demo/default/checkpoints/best.pt"
    vocoder = f"{OUT}/train_vocoder/demo/default/checkpoints/best.pt"
    classifier = f"{OUT}/train_classifier/demo/classifier-melception_tiny/checkpoints/best.pt"
    video = f"{OUT}/demo_data/videos/00_chirp_circle/video_00004.mp4"
    codes = f"{OUT}/codec/demo_clip.svqc"
    yield "make_demo_data", []
    yield "extract_mels", [DATA, "chain=direct"]
    yield "extract_features", [DATA]                       # EfficientNet-Lite0: weights ship offline
    yield "train_codebook", [DATA]                         # codebook=tiny via dataset=demo
    yield "train_vocoder", [DATA]                          # vocoder=tiny
    yield "train_classifier", [DATA, "classifier=melception_tiny"]
    yield "train_transformer", [DATA]                      # transformer=tiny, 53 frames: one per code column
    split = split_sampling()
    shuffled = [*split, "condition_shuffle=true", "write_wav=false"]  # the baseline: other clips' pictures
    yield "sample", [DATA, *split, f"vocoder.ckpt={vocoder}"]  # the valid split, vocoded with the tiny MelGAN
    yield "sample", [DATA, *shuffled]
    yield "sample", [DATA, f"video={video}", f"transformer.ckpt={transformer_ckpt()}",  # a "user" video -> wav + mp4
                     f"vocoder.ckpt={vocoder}"]
    yield "evaluate", [DATA, f"classifier.ckpt={classifier}", f"samples_dir={sample_dir(split)}",
                       f"shuffled_samples_dir={sample_dir(shuffled)}"]  # + codebook, vocoder, events by default
    yield "codec", [DATA, "mode=encode", f"input={video}", f"output={codes}", f"codebook.ckpt={codebook}"]
    yield "codec", [DATA, "mode=decode", f"input={codes}", f"output={OUT}/codec/demo_clip_decoded.wav",
                    f"codebook.ckpt={codebook}", f"vocoder.ckpt={vocoder}"]


def report() -> None:
    """Where the demo's results are, and the targets table of the evaluation."""

    print(f"\n[demo] results under {OUT.resolve()}:")
    for pattern in ("demo_data", "train_*/demo/*/checkpoints", "sample/demo/*/samples/valid",
                    "sample/demo/*video-*/*.mp4", "codec/*"):
        for path in sorted(OUT.glob(pattern)):
            print(f"  {path}")
    folder = Path(sample_dir(split_sampling()))
    metrics = folder / "metrics.json"
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
    print(f"\n[demo] targets, each beside its baseline from this run (report: {folder / 'report.html'}):")
    print(format_targets(values.get("targets") or []))


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
    report()
    print(f"[demo] finished in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
