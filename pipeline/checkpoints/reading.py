"""Reading checkpoint files safely, telling their formats apart, and loading their state strictly.

Every checkpoint `pipeline.build` and the training loop read goes through `read_checkpoint`: ours, the
original's PyTorch Lightning 1.2.x `.ckpt` files as released, bare state dicts (MelGAN's `best_netG.pt`) and the
classifiers' training dicts (`melception-21-05-10T09-28-40.pt`, `vggishish16.pt`). It is
`torch.load(weights_only=True)`: PyTorch's restricted unpickler, which builds tensors, containers, numbers and
strings and refuses every other global *before* it is imported. Two kinds of global are admitted on top
(`torch.serialization.safe_globals`):
- the Lightning callback classes a 1.2.x checkpoint uses as the keys of `callbacks` (`LIGHTNING_CALLBACKS`), as
  inert stand-ins registered under their names, never called; `read_checkpoint` turns the keys into the names.
  They are the only non-tensor globals the released checkpoints name: Lightning 1.2.10 pickles OmegaConf objects
  only with the hyper-parameters (`hyper_parameters`, `hparams_type`), which the original's models never save;
- numpy's scalar, dtype and array constructors, which the classifiers' `metrics` pickle (`pipeline.files.safe_pickle`).
A file naming any other global (`os.system`, `builtins.eval`, ...) raises `UnsafeCheckpointError` naming it, and
nothing it names has been imported or run. Lightning need not be installed.
"""
from __future__ import annotations

import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from pipeline.checkpoints.released import read_melgan_args
from pipeline.files.safe_pickle import UnsafePickleError, numpy_scalar_globals

FORMAT = "specvqgan-pipeline"  # the `format` key of this project's checkpoints

# the callback classes PyTorch Lightning 1.2.x writes as keys of a checkpoint's `callbacks` (their states are
# plain dicts of numbers, strings and tensors)
LIGHTNING_CALLBACKS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
)


class LightningStandIn:
    """An inert placeholder for a class a Lightning checkpoint names; `path` is the name it stands for."""

    path: str = ""

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{self.path} is a placeholder for a checkpoint key; it is never instantiated")


def _stand_in(path: str) -> type:
    attributes = {"path": path, "__module__": __name__, "__doc__": f"Stands in for {path}."}
    return type(path.rsplit(".", 1)[1], (LightningStandIn,), attributes)


_STAND_INS = {path: _stand_in(path) for path in LIGHTNING_CALLBACKS}
SAFE_GLOBALS: list = [(cls, path) for path, cls in _STAND_INS.items()] + numpy_scalar_globals()


class UnsafeCheckpointError(UnsafePickleError):
    """A checkpoint names a global outside the allowlist; nothing it named was imported or called."""


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    mmap: bool = False) -> Any:
    """The object saved in `path`, unpickled without running code (module docstring).

    Lightning's class-keyed `callbacks` come back keyed by the class names (strings). Raises FileNotFoundError,
    UnsafeCheckpointError (a refused global, named), or ValueError (not a readable torch file), each naming `path`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist" if not path.exists() else
                                f"checkpoint {path} is a folder, not a file")
    if mmap and not zipfile.is_zipfile(path):
        mmap = False  # torch < 1.6's format (or a bare pickle) cannot be mapped: read it through the same unpickler
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        try:
            try:
                obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
            except UnicodeDecodeError:  # a Python 2 pickle (the 2017 BN-Inception weights): its str are bytes
                obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap, encoding="latin1")
        except pickle.UnpicklingError as error:
            refused = _refused_globals(path) or re.findall(r"GLOBAL ([\w.]+)", str(error))
            if refused:
                raise UnsafeCheckpointError(
                    f"{path}: refused global(s) {', '.join(refused)}; a checkpoint may hold tensors, containers, "
                    f"numbers, strings and the Lightning callback keys {list(LIGHTNING_CALLBACKS)} only. Nothing "
                    f"was run. The file is corrupt or was tampered with: re-download it (stages.download checks "
                    f"its md5)") from None
            reason = [line for line in str(error).splitlines() if line.strip() and not any(
                advice in line for advice in ("weights_only", "documentation", "Weights only"))]  # torch's advice
            raise UnsafeCheckpointError(f"{path}: refused by the restricted unpickler ({' '.join(reason)}); "
                                        f"nothing was run. Re-download or re-save the file") from None
        except Exception as error:  # noqa: BLE001 - truncated, not a torch file, ...: re-raised naming the file
            raise ValueError(f"cannot read {path} as a torch checkpoint ({type(error).__name__}: {error}); the "
                             f"file may be truncated: re-download or re-save it") from error
    if isinstance(obj, dict) and isinstance(obj.get("callbacks"), dict):
        obj["callbacks"] = {getattr(k, "path", k): v for k, v in obj["callbacks"].items()}
    return obj


def _refused_globals(path: Path) -> list[str]:
    """The globals in `path`'s pickle outside the allowlist, read without unpickling (empty if unknown): torch's own
    scan for its zip format; for the legacy format and bare pickles, the pickles at the start of the file read
    opcode by opcode (`pickletools.genops` decodes, it never imports or calls)."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - an unreadable archive: the unpickler's own message has to do
            return []
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = set(_get_allowed_globals()) | {name for _, name in SAFE_GLOBALS}
    named: list[str] = []
    with open(path, "rb") as f:
        while True:  # the legacy format is several pickles in a row, then raw storage bytes
            strings: list[str] = []
            try:
                for opcode, arg, _ in pickletools.genops(f):
                    if opcode.name == "GLOBAL":
                        named.append(str(arg).replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        named.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # noqa: BLE001 - past the pickles (storage bytes) or a damaged file: stop reading
                break
    return sorted({name for name in named if name not in allowed})


def checkpoint_format(obj: Any) -> str:
    """What `read_checkpoint` returned, from its content:

    "ours"       {"format": "specvqgan-pipeline", "kind", "model_args", "state_dict", ...}
    "lightning"  the original's Lightning checkpoint {"state_dict", "epoch", "global_step", ...}
    "training"   the original's classifier training dict {"model": state dict, "optimizer", "epoch", ...}
    "state_dict" a bare {name: tensor} mapping (MelGAN's best_netG.pt)
    "unknown"    anything else
    """
    if not isinstance(obj, Mapping):
        return "unknown"
    if obj.get("format") == FORMAT:
        return "ours"
    if isinstance(obj.get("state_dict"), Mapping):
        return "lightning"
    if isinstance(obj.get("model"), Mapping):
        return "training"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "state_dict"
    return "unknown"


def describe(obj: Any) -> str:
    """A short description of an unrecognised checkpoint object, for error messages."""
    if isinstance(obj, Mapping):
        return f"a dict with keys {sorted(map(str, obj))[:10]}"
    return f"a {type(obj).__name__}"


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of `state` under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def state_mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, Any], source: str, what: str) -> str | None:
    """A one-line description of how `got` differs from `expected` (keys and shapes), or None if it fits."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k} {tuple(got[k].shape)} in the file vs {tuple(expected[k].shape)}"
             for k in sorted(set(expected) & set(got)) if tuple(expected[k].shape) != tuple(got[k].shape)]
    if not (missing or unexpected or wrong):
        return None

    def listed(items: list[str]) -> str:
        return f"({len(items)}): {items[:20]}{' ...' if len(items) > 20 else ''}"

    parts = [f"missing keys {listed(missing)}" if missing else "",
             f"unexpected keys {listed(unexpected)}" if unexpected else "",
             f"wrong shapes {listed(wrong)}" if wrong else ""]
    return f"{source} does not match the {what} built for it: " + "; ".join(p for p in parts if p)


def load_state_strictly(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike,
                        what: str | None = None, *, assign: bool = False) -> nn.Module:
    """module.load_state_dict(state, strict=True), after an error naming `source` and listing every missing
    key, unexpected key and wrong shape. `assign` takes the file's tensors as they are (a model on `meta`)."""
    problem = state_mismatch(module.state_dict(), state, str(source), what or type(module).__name__)
    if problem:
        raise ValueError(problem)
    module.load_state_dict(dict(state), strict=True, assign=assign)
    return module


def check_whole(path: str | os.PathLike) -> None:
    """A downloaded file with no published md5 or size is accepted only when it reads whole (ValueError otherwise):
    a torch file is a zip whose every member matches its CRC and whose object the restricted reader loads; a YAML
    file parses to a mapping. A file cut short loses its zip directory or its YAML's end, and fails here."""
    path = Path(path)
    if path.suffix in (".yml", ".yaml"):
        args = read_melgan_args(path) if path.name == "args.yml" else yaml.safe_load(path.read_text())
        if not isinstance(args, Mapping) or not args:
            raise ValueError(f"{path} does not read as a YAML mapping")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not a whole torch file ({error})") from None
    if bad is not None:
        raise ValueError(f"{path}: member {bad} fails its CRC check")
    read_checkpoint(path)
