"""The app's pictures: a spectrogram as an image, and the last step's attention as a plot over the video's time.

matplotlib is imported inside `attention_plot` (the `app` extra, like gradio); both return RGB uint8 arrays that
the page shows as images.
"""
from __future__ import annotations

import numpy as np

from pipeline.media.images import spectrogram_image

PLOT_SIZE = (9.0, 2.8)  # inches: at PLOT_DPI the plot is 900 x 280 pixels, readable beside a 848-wide spectrogram
PLOT_DPI = 100


def spectrogram_rgb(mel: np.ndarray, scale: int = 2) -> np.ndarray:
    """(80, T) mel in [0, 1] -> (80 * scale, T, 3) uint8 image, low frequencies at the bottom."""
    gray = np.repeat(spectrogram_image(mel, (0.0, 1.0)), scale, axis=0)  # (80 * scale, T)
    return np.stack([gray] * 3, axis=-1)


def attention_plot(weights: np.ndarray, seconds: np.ndarray, video_seconds: float | None) -> np.ndarray:
    """The attention of the step that sampled the last token over the condition's frames, a bar per frame at its
    time in the video: `weights` (S,) (summing to at most 1: the rest went to the tokens), `seconds` (S,) each
    frame's time; the part past the video's end (`video_seconds`, where the features were padded) is shaded.
    Returns a (280, 900, 3) uint8 image (PLOT_SIZE at PLOT_DPI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # drawn into memory, no display
    from matplotlib.figure import Figure

    weights, seconds = np.asarray(weights, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    width = float(np.min(np.diff(seconds))) * 0.9 if seconds.size > 1 else 0.5
    fig = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(seconds, 100 * weights, width=width, color="#e07814", edgecolor="#96460a", linewidth=0.3)
    left, right = seconds[0] - width, seconds[-1] + width
    if video_seconds is not None and video_seconds < right:
        ax.axvspan(max(video_seconds, left), right, color="0.88", zorder=0, label="past the video's end")
        ax.legend(loc="upper right", frameon=False, fontsize=9)
    ax.set_xlim(left, right)
    ax.set_ylim(0, max(100 * weights.max(), 1e-3) * 1.15)
    ax.set_xlabel("time in the video (s)")
    ax.set_ylabel("attention (%)")
    ax.set_title("Where the model looked when it chose the last sound token: its attention over the video's frames",
                 fontsize=10)
    ax.grid(axis="y", color="0.9")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
