"""Spectrograms as pictures: a grey image for training logs, a colour map for reports and pages (low frequencies at
the bottom)."""
from __future__ import annotations

import numpy as np

# a dark-to-bright colour map (black, purple, orange, pale yellow) for [0, 1] mels
COLOUR_MAP = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], dtype=np.float64)


def spectrogram_image(spec: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(F, T) spectrogram -> (F, T) uint8 image with low frequencies at the bottom."""
    lo, hi = value_range
    spec = np.clip((np.asarray(spec, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return (np.flipud(spec) * 255).round().astype(np.uint8)


def colourise(mel01: np.ndarray, scale: int = 2) -> np.ndarray:
    """(80 * scale, T, 3) uint8 image of a [0, 1] mel, low frequencies at the bottom."""
    x = np.clip(np.asarray(mel01, dtype=np.float64), 0, 1)[::-1]
    pos = x * (len(COLOUR_MAP) - 1)
    lo = np.minimum(pos.astype(int), len(COLOUR_MAP) - 2)
    frac = (pos - lo)[..., None]
    rgb = COLOUR_MAP[lo] * (1 - frac) + COLOUR_MAP[lo + 1] * frac
    return np.repeat(rgb, scale, axis=0).astype(np.uint8)
