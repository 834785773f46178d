"""The device rule of every stage's `device` key (and `trainer.device`): `auto` is a CUDA GPU when one is present,
else the CPU; `cpu` forces the CPU; `cuda` / `cuda:N` name a GPU."""
from __future__ import annotations

import torch

AUTO = "auto"


def resolve_device(value: str) -> torch.device:
    """The torch device a `device` key names (the rule above)."""
    if str(value) == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(value))


def forces_cpu(value: str) -> bool:
    """Whether a `device` key keeps Accelerate on the CPU (Accelerator(cpu=...), PartialState(cpu=...))."""
    return resolve_device(value).type == "cpu"


def device_name(value: str) -> str:
    """What a report says the work ran on: the GPU's name, or `cpu`."""
    device = resolve_device(value)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
