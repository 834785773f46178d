"""Vocoder and classifier speed on this machine: MelGAN (paper size, random weights) and Melception features.

Baselines measured in the same run: Griffin-Lim (32 iterations, `pipeline.media.mel.inverse_mel`) on the same 10-s
mel, and the plain MelGAN Generator (torch convolutions, weight norm recomputed once per call). The fast path
is `Vocoder`'s default, `Generator.for_inference()` (weight norm folded, time-major matrix products, checked
here against the plain Generator); it runs with 1 and 2 workers (2 = both cores of the target machine: two
clips, or two overlapping halves of one clip, side by side). Prints real-time factors (seconds of audio per
second of compute), wall clock and this process's CPU time (steadier on a shared machine); no assertions.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from models.melception import Melception
from models.melgan import Generator
from pipeline.build.vocoder import Vocoder
from pipeline.media.mel import CROP_LEN, MEL_FPS, N_MELS, inverse_mel

FRAMES = CROP_LEN            # the models' 9.85-s mel
SECONDS = FRAMES / MEL_FPS


def _best_of(fn, repeats: int) -> tuple[float, float]:
    """(best wall, best CPU) seconds of `repeats` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main() -> list[str]:

    torch.set_num_threads(1)
    torch.manual_seed(0)
    mel = np.random.RandomState(0).rand(N_MELS, FRAMES).astype(np.float32)
    print(f"one mel = {FRAMES} frames = {SECONDS:.2f} s of audio; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs (a shared machine slows every number; CPU times are steadier)")

    inverse_mel(mel[:, :32])  # warm-up (librosa import, basis)
    t_gl, _ = _best_of(lambda: inverse_mel(mel, n_iter=32), 1)
    rtf_gl = SECONDS / t_gl
    print(f"Griffin-Lim 32 it (baseline): {t_gl:.3f} s per clip = {rtf_gl:.1f}x real time")

    generator = Generator(N_MELS, ngf=32, n_residual_layers=3).eval()
    plain = Vocoder(generator, fast=False)
    fast = Vocoder(generator)
    x1 = torch.from_numpy(mel[None])
    plain(x1[:, :, :32])  # warm-up
    fast(x1[:, :, :32])
    diff = (fast(x1) - plain(x1)).abs().max().item()
    t_plain, c_plain = _best_of(lambda: plain(x1), 1)
    print(f"plain Generator (baseline), batch 1, 1 thread: {t_plain:.3f} s wall / {c_plain:.3f} s CPU = "
          f"{SECONDS / t_plain:.1f}x real time; fast path output - plain output: max |diff| {diff:.1e}")
    summary = []
    for workers in (1, 2):
        torch.set_num_threads(workers)  # the fast path runs this many pieces in threads, each single-threaded
        for batch in (1, 8):
            x = torch.from_numpy(np.repeat(mel[None], batch, axis=0))
            wall, cpu = _best_of(lambda x=x: fast(x), 2 if batch == 1 else 1)
            rtf = batch * SECONDS / wall
            print(f"MelGAN fast path, {workers} worker(s), batch {batch}: {wall:.3f} s wall / {cpu:.3f} s CPU = "
                  f"{rtf:.1f}x real time ({'meets' if rtf > 20 else 'MISSES'} the 20x target; "
                  f"{batch * SECONDS / cpu:.1f}x per CPU-second); {t_plain * batch / wall:.1f}x the plain "
                  f"Generator's speed, {rtf / rtf_gl:.1f}x Griffin-Lim's")
            summary.append(f"MelGAN {workers} worker(s) batch {batch}: {rtf:.1f}x real time (target 20x)")
    torch.set_num_threads(1)

    with torch.device("meta"):
        model = Melception(num_classes=309, init_weights=False)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.fill_(1.0) if name.endswith("running_var") else tensor.normal_(0, 0.02)
            else:
                tensor.zero_()
    model.eval()
    x = torch.from_numpy(np.repeat(mel[None], 8, axis=0))
    with torch.no_grad():
        model.features(x[:1, :, :64])  # warm-up
        t, _ = _best_of(lambda: model.features(x, names=("2048", "logits_unbiased", "logits")), 1)
    print(f"Melception features, batch 8 of 80x{FRAMES}, 1 thread: {t:.2f} s = {8 / t:.2f} spectrograms/s "
          f"({(8 / t) / (1 / t_gl):.2f}x the clips/s of Griffin-Lim)")
    return summary
