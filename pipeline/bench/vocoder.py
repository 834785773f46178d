"""Vocoder and classifier speed on this machine: MelGAN (paper size, random weights) and Melception features.

Baseline measured in the same run: Griffin-Lim (32 iterations, `pipeline.mel.inverse_mel`) on the same 10-s mel.
Prints real-time factors (seconds of audio per second of compute) and ratios against Griffin-Lim; no assertions.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

FRAMES = 848                 # the models' 9.85-s mel
SECONDS = FRAMES * 256 / 22050


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from models.melception import Melception
    from models.melgan import Generator
    from pipeline.mel import inverse_mel
    from pipeline.vocoder import Vocoder

    torch.set_num_threads(1)
    torch.manual_seed(0)
    mel = np.random.RandomState(0).rand(80, FRAMES).astype(np.float32)
    print(f"threads 1; one mel = {FRAMES} frames = {SECONDS:.2f} s of audio; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine slows every number)")

    inverse_mel(mel[:, :32])  # warm-up (librosa import, basis)
    t_gl = _best_of(lambda: inverse_mel(mel, n_iter=32), 2)
    rtf_gl = SECONDS / t_gl
    print(f"Griffin-Lim 32 it (baseline): {t_gl:.3f} s per clip = {rtf_gl:.1f}x real time")

    vocode = Vocoder(Generator(80, ngf=32, n_residual_layers=3))
    vocode(torch.from_numpy(mel[None, :, :32]))  # warm-up
    for batch in (1, 8):
        x = torch.from_numpy(np.repeat(mel[None], batch, axis=0))
        t = _best_of(lambda x=x: vocode(x), 2 if batch == 1 else 1)
        rtf = batch * SECONDS / t
        print(f"MelGAN batch {batch}: {t:.3f} s = {rtf:.1f}x real time "
              f"({'meets' if rtf > 20 else 'MISSES'} the 20x target); {rtf / rtf_gl:.2f}x Griffin-Lim's speed")

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
        t = _best_of(lambda: model.features(x, names=("2048", "logits_unbiased", "logits")), 1)
    print(f"Melception features, batch 8 of 80x{FRAMES}: {t:.2f} s = {8 / t:.2f} spectrograms/s "
          f"({(8 / t) / (1 / t_gl):.2f}x the clips/s of Griffin-Lim)")
