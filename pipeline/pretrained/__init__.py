"""Loading trained models: our checkpoints and the original's released files, as they are.

Each loader takes a checkpoint file or a folder (the original's log folder `<stamp>_<name>/` with
`checkpoints/*.ckpt` + `configs/*-project.yaml`, MelGAN's `vocoder/logs/vggsound/`, a classifier's release
folder, or one of our run folders: `pipeline.pretrained.released`), passes it through
`pipeline.checkpoints.locate` (where released model names will resolve), reads it with
`pipeline.checkpoints.read_checkpoint` (no code runs; Lightning need not be installed), detects the format from
the content, loads strictly (missing or unexpected keys and wrong shapes raise an error that lists them), and
returns the model in eval mode.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch
    from torch import nn

    from models.cond_transformer import Net2NetTransformer
    from models.melgan import Generator
    from models.vqgan import VQModel

PathLike = str | os.PathLike


def load_codebook(path: PathLike, with_loss: bool = False, map_location: str | torch.device = "cpu",
                  loss_args: Mapping | None = None) -> VQModel:
    """The spectrogram codebook (VQModel); see `pipeline.pretrained.codebook.load_codebook`."""
    from pipeline.pretrained.codebook import load_codebook as load

    return load(path, with_loss=with_loss, map_location=map_location, loss_args=loss_args)


def load_transformer(path: PathLike, codebook_path: PathLike | None = None, *, n_head: int | None = None,
                     cfg: Mapping[str, Any] | None = None,
                     map_location: str | torch.device = "cpu") -> Net2NetTransformer:
    """The stage-2 transformer with its codebook; see `pipeline.pretrained.transformer.load_transformer`."""
    from pipeline.pretrained.transformer import load_transformer as load

    return load(path, codebook_path, n_head=n_head, cfg=cfg, map_location=map_location)


def load_vocoder(path: PathLike, map_location: str | torch.device = "cpu") -> Generator:
    """The MelGAN generator; see `pipeline.pretrained.vocoder.load_vocoder`."""
    from pipeline.pretrained.vocoder import load_vocoder as load

    return load(path, map_location=map_location)


def load_classifier(path: PathLike, kind: str | None = None, map_location: str | torch.device = "cpu",
                    stats: PathLike | None = None) -> nn.Module:
    """Melception or VGGish-ish with its normalisation; see `pipeline.pretrained.classifier.load_classifier`."""
    from pipeline.pretrained.classifier import load_classifier as load

    return load(path, kind=kind, map_location=map_location, stats=stats)
