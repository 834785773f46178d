"""Sound for long videos: time and peak memory of `stages.sample video=...` for 10, 30 and 60 s videos.

Each length runs in its own process (peak RSS is per process), through the sample stage's `sample_user_clip`
with tiny models built here (the tiny codebook preset, a 1-layer GPT on the paper VAS preset's 212 condition
frames, the 8x narrow ResNet50 with random weights, Griffin-Lim): what is measured is the path (frames decoded as
needed, the sliding window, window-by-window decoding), not a model's size. The baseline is the 10 s video in the
same run: each extra second should cost about what one second of the 10 s path costs (the window step is the same
work however long the video is), and peak memory should stay within 20% of the 10 s video's. No assertions.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.build.codebook import build_codebook
from pipeline.build.transformer import build_transformer, codebook_grid, model_args_from_config
from pipeline.build.vocoder import Vocoder
from pipeline.checkpoints.zoo import features_preset
from pipeline.config.presets import compose_stage, preset
from pipeline.generate.decoding import TokenSampler
from pipeline.generate.user_clip import UserModels, sample_user_clip
from pipeline.media.audio import SR

LENGTHS = (10.0, 30.0, 60.0)


def _models():
    import torch


    fcfg = features_preset("resnet50_tiny")  # resnet50's pipeline, its sizes from conf/base.yaml's clip node
    paper = compose_stage("train_transformer", ["dataset=vas"])  # the 212-feature VAS preset and the clip's crop
    tcfg = paper.transformer
    tcfg.n_layer, tcfg.n_head, tcfg.n_embd, tcfg.feat_depth = 1, 2, 32, int(fcfg["depth"])  # a tiny GPT
    torch.manual_seed(0)
    codebook = build_codebook(preset("codebook", "tiny").model)
    args = model_args_from_config(tcfg, codebook.n_embed, codebook_grid(codebook, paper.data.crop_len))
    model = build_transformer(args, codebook).eval()
    sampler = TokenSampler.from_config(model, compose_stage("sample", []).sampling)  # the stage's: exact on a CPU
    return UserModels(model, sampler, {"model_args": args}, fcfg, Vocoder(None, n_iter=8), torch.device("cpu"),
                      "bench")


def _video(path: Path, seconds: float, fps: float = 25.0, size: int = 128) -> Path:
    """A video whose colour changes every frame, written frame by frame (the bench never holds it)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=int(fps))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(round(seconds * fps))):
            frame = np.empty((size, size, 3), np.uint8)
            frame[:] = (i * np.array([7, 13, 29])) % 256
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def one(seconds: float) -> dict:
    """Sample sound for a generated `seconds` video in this process; its time and peak memory."""
    import torch


    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        video = _video(Path(tmp) / f"v{seconds:g}.mp4", seconds)
        models = _models()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        wall, cpu = time.perf_counter(), time.process_time()
        settings = {"mode": "nopix", "temperature": 1.0, "top_k": 16, "top_p": None}
        made = sample_user_clip(models, video, [Path(tmp) / "out"], settings, seed=0, max_seconds=None)[0]
        return {"seconds": seconds, "sound_seconds": made["wave"].size / SR,
                "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "models_mib": before}


def main() -> list[str]:
    rows = []
    for seconds in LENGTHS:
        result = subprocess.run([sys.executable, "-m", "pipeline.bench.long_video_memory", str(seconds)],
                                capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    base = rows[0]
    per_second = base["wall"] / base["seconds"]
    print(f"{'video':>7} {'sound':>7} {'wall s':>8} {'CPU s':>7} {'peak MiB':>9} {'vs 10 s':>8} "
          f"{'per extra s':>12} {'vs 10-s path per s':>19}")
    headlines = []
    for row in rows:
        extra = (row["wall"] - base["wall"]) / (row["seconds"] - base["seconds"]) if row is not base else None
        memory = row["peak_mib"] / base["peak_mib"]
        print(f"{row['seconds']:>6.0f}s {row['sound_seconds']:>6.1f}s {row['wall']:>8.2f} {row['cpu']:>7.2f} "
              f"{row['peak_mib']:>9.0f} {memory:>7.2f}x "
              + (f"{extra:>11.3f}s {extra / per_second:>18.2f}x" if extra is not None else f"{'-':>12} {'-':>19}"))
        if row is not base:
            headlines.append(f"{row['seconds']:.0f} s video: {row['sound_seconds']:.1f} s of sound, peak memory "
                             f"{memory:.2f}x the 10 s video's, each extra second {extra / per_second:.2f}x a second "
                             f"of the 10 s path")
    return headlines


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(one(float(sys.argv[1]))))
    else:
        main()
