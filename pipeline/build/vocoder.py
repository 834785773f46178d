"""load_vocoder: a MelGAN generator from our checkpoint or the original's release (`vocoder/logs/vggsound/`).

`load_vocoder` takes a file or a folder: the original's `vocoder/logs/vggsound/` (`best_netG.pt` + `args.yml`,
whose n_mel_channels / ngf / n_residual_layers build the Generator, as the original's `load_vocoder` does) or one
of our run folders. Accepted files (detected from the content, read by `pipeline.checkpoints.reading.read_checkpoint`):
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
from typing import Any, Mapping

import numpy as np
import torch
from torch.nn.utils import parametrize

from models.melgan import Generator, from_legacy_weight_norm
from pipeline.checkpoints.reading import (
    checkpoint_format,
    describe,
    load_state_strictly,
    read_checkpoint,
    strip_prefix,
)
from pipeline.checkpoints.released import model_files
from pipeline.checkpoints.zoo import locate, resolve
from pipeline.media.audio import SR, fit_to_length
from pipeline.media.mel import HOP, inverse_mel

KIND = "vocoder"


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


def _args_from_melgan_yml(args: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Generator kwargs from MelGAN's args.yml (the original's Generator(n_mel_channels, ngf, n_residual_layers))."""
    names = {"n_mel_channels": "input_size", "ngf": "ngf", "n_residual_layers": "n_residual_layers"}
    missing = [k for k in names if k not in args]
    if missing:
        raise ValueError(f"{source}: args.yml has no {missing}: not MelGAN's training arguments")
    return {ours: int(args[theirs]) for theirs, ours in names.items()}


def load_vocoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Generator:
    """The MelGAN generator of `path`, a file or a folder, in eval mode (module docstring)."""
    files = model_files(locate(path, KIND), KIND)
    path = files.checkpoint
    obj = read_checkpoint(path, map_location)
    fmt = checkpoint_format(obj)
    if fmt == "ours":
        if obj.get("kind") != KIND:
            raise ValueError(f"{path} is a {obj.get('kind')!r} checkpoint of this project, not a vocoder")
        state_dict = dict(obj["state_dict"])
        if any(k.startswith("netG.") for k in state_dict):
            state_dict = strip_prefix(state_dict, "netG.")
        else:  # the training task's layout: the generator bare (as best_netG.pt), the discriminator under netD.
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("netD.")}
        args = _generator_args(obj.get("model_args") or {}) or infer_generator_args(state_dict)
    elif fmt == "state_dict":
        if "model.1.weight_v" not in obj and "model.1.parametrizations.weight.original1" not in obj:
            raise ValueError(f"{path} holds a state dict but not a MelGAN generator's (no `model.1.weight_v`; "
                             f"first keys {list(obj)[:5]})")
        state_dict, args = obj, infer_generator_args(obj)
        if files.melgan_args is not None:  # the released folder: its args.yml builds the model, as the original
            args = {**args, **_args_from_melgan_yml(files.melgan_args, f"{files.folder}/args.yml")}
    else:
        raise ValueError(f"{path} is neither a vocoder checkpoint of this project nor the original's bare netG "
                         f"state dict (found {describe(obj)})")
    model = Generator(**args)
    load_state_strictly(model, from_legacy_weight_norm(state_dict), path, "MelGAN generator")
    return model.eval()


class Vocoder:
    """Callable mel -> waveform. `generator` None means Griffin-Lim (`pipeline.media.mel.inverse_mel`).

    Args:
        generator: a MelGAN Generator (eval mode) or None.
        fast: synthesise with `generator.for_inference()` (weight norm folded, time-major matrix products,
            equal to the Generator's output to ~1e-6; 2x faster on CPU, where it is used). It is a snapshot
            of the weights at construction. False runs the Generator itself.
        device: where the generator runs ("cpu", "cuda", ...); defaults to its parameters' device.
        batch_size: mels per generator call when given a larger batch (bounds memory on long inputs).
        n_iter: Griffin-Lim iterations (the original's 32).
    """

    sample_rate = SR
    hop_length = HOP

    def __init__(self, generator: torch.nn.Module | None = None, device: str | torch.device | None = None,
                 batch_size: int = 16, n_iter: int = 32, fast: bool = True):
        self.generator = generator
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.fast = None
        if generator is not None:
            self.device = torch.device(device) if device is not None else next(generator.parameters()).device
            self.generator = generator.to(self.device).eval()
            if fast and hasattr(generator, "for_inference"):
                self.fast = generator.for_inference()
        else:
            self.device = torch.device("cpu")

    @property
    def name(self) -> str:
        return "melgan" if self.generator is not None else "griffinlim"

    def to(self, device: str | torch.device) -> Vocoder:
        if self.generator is not None:
            self.device = torch.device(device)
            self.generator.to(self.device)
            if self.fast is not None:
                self.fast.to(self.device)
        return self

    @torch.no_grad()
    def _melgan(self, mel: torch.Tensor) -> torch.Tensor:
        out = []
        with parametrize.cached():  # weight-normed weights computed once per call, not once per chunk
            for chunk in mel.split(self.batch_size):
                chunk = chunk.to(self.device, torch.float32)
                use_fast = self.fast is not None and self.device.type == "cpu"  # GPUs: cuDNN's convs
                wave = self.fast(chunk) if use_fast else self.generator(chunk)  # (b, 1, 256 * T)
                out.append(wave.squeeze(1).float())
        return torch.cat(out)  # (B, 256 * T)

    def _griffinlim(self, mel: np.ndarray) -> np.ndarray:
        wave = inverse_mel(mel, sr=SR, n_iter=self.n_iter)  # (256 * (T - 1),)
        return fit_to_length(wave, HOP * mel.shape[-1]).astype(np.float32, copy=False)

    def __call__(self, mel: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """np (80, T) -> np float32 (256 T,); tensor (B, 80, T) or (80, T) -> tensor (B, 256 T) or (256 T,)."""
        is_tensor = isinstance(mel, torch.Tensor)
        x = mel if is_tensor else torch.from_numpy(np.asarray(mel, dtype=np.float32))
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)  # (1, 80, T)
        if x.dim() != 3 or x.shape[1] != 80:
            raise ValueError(f"the vocoder wants a [0, 1] mel (80, T) or (B, 80, T), got {tuple(x.shape)}")
        if self.generator is not None:
            wave = self._melgan(x)
        else:
            mels = x.detach().cpu().float().numpy()
            wave = torch.from_numpy(np.stack([self._griffinlim(m) for m in mels]))
        if is_tensor:
            wave = wave.to(mel.device)
            return wave[0] if single else wave
        wave = wave.cpu().numpy()
        return wave[0] if single else wave


def load_vocoder_or_griffinlim(ckpt: str | os.PathLike | None, device: str | torch.device = "cpu",
                               zoo_cfg=None, **kwargs) -> Vocoder:
    """A Vocoder from a MelGAN checkpoint (ours or the original's netG, a file or folder, or a released name such
    as `melgan`, fetched into the stage config `zoo_cfg`'s paths.models), or Griffin-Lim when `ckpt` is None/''."""
    if ckpt in (None, ""):
        return Vocoder(None, **kwargs)

    ckpt = resolve(ckpt, cfg=zoo_cfg)

    return Vocoder(load_vocoder(ckpt, map_location="cpu"), device=device, **kwargs)
