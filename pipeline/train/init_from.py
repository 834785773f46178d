"""Starting a new training run from another model's weights (`codebook.init_from=`, `transformer.init_from=`).

The source is one of our checkpoints (a file or a run folder), an original log folder or `.ckpt`, or a released
name (`pipeline/checkpoints/zoo.yaml`, fetched when missing). It is read in the task's preflight, before any
training, and only for a new run: a run folder that holds `checkpoints/last.pt` resumes from it and never reads the
source again. The source must fit what the run trains on; each misfit is refused naming both sizes and the fix:
- a transformer: its vocabulary is the configured codebook's number of codes, its token grid that codebook's grid
  of one clip, its condition the configured one (kind, feature width and backbone, frames per clip, classes), its
  architecture the configured one (layers, heads, width);
- a codebook: its architecture (`codebook.model`) is the configured one; its discriminator, when the source has
  one, the configured loss's.
The first weights of the new run are then the source's (its optimisers start afresh, at step 0). The value of
`init_from` is part of the run's config, so of its folder name and of `run.json`: another source is another run.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf

from pipeline.build.codebook import infer_loss_args, read_codebook_file
from pipeline.build.transformer import KIND as TRANSFORMER
from pipeline.build.transformer import load_transformer
from pipeline.checkpoints.released import model_files
from pipeline.checkpoints.zoo import released_meta, resolve
from pipeline.generate.loading import read_meta
from pipeline.runs.folders import checkpoint_path
from pipeline.runs.identity import flatten

log = logging.getLogger(__name__)

ARCHITECTURE = ("n_layer", "n_head", "n_embd")  # the GPT's sizes a config states and the weights must have


class SourceMismatch(ValueError):
    """The model given as `init_from` does not fit the data or the configured model; nothing was trained."""


@dataclass
class InitSource:
    """The weights a new run starts from."""

    key: str                               # the config key that named it (`transformer.init_from`)
    value: str                             # what it was set to (a path or a released name)
    path: Path                             # the file or folder read
    state_dict: dict[str, torch.Tensor]    # in the key layout of the task's module(s)

    def describe(self) -> str:
        return f"{self.key}={self.value}" + ("" if str(self.path) == self.value else f" ({self.path})")


def starts_fresh(run_dir: str | Path | None) -> bool:
    """Whether a run in `run_dir` starts at step 0 (no `checkpoints/last.pt` to resume)."""
    return run_dir is None or not checkpoint_path(run_dir, "last").exists()


def _resolve(value: str, key: str, cfg: Mapping[str, Any]) -> Path:
    path = resolve(value, cfg=cfg)  # a path, or a released name (fetched when missing; zoo.fetch=false never)
    if path is None or not path.exists():
        raise FileNotFoundError(f"{key}={value} does not exist: pass one of our checkpoints (a .pt or a run "
                                f"folder), an original log folder or .ckpt, or a released name (python -m "
                                f"stages.download what=list)")
    return path


# ------------------------------------------------------------------------------------------------ transformer
def _source_features(value: str, path: Path, cfg: Mapping[str, Any]) -> str | None:
    """The backbone the source transformer was conditioned on (`efficientnet_lite0`, `resnet50`, ...), if known."""
    released = released_meta(value, cfg)
    if released is not None:
        return (released.get("features") or {}).get("name")
    files = model_files(path, TRANSFORMER)
    return (read_meta(files.checkpoint).get("features") or {}).get("name")


def transformer_misfits(source: Mapping[str, Any], wanted: Mapping[str, Any], features: Mapping[str, Any],
                        source_features: str | None, codebook_ckpt: str) -> list[str]:
    """Why a source transformer (its model_args) cannot start a run that builds `wanted` (model_args from the
    config over the configured codebook) on data with `features` (the features config): one sentence per misfit,
    naming both sizes and the fix. Empty when it fits."""
    out = []
    if source["condition"] != wanted["condition"]:
        out.append(f"the source is conditioned on {source['condition']}, this config on {wanted['condition']}: set "
                   f"transformer.condition={source['condition']}")
    elif wanted["condition"] == "features":
        kind = f" {source_features}" if source_features else ""
        ours = f"{features.get('depth')}-wide {features.get('name')}"
        if int(source["feat_depth"]) != int(wanted["feat_depth"]):
            fix = (f"extract `features={source_features}` (python -m stages.extract_features features="
                   f"{source_features}) and train with features={source_features}" if source_features
                   else f"extract features of the source's backbone ({source['feat_depth']} wide)")
            out.append(f"the source reads {source['feat_depth']}-wide{kind} features, this data set has {ours} "
                       f"features: {fix}")
        elif source_features and features.get("name") and source_features != features.get("name"):
            out.append(f"the source reads {source_features} features, this data set has {ours} features (as wide, "
                       f"but another network's): extract `features={source_features}` and train with "
                       f"features={source_features}")
    if wanted["condition"] == source["condition"] == "class" and source.get("n_classes") != wanted.get("n_classes"):
        out.append(f"the source has {source.get('n_classes')} classes, this config {wanted.get('n_classes')}: set "
                   f"transformer.n_classes={source.get('n_classes')} (this data set's class ids must be below it)")
    if wanted["condition"] != "class" and source["condition"] != "class" \
            and int(source["feat_sample_size"]) != int(wanted["feat_sample_size"]):
        out.append(f"the source's condition is {source['feat_sample_size']} visual frames per clip (block_size "
                   f"{source['block_size']}), this config's {wanted['feat_sample_size']}: set "
                   f"transformer.feat_sample_size={source['feat_sample_size']}")
    if int(source["vocab_size"]) != int(wanted["vocab_size"]):
        out.append(f"the source writes tokens of a {source['vocab_size']}-code vocabulary, codebook.ckpt="
                   f"{codebook_ckpt} has {wanted['vocab_size']} codes: set codebook.ckpt to the codebook the source "
                   f"was trained over (a released transformer's: its setting's codebook, e.g. vas_codebook), or start "
                   f"from a transformer trained over this codebook")
    elif list(source["grid"]) != list(wanted["grid"]):
        out.append(f"the source's token grid is {' x '.join(map(str, source['grid']))}, the configured codebook's "
                   f"grid of one clip {' x '.join(map(str, wanted['grid']))}: use the codebook and data.crop_len "
                   f"the source was trained with")
    arch = [k for k in ARCHITECTURE if int(source[k]) != int(wanted[k])]
    if arch:
        out.append("the source's architecture is " + ", ".join(f"{k} {source[k]}" for k in arch) + ", this config's "
                   + ", ".join(f"{k} {wanted[k]}" for k in arch) + ": set "
                   + " ".join(f"transformer.{k}={source[k]}" for k in arch))
    return out


def transformer_source(cfg: Mapping[str, Any], wanted: Mapping[str, Any], codebook: torch.nn.Module) -> InitSource:
    """The GPT weights (`transformer.*`) of `transformer.init_from`, checked to fit (SourceMismatch otherwise).

    `wanted`: the model_args the run builds (`model_args_from_stage`); `codebook`: the configured frozen codebook.
    A source trained over another codebook of the same size is allowed (its tokens then mean other sounds: a
    warning says so)."""
    key, value = "transformer.init_from", str(cfg["transformer"]["init_from"])
    path = _resolve(value, key, cfg)
    model = load_transformer(path, cfg=None)  # its own sizes; strict, either format
    features = _plain(cfg["features"])
    misfits = transformer_misfits(model.model_args, wanted, features, _source_features(value, path, cfg),
                                  str(cfg["codebook"]["ckpt"]))
    if misfits:
        raise SourceMismatch(f"{key}={value} does not fit this run: " + "; ".join(misfits) + ". Nothing was trained.")
    theirs, ours = model.first_stage_model.state_dict(), codebook.state_dict()
    if any(not torch.equal(v, ours[k]) for k, v in theirs.items() if k in ours and v.shape == ours[k].shape):
        log.warning("%s was trained over another codebook than codebook.ckpt=%s (same size, other weights): its tokens "
                    "mean other sounds, so fine-tuning starts further from its target", key, cfg["codebook"]["ckpt"])
    state = {f"transformer.{k}": v for k, v in model.transformer.state_dict().items()}
    return InitSource(key, value, path, state)


# --------------------------------------------------------------------------------------------------- codebook
DISCRIMINATOR = ("disc_in_channels", "disc_ndf", "disc_num_layers")  # the PatchGAN's sizes (codebook.loss)


def codebook_source(cfg: Mapping[str, Any]) -> InitSource:
    """The codebook weights (and its discriminator's, when the source has one) of `codebook.init_from`, checked
    against the configured `codebook.model` and `codebook.loss` (SourceMismatch otherwise)."""
    key, value = "codebook.init_from", str(cfg["codebook"]["init_from"])
    path = _resolve(value, key, cfg)
    read = read_codebook_file(path)
    theirs, ours = flatten(read.model_args), flatten(_plain(cfg["codebook"]["model"]))
    skip = ("ddconfig.resolution",) if read.origin == "shapes" else ()  # not stored in a lone original file
    misfits = [k for k in sorted(set(theirs) | set(ours)) if k not in skip and theirs.get(k) != ours.get(k)]
    disc = {k: v for k, v in read.state.items() if k.startswith("loss.discriminator.")}
    if disc:
        loss_cfg = _plain(cfg["codebook"]["loss"])
        shapes = infer_loss_args(disc)
        misfits += [f"loss.{k}" for k in DISCRIMINATOR if shapes[k] != loss_cfg[k]]
        theirs.update({f"loss.{k}": shapes[k] for k in DISCRIMINATOR})
        ours.update({f"loss.{k}": loss_cfg[k] for k in DISCRIMINATOR})
    else:
        log.info("%s holds no discriminator: the GAN's discriminator starts from scratch", path)
    if misfits:
        shown = "; ".join(f"{k} {theirs.get(k)!r} in the source, {ours.get(k)!r} in the config" for k in misfits)
        raise SourceMismatch(f"{key}={value} does not fit this run: {shown}. Set " + " ".join(
            f"codebook.{'' if k.startswith('loss.') else 'model.'}{k}={theirs.get(k)}" for k in misfits
            if k in theirs) + " (or the preset the source was trained with, e.g. codebook=vas). Nothing was trained.")
    state = {k: v for k, v in read.state.items() if not k.startswith("loss.")}
    return InitSource(key, value, path, {**state, **disc})


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


# ------------------------------------------------------------------------------------------- what trains
def matching(module: torch.nn.Module, patterns: list[str], key: str) -> list[str]:
    """The names of the parameters that match one of the glob `patterns` (e.g. `blocks.1.*`, `head.*`). A pattern
    that matches no parameter is an error naming what there is."""
    names = [name for name, _ in module.named_parameters()]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        tops = sorted({n.split(".")[0] + (".*" if "." in n else "") for n in names})
        raise ValueError(f"{key}: {unmatched} match no parameter; the parameters are {', '.join(tops)} "
                         f"(blocks.N.* for block N)")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def freeze_all_but(module: torch.nn.Module, patterns: list[str], key: str) -> list[str]:
    """Leave only the parameters `matching` the glob `patterns` trainable; returns their names."""
    trained = matching(module, patterns, key)
    for name, param in module.named_parameters():
        param.requires_grad_(name in trained)
    return trained
