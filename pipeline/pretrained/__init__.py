"""Loading trained models from a local path: our checkpoints and the original's released files.

Every loader detects the format from the file's content, loads strictly (missing or unexpected keys raise
an error that lists them), uses `torch.load(..., weights_only=True)`, and returns the model in eval mode.
"""
from __future__ import annotations


def load_codebook(path, **kwargs):
    from pipeline.pretrained.codebook import load_codebook as load

    return load(path, **kwargs)


def load_transformer(path, **kwargs):
    from pipeline.pretrained.transformer import load_transformer as load

    return load(path, **kwargs)


def load_vocoder(path, **kwargs):
    from pipeline.pretrained.vocoder import load_vocoder as load

    return load(path, **kwargs)


def load_classifier(path, **kwargs):
    from pipeline.pretrained.classifier import load_classifier as load

    return load(path, **kwargs)
