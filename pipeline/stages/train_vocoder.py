"""`python -m stages.train_vocoder`: the MelGAN vocoder trained by the shared loop
(`pipeline.train`) as the task `pipeline.tasks.vocoder.VocoderTask`."""
from __future__ import annotations

from omegaconf import DictConfig

from pipeline.tasks.vocoder import VocoderTask
from pipeline.train.run import train


def run(cfg: DictConfig) -> dict[str, float]:
    """Train in the run folder (a rerun with the same overrides resumes); returns the last metrics."""
    return train(VocoderTask(cfg), cfg)
