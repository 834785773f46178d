"""Where a training run's random draws come from, so that a run stopped at any step resumes to the same weights.

Two streams, each saved or derived consistently with the data position:
- an item's draws (random crops and gains, the transformer's column shift, No-Feats vectors: whatever a data set's
  `__getitem__` draws from torch's generator) come from torch's CPU generator seeded for that item alone, from
  (run seed, stream, epoch, index) (`SeededItems`): a function of where the data is, whichever process or loader
  worker reads it and however far ahead the loader fetches;
- a step's own draws (dropout, the GAN's noise) come from torch's global generators, whose state every checkpoint
  saves (`pipeline.checkpoints.format.rng_state`). Validation and media draw inside `kept_rng` (a copy, put back
  after), so how often a run validates or logs never changes its training.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

TRAIN_STREAM, VAL_STREAM = 0, 1  # the item streams of the training and the validation split


def item_seed(seed: int, stream: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item's draws, well mixed (numpy's SeedSequence) from where the item is."""
    words = [int(v) % 2 ** 64 for v in (seed, stream, epoch, index)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


class SeededItems(Dataset):
    """`dataset` whose item `index` draws from torch's CPU generator seeded by (seed, stream, epoch, index); the
    global generator's state is put back after each item. The trainer sets `epoch` before each pass."""

    def __init__(self, dataset: Dataset, seed: int, stream: int = TRAIN_STREAM):
        self.dataset, self.seed, self.stream = dataset, int(seed), int(stream)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(item_seed(self.seed, self.stream, self.epoch, int(index)))
            return self.dataset[index]


@contextlib.contextmanager
def kept_rng(device: torch.device) -> Iterator[None]:
    """Run a block (validation, media) without changing torch's generators of the CPU and of `device`."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
