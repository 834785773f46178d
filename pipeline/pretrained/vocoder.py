"""load_vocoder: a MelGAN generator from our checkpoint or the original's bare `best_netG.pt` state dict.

Accepted files (detected from the content, read with weights_only=True):
- ours: {"format": "specvqgan-pipeline", "kind": "vocoder", "model_args": {...}, "state_dict": {...}}. The state
  dict is the generator's (keys `model.*`, old-style or parametrised weight norm), or the whole task's with the
  generator bare or under `netG.` (the `netD.*` discriminator keys are ignored); `model_args` holds the
  Generator's arguments, flat or under "netG".
- the original's: a bare generator state dict with old-style weight norm (`model.1.weight_g`, `weight_v`);
  input_size, ngf, n_residual_layers and ratios are read from the tensor shapes.
Loading is strict: missing or unexpected keys raise an error listing them.
"""
from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from models.melgan import Generator, from_legacy_weight_norm

FORMAT = "specvqgan-pipeline"


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(weights_only=True) with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a trained model")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"cannot read {path} as a weights-only torch checkpoint ({type(e).__name__}: {e})") from e


def load_strictly(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                  assign: bool = False) -> nn.Module:
    """model.load_state_dict(strict) with an error that lists missing / unexpected keys and names the file.

    `assign` takes the file's tensors as they are (for a model built on the meta device).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in sorted(set(own) & set(state_dict)) if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(f"{path} does not match {type(model).__name__}: missing keys {missing[:20]}"
                         f"{' ...' if len(missing) > 20 else ''} ({len(missing)}), unexpected keys "
                         f"{unexpected[:20]}{' ...' if len(unexpected) > 20 else ''} ({len(unexpected)}), "
                         f"shape mismatches {wrong[:20]} ({len(wrong)})")
    model.load_state_dict(state_dict, strict=True, assign=assign)
    return model


def infer_generator_args(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Generator arguments from a generator state dict (legacy or parametrised weight-norm keys)."""
    sd = from_legacy_weight_norm(state_dict)
    pattern = r"model\.(\d+)\.parametrizations\.weight\.original1"
    top = sorted({int(m.group(1)) for k, v in sd.items() if (m := re.fullmatch(pattern, k)) and v.dim() == 3})
    blocks = {int(m.group(1)) for k in sd if (m := re.fullmatch(r"model\.(\d+)\.shortcut\..*", k))}
    if len(top) < 3 or "model.1.parametrizations.weight.original1" not in sd:
        raise ValueError("not a MelGAN generator state dict: no weight-normed `model.N` convolutions")
    first = sd["model.1.parametrizations.weight.original1"]  # (16 * ngf, input_size, 7)
    ups = top[1:-1]  # the transposed convs between the input and output convs
    ratios = [int(sd[f"model.{i}.parametrizations.weight.original1"].shape[-1]) // 2 for i in ups]  # kernel = 2r
    return {"input_size": int(first.shape[1]), "ngf": int(first.shape[0]) // 2 ** len(ratios),
            "n_residual_layers": len(blocks) // max(1, len(ratios)), "ratios": ratios}


def _generator_args(model_args: Mapping[str, Any]) -> dict[str, Any]:
    args = model_args.get("netG", model_args)
    accepted = set(inspect.signature(Generator).parameters)
    return {k: (list(v) if k == "ratios" else v) for k, v in dict(args).items() if k in accepted}


def load_vocoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Generator:
    """The MelGAN generator of `path` in eval mode (see the module docstring for the accepted layouts)."""
    obj = read_checkpoint(path, map_location)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("kind") != "vocoder":
            raise ValueError(f"{path} is a {obj.get('kind')!r} checkpoint of this project, not a vocoder")
        state_dict = dict(obj["state_dict"])
        if any(k.startswith("netG.") for k in state_dict):
            state_dict = {k[len("netG."):]: v for k, v in state_dict.items() if k.startswith("netG.")}
        else:  # the training task's layout: the generator bare (as best_netG.pt), the discriminator under netD.
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("netD.")}
        args = _generator_args(obj.get("model_args") or {}) or infer_generator_args(state_dict)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if "model.1.weight_v" not in obj and "model.1.parametrizations.weight.original1" not in obj:
            raise ValueError(f"{path} holds a state dict but not a MelGAN generator's (no `model.1.weight_v`; "
                             f"first keys {list(obj)[:5]})")
        state_dict, args = obj, infer_generator_args(obj)
    else:
        raise ValueError(f"{path} is neither a vocoder checkpoint of this project nor the original's bare netG "
                         f"state dict (found {type(obj).__name__} with keys "
                         f"{list(obj)[:8] if isinstance(obj, dict) else '-'})")
    model = Generator(**args)
    load_strictly(model, from_legacy_weight_norm(state_dict), path)
    return model.eval()
