"""load_classifier: VGGish-ish or Melception from our checkpoints or the original's training checkpoints.

Accepted files (read with weights_only=True; numpy scalars in the original's `metrics` are allowed):
- ours: {"format": "specvqgan-pipeline", "kind": "classifier", "model_args": {"arch": "vggishish" |
  "melception", ...constructor arguments}, "state_dict": {...}};
- the original's `<Model>-<timestamp>.pt`: {loss, metrics, epoch, optimizer, model} with the state dict in `model`;
- a bare state dict.
The architecture comes from the keys (`Mixed_*` -> Melception, `features.*` + `classifier.*` -> VGGish-ish), its
sizes from the tensor shapes, and `model_args` where the shapes are ambiguous. Loading is strict.
"""
from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from models.melception import Melception
from models.vggishish import VGGishish
from pipeline.pretrained.vocoder import FORMAT, load_strictly, read_checkpoint

ARCHS = ("vggishish", "melception")


def _numpy_safe_globals() -> list:
    """The numpy scalar and dtype constructors a training checkpoint's `metrics` may pickle (numpy 1 and 2)."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    safe: list = [np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"),
                  (scalar, "numpy._core.multiarray.scalar")]
    safe += [type(np.dtype(t)) for t in ("f8", "f4", "i8", "i4", "b1")]
    return safe


def detect_arch(state_dict: Mapping[str, Any]) -> str:
    """'melception' or 'vggishish' from the key names."""
    if any(k.startswith("Mixed_") for k in state_dict) and "fc.weight" in state_dict:
        return "melception"
    if any(k.startswith("features.") for k in state_dict) and any(k.startswith("classifier.") for k in state_dict):
        return "vggishish"
    raise ValueError(f"cannot tell the classifier architecture from the keys (first keys {list(state_dict)[:6]}): "
                     f"expected Melception's `Mixed_*` / `fc.*` or VGGish-ish's `features.*` / `classifier.*`")


def infer_melception_args(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    return {"num_classes": int(state_dict["fc.weight"].shape[0]),
            "aux_logits": any(k.startswith("AuxLogits.") for k in state_dict)}


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
                    map_location: str | torch.device = "cpu") -> nn.Module:
    """VGGishish or Melception of `path` in eval mode; `kind` ('vggishish' / 'melception') asserts which."""
    if kind is not None and kind not in ARCHS:
        raise ValueError(f"kind must be one of {ARCHS} or None, got {kind!r}")
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        obj = read_checkpoint(path, map_location)
    model_args: Mapping[str, Any] = {}
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("kind") != "classifier":
            raise ValueError(f"{path} is a {obj.get('kind')!r} checkpoint of this project, not a classifier")
        state_dict, model_args = obj["state_dict"], dict(obj.get("model_args") or {})
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state_dict = obj["model"]  # the original's {loss, metrics, epoch, optimizer, model}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict = obj
    else:
        raise ValueError(f"{path} is not a classifier checkpoint (ours, the original's with a `model` state dict, "
                         f"or a bare state dict); found {type(obj).__name__}")
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}  # saved from DataParallel
    arch = model_args.get("arch") or detect_arch(state_dict)
    if kind is not None and arch != kind:
        raise ValueError(f"{path} holds a {arch} classifier, but {kind} was asked for")
    model = _build(arch, state_dict, model_args)
    load_strictly(model, state_dict, path, assign=True)
    return model.eval()
