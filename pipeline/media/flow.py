"""TV-L1 optical flow between consecutive grey frames, stored as two 0..255 images, as RegNet does.

The original's flow features come from RegNet's frame dump (`extract_rgb_flow.py`): frames resized to
340 x 256, converted to grey, OpenCV's Dual TV-L1 flow between each frame and the next with the default
parameters, clipped to +-20 pixels and mapped linearly to 0..255 ((f + 20) * 255 / 40), written as JPEG
`flow_x` / `flow_y` images. Why this implementation: it *is* the same algorithm and code (OpenCV's
`DualTVL1OpticalFlow` with its defaults; since OpenCV 4 it lives in the contrib module `cv2.optflow`,
installed through opencv-contrib-python-headless), so our flow images match the original's up to OpenCV
version differences. A GPU or learned flow (RAFT, ...) would be faster but gives different fields, and
the BN-Inception flow network was trained on TV-L1 images; it also costs no new dependency.

Cost: about 0.6 s per 340 x 256 pair on one core, i.e. about 2 minutes per 10 s clip (216 pairs); it
scales with the pixel count, so tests use small frames.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

BOUND = 20.0  # pixels; RegNet's clip value: +-20 maps to 0 and 255


def tvl1():
    """A fresh OpenCV Dual TV-L1 estimator with its default parameters (what RegNet creates per pair)."""
    import cv2

    if not hasattr(cv2, "optflow"):
        raise ImportError("cv2.optflow is missing: TV-L1 flow needs opencv-contrib-python-headless "
                          "(pip install opencv-contrib-python-headless), not plain opencv-python")
    return cv2.optflow.DualTVL1OpticalFlow_create()


def flow_to_uint8(flow: np.ndarray, bound: float = BOUND) -> np.ndarray:
    """(H, W, 2) float flow -> (H, W, 2) uint8: clip to +-bound, map linearly to 0..255, round.

    Rounding to nearest (ties to even) and saturating is what `cv2.imwrite` does to RegNet's float images.
    """
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2.0 * bound))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def consecutive_flows(greys: Sequence[np.ndarray], bound: float = BOUND) -> list[np.ndarray]:
    """Flow from each grey frame (H, W uint8) to the next: len(greys) - 1 images of (H, W, 2) uint8."""
    estimator = tvl1()
    out = []
    for prev, curr in itertools.pairwise(greys):
        flow = estimator.calc(prev, curr, None)  # (H, W, 2) float32: x (right), y (down) displacement
        out.append(flow_to_uint8(flow, bound))
    return out
