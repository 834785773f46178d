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

OUT = Path(os.environ.get("SPECVQGAN_OUTPUTS", "outputs"))
DATA = "dataset=demo"


def steps() -> list[tuple[str, list[str]]]:
    """The stages in data-flow order; each later one finds the earlier ones' outputs by derived paths."""
    codebook = f"{OUT}/train_codebook/demo/default/checkpoints/best.pt"
    vocoder = f"{OUT}/train_vocoder/demo/default/checkpoints/best.pt"
    classifier = f"{OUT}/train_classifier/demo/classifier-melception_tiny/checkpoints/best.pt"
    video = f"{OUT}/demo_data/videos/00_chirp_circle/video_00004.mp4"
    codes = f"{OUT}/codec/demo_clip.svqc"
    return [
        ("make_demo_data", []),
        ("extract_mels", [DATA, "chain=direct"]),
        ("extract_features", [DATA]),                       # EfficientNet-Lite0: weights ship offline
        ("train_codebook", [DATA]),                         # codebook=tiny via dataset=demo
        ("train_vocoder", [DATA]),                          # vocoder=tiny
        ("train_classifier", [DATA, "classifier=melception_tiny"]),
        ("train_transformer", [DATA]),                      # transformer=tiny, conditioned on 5 frames
        ("sample", [DATA, f"vocoder_ckpt={vocoder}"]),       # the valid split, vocoded with the tiny MelGAN
        ("sample", [DATA, f"video={video}", f"vocoder_ckpt={vocoder}"]),  # a "user" video -> wav + mp4
        ("evaluate", [DATA, f"classifier.ckpt={classifier}"]),  # samples of the sample run above
        ("codec", [DATA, "mode=encode", f"input={video}", f"output={codes}", f"codebook.ckpt={codebook}"]),
        ("codec", [DATA, "mode=decode", f"input={codes}", f"output={OUT}/codec/demo_clip_decoded.wav",
                   f"codebook.ckpt={codebook}", f"vocoder.ckpt={vocoder}"]),
    ]


def report() -> None:
    """Where the demo's results are, and the evaluation's numbers."""
    metrics = Path(f"{OUT}/sample/demo/default/samples/valid/metrics.json")
    print(f"\n[demo] results under {OUT.resolve()}:")
    for pattern in ("demo_data", "train_*/demo/*/checkpoints", "sample/demo/*/samples/valid",
                    "sample/demo/video*/*.mp4", "codec/*"):
        for path in sorted(OUT.glob(pattern)):
            print(f"  {path}")
    if metrics.exists():
        print(f"[demo] evaluation ({metrics}):")
        for key, value in sorted(json.loads(metrics.read_text()).items()):
            if not isinstance(value, (dict, list)):
                print(f"  {key}: {value}")


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
