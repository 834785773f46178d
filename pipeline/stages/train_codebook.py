"""`python -m stages.train_codebook`: the Spectrogram VQGAN codebook trained by the shared loop
(`pipeline.train`) as the task `pipeline.tasks.codebook.CodebookTask`."""
from __future__ import annotations

from omegaconf import DictConfig

from pipeline.tasks.codebook import CodebookTask
from pipeline.train.run import train


def run(cfg: DictConfig) -> dict[str, float]:
    """Train in the run folder (a rerun with the same overrides resumes); returns the last metrics."""
    return train(CodebookTask(cfg), cfg)
