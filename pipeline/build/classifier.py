"""load_classifier: VGGish-ish or Melception from our checkpoints or the original's training checkpoints.

`load_classifier` takes a file or a folder: the original's release folder holding one `.pt` (and, beside it, the
normalisation stats train_means_stds_melspec_10s_22050hz.txt, as `specvqgan/modules/autoencoder/lpaps/` ships
vggishish16.pt) or one of our run folders. Accepted files (read by `pipeline.checkpoints.reading.read_checkpoint`, which
admits the numpy scalars of the original's `metrics`):
- ours: {"format": "specvqgan-pipeline", "kind": "classifier", "model_args": {"arch": "vggishish" |
  "melception", ...constructor arguments}, "state_dict": {...}, "normalization": {"mean", "std"}, "classes"};
- the original's `melception-21-05-10T09-28-40.pt` / `vggishish16.pt`: {loss, metrics, epoch, optimizer, model}
  with the state dict in `model`;
- a bare state dict.
The architecture comes from the keys (`Mixed_*` -> Melception, `features.*` + `classifier.*` -> VGGish-ish), its
sizes from the tensor shapes, and `model_args` where the shapes are ambiguous. Loading is strict.
"""
from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.melception import Melception
from models.vggishish import VGGishish
from pipeline.checkpoints.reading import checkpoint_format, describe, load_state_strictly, read_checkpoint
from pipeline.checkpoints.released import model_files
from pipeline.checkpoints.zoo import locate
from pipeline.data.normalization import Normalize, read_stats, stats_tensors

FEATURES = ("2048", "logits_unbiased", "logits")  # Melception's features for the metrics (original's features_list)

KIND = "classifier"

ARCHS = ("vggishish", "melception")


def detect_arch(state_dict: Mapping[str, Any]) -> str:
    """'melception' or 'vggishish' from the key names."""
    if any(k.startswith("Mixed_") for k in state_dict) and "fc.weight" in state_dict:
        return "melception"
    if any(k.startswith("features.") for k in state_dict) and any(k.startswith("classifier.") for k in state_dict):
        return "vggishish"
    raise ValueError(f"cannot tell the classifier architecture from the keys (first keys {list(state_dict)[:6]}): "
                     f"expected Melception's `Mixed_*` / `fc.*` or VGGish-ish's `features.*` / `classifier.*`")


def infer_melception_args(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Classes, auxiliary head and width multiplier (the first conv has 32 x width channels) from the shapes."""
    return {"num_classes": int(state_dict["fc.weight"].shape[0]),
            "aux_logits": any(k.startswith("AuxLogits.") for k in state_dict),
            "width": int(state_dict["Conv2d_1a_3x3.conv.weight"].shape[0]) / 32}


def infer_vggishish_args(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Conv stack, BN, head width and classes from the shapes; pool_hw assumes the paper's (5, 10) if it fits."""
    convs = sorted(int(m.group(1)) for k in state_dict if (m := re.fullmatch(r"features\.(\d+)\.weight", k))
                   and state_dict[k].dim() == 4)
    use_bn = any(re.fullmatch(r"features\.\d+\.running_mean", k) for k in state_dict)
    step = 3 if use_bn else 2  # conv (+ bn) + relu
    layers: list = []
    i = 0
    while i <= convs[-1]:
        if i in convs:
            layers.append(int(state_dict[f"features.{i}.weight"].shape[0]))
            i += step
        else:
            layers.append("MP")  # a parameter-free max-pool
            i += 1
    linears = sorted(int(m.group(1)) for k in state_dict if (m := re.fullmatch(r"classifier\.(\d+)\.weight", k)))
    first = state_dict[f"classifier.{linears[0]}.weight"]
    args: dict[str, Any] = {"conv_layers": layers, "use_bn": use_bn, "hidden": int(first.shape[0]),
                            "num_classes": int(state_dict[f"classifier.{linears[-1]}.weight"].shape[0])}
    if first.shape[1] == layers[-1 if layers[-1] != "MP" else -2] * 50:
        args["pool_hw"] = (5, 10)
    return args


def _build(arch: str, state_dict: Mapping[str, torch.Tensor], model_args: Mapping[str, Any]) -> nn.Module:
    cls = Melception if arch == "melception" else VGGishish
    inferred = infer_melception_args(state_dict) if arch == "melception" else infer_vggishish_args(state_dict)
    accepted = set(inspect.signature(cls).parameters)
    args = {**inferred, **{k: v for k, v in model_args.items() if k in accepted}}
    with torch.device("meta"):  # no time spent initialising weights that the file replaces
        return cls(**args)


def load_classifier(path: str | os.PathLike, kind: str | None = None,
                    map_location: str | torch.device = "cpu", stats: str | os.PathLike | None = None) -> nn.Module:
    """VGGishish or Melception of `path` (a file or a folder) in eval mode; `kind` ('vggishish' / 'melception')
    asserts which.

    The model carries `normalization`, the (mean, std) float32 tensors (n_mels,) its inputs are standardised with
    (`StandardNormalizeAudio` on [0, 1] mels), or None when unknown: from `stats` (the original's 80 x [mean, std]
    txt, train_means_stds_melspec_10s_22050hz.txt) when given, else our checkpoint's, else the txt lying beside a
    released checkpoint in its folder. `classes` is the class names our checkpoints store, else None.
    """
    if kind is not None and kind not in ARCHS:
        raise ValueError(f"kind must be one of {ARCHS} or None, got {kind!r}")
    files = model_files(locate(path, KIND), KIND)
    path = files.checkpoint
    obj = read_checkpoint(path, map_location)
    fmt = checkpoint_format(obj)
    model_args: Mapping[str, Any] = {}
    normalization, classes = None, None
    if fmt == "ours":
        if obj.get("kind") != "classifier":
            raise ValueError(f"{path} is a {obj.get('kind')!r} checkpoint of this project, not a classifier")
        state_dict, model_args = obj["state_dict"], dict(obj.get("model_args") or {})
        norm, classes = obj.get("normalization"), obj.get("classes")
        if norm is not None:
            normalization = (torch.as_tensor(norm["mean"]).float().flatten(),
                             torch.as_tensor(norm["std"]).float().flatten())
    elif fmt == "training":
        state_dict = obj["model"]  # the original's {loss, metrics, epoch, optimizer, model}
    elif fmt == "state_dict":
        state_dict = obj
    else:
        raise ValueError(f"{path} is not a classifier checkpoint (ours, the original's with a `model` state dict, "
                         f"or a bare state dict); found {describe(obj)}")
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}  # saved from DataParallel
    arch = model_args.get("arch") or detect_arch(state_dict)
    if kind is not None and arch != kind:
        raise ValueError(f"{path} holds a {arch} classifier, but {kind} was asked for")
    model = _build(arch, state_dict, model_args)
    load_state_strictly(model, state_dict, path, arch, assign=True)
    stats = stats if stats is not None else (files.extras.get("stats") if normalization is None else None)
    if stats is not None:

        normalization = stats_tensors(stats, "classifier.stats")
    model.normalization, model.classes = normalization, classes
    return model.eval()


def load_melception(ckpt: str, stats: str | None, device: torch.device):
    """(Melception in eval mode, Normalize, the classes it was trained on or None) from our or the original's file."""

    model = load_classifier(ckpt, kind="melception").to(device)  # with the statistics our checkpoints hold
    if model.normalization is not None:
        normalize = Normalize(*model.normalization)
    elif stats and Path(stats).is_file():
        normalize = Normalize(*read_stats(stats))
    else:
        raise FileNotFoundError(f"{ckpt} holds no normalisation statistics and classifier.stats={stats!r} does not "
                                f"exist: pass the statistics file the classifier was trained with (the released "
                                f"Melception's: classifier.stats=vggsound_mel_stats)")
    return model, normalize.to(device), model.classes
