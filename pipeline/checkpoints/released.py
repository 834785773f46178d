"""Where a model's files lie in a folder, and what the original's configs say about it.

Folders a loader accepts:
- the original's log folder, as its released archives unpack: `<stamp>_<name>/checkpoints/*.ckpt` +
  `configs/<stamp>-project.yaml` (+ `-lightning.yaml`). The checkpoint is picked as the original's samplers do
  (`evaluation/generate_samples.py`, `feature_extraction/demo_utils.py`): `checkpoints/last.ckpt` if present, else
  the last `*.ckpt` in sorted order. The config is every `configs/*-project.yaml` merged in sorted order, read with
  `yaml.safe_load` (nothing in it is instantiated);
- MelGAN's `vocoder/logs/vggsound/`: `best_netG.pt` (else `netG.pt`) + `args.yml`, the argparse Namespace the
  vocoder's train.py dumped with PyYAML, read by a safe loader that only knows that Namespace and pathlib paths;
- a classifier's folder (`evaluation/logs/21-05-10T09-28-40/`, `specvqgan/modules/autoencoder/lpaps/`): its one
  `*.pt`, with the normalisation stats txt when it lies beside it;
- one of our run folders: `checkpoints/best.pt`, else `checkpoints/last.pt`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import yaml

from pipeline.data.normalization import STATS_NAME
from pipeline.runs.folders import BEST, LAST, checkpoint_dir

PROJECT_CONFIGS = "*-project.yaml"
OUR_CHECKPOINTS = (BEST, LAST)  # a run folder of ours: preferred first
MELGAN_WEIGHTS = ("best_netG.pt", "netG.pt")  # preferred first
MELGAN_ARGS = "args.yml"


@dataclass(frozen=True)
class ModelFiles:
    """The checkpoint to read and what its folder says about it."""

    checkpoint: Path
    folder: Path | None = None              # the log / run folder, when there is one
    config: dict[str, Any] | None = None    # the original's merged project config (log folders)
    melgan_args: dict[str, Any] | None = None  # MelGAN's args.yml
    extras: dict[str, Path] = field(default_factory=dict)  # other files found beside (e.g. "stats")


def model_files(path: str | os.PathLike, kind: str) -> ModelFiles:
    """The checkpoint and config of `path`, a checkpoint file or a folder (module docstring).

    A checkpoint file inside an original log folder (`<folder>/checkpoints/x.ckpt`) gets that folder's config too.
    """
    path = Path(path)
    if path.is_file():
        folder = path.parent.parent if path.parent.name == "checkpoints" else None
        if folder is not None and _project_configs(folder):
            return ModelFiles(path, folder, read_project_config(folder))
        if kind == "vocoder" and (path.parent / MELGAN_ARGS).is_file():
            return ModelFiles(path, path.parent, melgan_args=read_melgan_args(path.parent / MELGAN_ARGS))
        return ModelFiles(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{kind} checkpoint {path} does not exist")
    ckpt_dir = path / "checkpoints"
    if ckpt_dir.is_dir() and list(ckpt_dir.glob("*.ckpt")):
        if not _project_configs(path):
            raise FileNotFoundError(f"{path} has checkpoints/*.ckpt but no configs/{PROJECT_CONFIGS}: the original's "
                                    f"log folder is incomplete (re-unpack its archive)")
        return ModelFiles(pick_checkpoint(ckpt_dir), path, read_project_config(path))
    ours = [checkpoint_dir(path) / name for name in OUR_CHECKPOINTS if (checkpoint_dir(path) / name).is_file()]
    if ours:
        return ModelFiles(ours[0], path)
    if kind == "vocoder":
        weights = [path / name for name in MELGAN_WEIGHTS if (path / name).is_file()]
        if weights:
            args = path / MELGAN_ARGS
            return ModelFiles(weights[0], path, melgan_args=read_melgan_args(args) if args.is_file() else None)
    if kind == "classifier":

        candidates = sorted(path.glob("*.pt"))
        if len(candidates) == 1:
            extras = {"stats": path / STATS_NAME} if (path / STATS_NAME).is_file() else {}
            return ModelFiles(candidates[0], path, extras=extras)
        if len(candidates) > 1:
            raise ValueError(f"{path} holds several checkpoints {[c.name for c in candidates]}: pass the file")
    expected = {"vocoder": f"{' or '.join(MELGAN_WEIGHTS)} (+ {MELGAN_ARGS})", "classifier": "one *.pt"}.get(
        kind, f"checkpoints/*.ckpt + configs/{PROJECT_CONFIGS}")
    raise FileNotFoundError(f"{path} is not a {kind} folder: expected {expected}, or our checkpoints/"
                            f"{'|'.join(OUR_CHECKPOINTS)}; found {sorted(p.name for p in path.iterdir())[:12]}")


def pick_checkpoint(ckpt_dir: Path) -> Path:
    """`last.ckpt` if present, else the last `*.ckpt` in sorted order (the original's samplers' rule)."""
    if (ckpt_dir / "last.ckpt").is_file():
        return ckpt_dir / "last.ckpt"
    found = sorted(ckpt_dir.glob("*.ckpt"))
    if not found:
        raise FileNotFoundError(f"no *.ckpt in {ckpt_dir}")
    return found[-1]


def _project_configs(folder: Path) -> list[Path]:
    return sorted((folder / "configs").glob(PROJECT_CONFIGS)) if (folder / "configs").is_dir() else []


def read_project_config(folder: str | os.PathLike) -> dict[str, Any]:
    """`configs/*-project.yaml` of an original log folder, merged in sorted order (later files win)."""
    files = _project_configs(Path(folder))
    if not files:
        raise FileNotFoundError(f"no configs/{PROJECT_CONFIGS} in {folder}")
    merged: dict[str, Any] = {}
    for file in files:
        try:
            cfg = yaml.safe_load(file.read_text())
        except yaml.YAMLError as error:
            raise ValueError(f"{file} is not valid YAML ({error})") from error
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
            raise ValueError(f"{file} has no `model:` section: not an original project config")
        merged = _merge(merged, cfg)
    return merged


def _merge(base: dict, over: Mapping) -> dict:
    """OmegaConf.merge for plain dicts: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, Mapping) \
            else value
    return out


def get(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """cfg["a"]["b"]... for "a.b...", or `default` where a level is missing or null."""
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or node.get(key) is None:
            return default
        node = node[key]
    return node


def require(cfg: Mapping[str, Any], dotted: str, source: str) -> Any:
    value = get(cfg, dotted)
    if value is None:
        raise ValueError(f"{source}: the project config has no `{dotted}`")
    return value


# --- MelGAN's args.yml --------------------------------------------------------------------------------
class _ArgsLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads the two Python tags a dumped argparse Namespace holds, as plain data."""


def _namespace(loader: _ArgsLoader, suffix: str, node: yaml.Node) -> dict:
    if suffix != "argparse.Namespace" or not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, f"refused tag !!python/object:{suffix}", node.start_mark)
    return loader.construct_mapping(node, deep=True)


def _path(loader: _ArgsLoader, suffix: str, node: yaml.Node) -> str:
    if suffix not in ("pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.Path", "pathlib.PurePosixPath"):
        raise yaml.constructor.ConstructorError(None, None, f"refused tag !!python/object/apply:{suffix}",
                                                node.start_mark)
    if isinstance(node, yaml.MappingNode):  # the long form {args: [...], state: ...}
        parts = loader.construct_mapping(node, deep=True).get("args", [])
    else:
        parts = loader.construct_sequence(node, deep=True)
    return str(PurePosixPath(*map(str, parts)))


_ArgsLoader.add_multi_constructor("tag:yaml.org,2002:python/object:", _namespace)
_ArgsLoader.add_multi_constructor("tag:yaml.org,2002:python/object/apply:", _path)


def read_melgan_args(path: str | os.PathLike) -> dict[str, Any]:
    """The arguments in MelGAN's `args.yml` (a PyYAML dump of the training script's argparse Namespace)."""
    path = Path(path)
    try:
        args = yaml.load(path.read_text(), Loader=_ArgsLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not a MelGAN args.yml ({error}); only an argparse Namespace of plain values "
                         f"and paths is read") from error
    if not isinstance(args, dict):
        raise ValueError(f"{path}: expected the MelGAN training arguments, got {type(args).__name__}")
    return args
