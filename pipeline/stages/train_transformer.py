"""`python -m stages.train_transformer`: the stage-2 transformer trained by the shared loop
(`pipeline.train`) as the task `pipeline.tasks.transformer.TransformerTask`."""
from __future__ import annotations

from omegaconf import DictConfig

from pipeline.tasks.transformer import TransformerTask
from pipeline.train.run import train


def run(cfg: DictConfig) -> dict[str, float]:
    """Train in the run folder (a rerun with the same overrides resumes); returns the last metrics."""
    return train(TransformerTask(cfg), cfg)
