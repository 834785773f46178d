"""ResNet50 feature extraction throughput (clips per second) on a generated 10 s 256 x 256 clip.

Baseline: decoding and preprocessing the same clip (frames at 21.5 fps, resize, crop) without the network,
measured in the same run; the ratio says how much the network costs on top of reading the video. Random
weights (the speed does not depend on them). Also the TV-L1 cost per 340 x 256 frame pair.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.extract.visual import extract_streams, load_model
from pipeline.media.flow import consecutive_flows
from pipeline.media.video import center_crop, read_clip_frames, resize_short_side, write_video


def _clip(path: Path, seconds: float = 10.0, fps: float = 25.0, size: int = 256) -> None:

    n = int(seconds * fps)
    yy, xx = np.mgrid[:size, :size]
    frames = np.stack([np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy) % 256], -1)
                       for i in range(n)]).astype(np.uint8)  # a moving colour pattern
    write_video(path, frames, fps)


def main() -> None:

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.mp4"
        _clip(video)
        start = time.perf_counter()
        frames = read_clip_frames(video, transform=lambda im: center_crop(resize_short_side(im, 256), 224))
        decode = time.perf_counter() - start
        model = load_model("resnet50", "random", device="cuda" if torch.cuda.is_available() else "cpu")
        start = time.perf_counter()
        streams = extract_streams(video, "resnet50", model)
        full = time.perf_counter() - start
        print(f"decode+preprocess only: {len(frames)} frames in {decode:.2f} s ({1 / decode:.2f} clips/s)")
        print(f"ResNet50 features {streams['rgb'].shape} on {next(model.parameters()).device} "
              f"({torch.get_num_threads()} threads): {full:.2f} s per clip = {1 / full:.3f} clips/s, "
              f"{len(frames) / full:.1f} frames/s")
        print(f"ratio full / decode-only: {full / decode:.1f}x")
        import cv2

        cv2.setNumThreads(1)  # one core per clip: data-set runs parallelise over clips (num_workers)
        rng = np.random.default_rng(0)
        base = cv2.GaussianBlur((rng.random((256, 340)) * 255).astype(np.uint8), (9, 9), 3)
        greys = [np.roll(base, 2 * i, axis=1) for i in range(3)]  # a texture moving 2 px per frame
        start = time.perf_counter()
        consecutive_flows(greys)
        pair = (time.perf_counter() - start) / 2
        print(f"TV-L1 340x256 (1 cv2 thread): {pair:.2f} s per pair -> {216 * pair:.0f} s per 10 s clip (216 pairs); "
              f"ratio to ResNet50 per clip: {216 * pair / full:.1f}x")
