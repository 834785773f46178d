"""Checkpoints of the training loop: one dict per file, written atomically, loadable with weights_only=True.

Layout (the loaders in `pipeline.build` read `model_args` and `state_dict` only):
    format       "specvqgan-pipeline"
    kind         "codebook" | "transformer" | "vocoder" | "classifier"
    model_args   the model's constructor arguments, so a loader needs no training config
    state_dict   the task's modules in the original's key layout
    train_state  optimisers, schedulers, step, epoch, early-stopping state, RNG states, W&B run id
    config       the resolved Hydra config of the run (plain containers)
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.checkpoints.reading import FORMAT, read_checkpoint
from pipeline.files.writes import save_torch


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, as tensors and plain numbers (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    save_torch(path, {"format": FORMAT, **checkpoint})


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one of our checkpoints safely (`pipeline.checkpoints.reading.read_checkpoint`); a clear error if it is
    missing, unreadable or not ours."""
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this project (no format={FORMAT!r} key); "
                         f"original checkpoints load through pipeline.build")
    return checkpoint
