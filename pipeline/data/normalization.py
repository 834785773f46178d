"""Per-mel-bin normalisation of the stored [0, 1] mels (the original's `StandardNormalizeAudio`) and its
statistics file (80 rows of `mean std`, `STATS_NAME`): read, written, computed from a split with the original's
recipe (the mean over clips of each clip's per-bin time mean, and likewise for the std). The classifiers train and
evaluate with it; the codebook's LPAPS reads the same file."""
from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.data.datasets import SpectrogramDataset
from pipeline.files.writes import atomic_write
from pipeline.media.mel import unit_mel

log = logging.getLogger(__name__)

STATS_NAME = "train_means_stds_melspec_10s_22050hz.txt"  # the original's file name for these mels


def read_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (80,), from the original's text file (80 rows of `mean std`)."""
    path = Path(path)
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read normalisation statistics from {path} ({e}): expected 80 rows of "
                         f"`mean std`, as {STATS_NAME}") from e
    if table.shape[1] != 2 or (table[:, 1] <= 0).any():
        raise ValueError(f"{path}: expected rows of `mean std` with std > 0, got shape {table.shape}")
    return table[:, 0], table[:, 1]


def stats_tensors(path: str | Path, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`read_stats` as float32 tensors; a missing file is an error naming the config `key` that points at it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"mel statistics {path} not found: point {key} at the 80 x 2 mean/std txt "
                                f"({STATS_NAME}, made by the classifier stage), or set it to null")
    mean, std = read_stats(path)
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))


def save_stats(path: str | Path, mean: np.ndarray, std: np.ndarray) -> None:
    """Write (mean, std) in the original's format (`%0.8f`, one mel bin per row), atomically."""
    buffer = io.StringIO()
    np.savetxt(buffer, np.stack([mean, std], axis=1), fmt="%0.8f")
    with atomic_write(path, "w") as f:
        f.write(buffer.getvalue())


def compute_stats(dataset_cfg: Mapping[str, Any], split: str, spec_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The original's recipe over a split's stored mels: mean of per-clip bin means, mean of per-clip bin stds."""
    ds = SpectrogramDataset(dataset_cfg, split, spec_len=spec_len, crop_len=spec_len)
    means, stds = [], []
    for i in range(len(ds)):
        mel = ds.load_mel(i).astype(np.float64)  # (80, spec_len) in [0, 1]
        means.append(mel.mean(axis=1))
        stds.append(mel.std(axis=1))
    if not means:
        raise ValueError(f"split {split!r} of data set {dataset_cfg.get('name')!r} is empty: no statistics")
    mean, std = np.mean(means, axis=0), np.mean(stds, axis=0)
    return mean, np.maximum(std, 1e-8)  # a constant bin (silence) would divide by zero


def resolve_stats(stats_path: str | None, dataset_cfg: Mapping[str, Any], split: str, out_dir: str | Path,
                  spec_len: int, write: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read `stats_path`; if it is null or missing, compute from `split` and write `<out_dir>/STATS_NAME`
    (when `write`: the main process only)."""
    if stats_path and Path(stats_path).is_file():
        log.info("normalisation statistics from %s", stats_path)
        return read_stats(stats_path)
    if stats_path:
        log.warning("normalisation statistics %s do not exist: computing them from the %s split as the "
                    "original does", stats_path, split)
    mean, std = compute_stats(dataset_cfg, split, spec_len)
    out = Path(out_dir) / STATS_NAME
    if write:
        save_stats(out, mean, std)
    log.info("normalisation statistics of the %s split written to %s", split, out)
    return mean, std


class Normalize(nn.Module):
    """[-1, 1] model image (80, T) -> (mel01 - mean_f) / std_f per mel bin (StandardNormalizeAudio)."""

    def __init__(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32).view(-1, 1))
        self.register_buffer("std", torch.as_tensor(np.asarray(std), dtype=torch.float32).view(-1, 1))

    def forward(self, image: torch.Tensor, zero_one: bool = False) -> torch.Tensor:
        mel01 = image.float() if zero_one else unit_mel(image.float())  # (B, 80, T)
        return (mel01 - self.mean) / self.std
