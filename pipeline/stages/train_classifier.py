"""`python -m stages.train_classifier`: a mel classifier (Melception or VGGish-ish) trained by the shared loop
(`pipeline.train`) as the task `pipeline.tasks.classifier.ClassifierTask`."""
from __future__ import annotations

from omegaconf import DictConfig

from pipeline.tasks.classifier import ClassifierTask
from pipeline.train.run import train


def run(cfg: DictConfig) -> dict[str, float]:
    """Train in the run folder (a rerun with the same overrides resumes); returns the last metrics."""
    return train(ClassifierTask(cfg), cfg)
