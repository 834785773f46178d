"""Build, save and load the spectrogram codebook (VQModel), from our checkpoints or the original's `.ckpt`.

`load_codebook` takes a checkpoint file or a folder (`pipeline.checkpoints.released`). Two formats, told apart by
content (never by extension):
- ours: {"format": "specvqgan-pipeline", "kind": "codebook", "model_args": VQModel kwargs, "loss_args": loss
  kwargs or None, "state_dict": the original's key layout (with `loss.*` when trained with a loss), ...};
- the original's Lightning checkpoint {"state_dict", "epoch", "global_step", ...}, as released (Lightning 1.2.10,
  read without Lightning: `pipeline.checkpoints.reading`). In its log folder the architecture comes from
  `configs/*-project.yaml` (`model.params.{ddconfig, n_embed, embed_dim}`, the loss from `lossconfig.params`);
  a lone file's is inferred from the tensor shapes.

`loss.discriminator.*` / `loss.perceptual_loss.*` go into the loss module with `with_loss=True` (strictly) and
are otherwise ignored; every other missing or unexpected key raises an error that lists it.
"""
from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from models.vqgan import VQModel
from models.vqgan_loss import VQLPAPSWithDiscriminator
from pipeline.checkpoints.reading import FORMAT, checkpoint_format, describe, read_checkpoint, state_mismatch
from pipeline.checkpoints.released import model_files, require
from pipeline.checkpoints.zoo import locate
from pipeline.data.normalization import stats_tensors

log = logging.getLogger(__name__)

KIND = "codebook"
LOSS_PREFIXES = ("loss.discriminator.", "loss.perceptual_loss.")


def _plain(obj: Any) -> Any:
    """OmegaConf containers, tuples -> plain dicts and lists (checkpoints stay weights_only-loadable)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _vggishish_features(path: Path) -> dict[str, torch.Tensor]:
    obj = read_checkpoint(path)  # vggishish16.pt: a training dict whose metrics are numpy scalars
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    feats = {k[len("features."):]: v for k, v in obj.items() if k.startswith("features.")}
    if not feats:
        raise ValueError(f"{path} holds no VGGish-ish `features.*` weights for the LPAPS trunk; pass a VGGish-ish "
                         f"classifier checkpoint or set codebook.loss.lpaps_trunk=null")
    return feats


def build_loss(loss_cfg: Mapping) -> VQLPAPSWithDiscriminator:
    """The loss from a `codebook.loss` config: reads `lpaps_stats` (txt) and `lpaps_trunk` (VGGish-ish ckpt)."""
    args = _plain(loss_cfg)
    stats, trunk = args.pop("lpaps_stats", None), args.pop("lpaps_trunk", None)
    if args.get("perceptual_weight", 1.0) > 0 and trunk in (None, "???"):
        raise ValueError("the perceptual loss (LPAPS) needs codebook.loss.lpaps_trunk: a VGGish-ish checkpoint "
                         "(python -m stages.train_classifier classifier=vggishish, or the original's vggishish16.pt), "
                         "`random` to reproduce the original release (its LPAPS weights never loaded), or "
                         "codebook.loss.perceptual_weight=0 to train without it")
    if trunk == "random":
        trunk = None
    if stats is not None and args.get("perceptual_weight", 1.0) > 0:

        args["lpaps_mean"], args["lpaps_std"] = stats_tensors(stats, "codebook.loss.lpaps_stats")
    loss = VQLPAPSWithDiscriminator(**args)
    if trunk is not None and loss.perceptual_weight > 0:
        feats = _vggishish_features(Path(trunk))
        target = {}
        for name in loss.perceptual_loss.net.state_dict():  # slice{k}.{i}.weight <- features.{i}.weight
            target[name] = feats.get(name.split(".", 1)[1])
        missing = sorted(k for k, v in target.items() if v is None)
        if missing or len(feats) != len(target):
            raise ValueError(f"{trunk}: VGGish-ish trunk does not match the LPAPS layout (missing {missing}, "
                             f"{len(feats)} tensors for {len(target)})")
        loss.perceptual_loss.net.load_state_dict(target, strict=True)
    return loss


def build_codebook(model_cfg: Mapping, loss_cfg: Mapping | None = None) -> VQModel:
    """A fresh VQModel from a `codebook.model` config (plus its loss as `model.loss` when `loss_cfg` is given)."""
    args = _plain(model_cfg)
    return VQModel(**args, loss=build_loss(loss_cfg) if loss_cfg is not None else None)


def codebook_checkpoint(model: VQModel, loss: torch.nn.Module | None = None) -> dict:
    """Our checkpoint dict for `model` (and `loss`, kept apart or as `model.loss`); callers add training state."""
    if loss is not None and model.loss is not None and loss is not model.loss:
        raise ValueError("model already carries a different loss module; pass loss=None")
    loss = loss if loss is not None else model.loss
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("loss.")}
    if loss is not None:
        state.update({f"loss.{k}": v for k, v in loss.state_dict().items()})
    loss_args = None
    if loss is not None:
        loss_args = _plain(getattr(loss, "config", None))
        if loss_args is None:
            raise TypeError(f"{type(loss).__name__} has no `config` of constructor kwargs to save")
    return {"format": FORMAT, "version": 1, "kind": KIND, "model_args": _plain(model.model_args),
            "loss_args": loss_args, "state_dict": state}


PAPER_RESOLUTION = 848  # ddconfig.resolution of the paper's codebooks (the levels with attention are counted from it)


def _indices(state: Mapping, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := rx.match(k))})


def infer_model_args(state: Mapping[str, torch.Tensor], resolution: int = PAPER_RESOLUTION) -> dict:
    """VQModel kwargs from an original state dict's shapes (its config is not in the file).

    ch from conv_in, ch_mult from each level's first block, num_res_blocks from the block count, attention
    resolutions from the levels holding AttnBlocks, z_channels from the decoder's conv_in, codebook from the
    embedding. GroupNorm groups (not visible in shapes) are the original's 32.
    """
    need = ["encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_in.weight",
            "decoder.conv_out.weight", "quantize.embedding.weight"]
    absent = [k for k in need if k not in state]
    if absent:
        raise ValueError(f"not a codebook (VQModel) state dict: no {absent}")
    ch, in_channels = state["encoder.conv_in.weight"].shape[:2]
    levels = _indices(state, r"encoder\.down\.(\d+)\.")
    ch_mult = [int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in levels]
    num_res_blocks = len(_indices(state, r"encoder\.down\.0\.block\.(\d+)\."))
    attn_levels = [i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state]
    z_channels = int(state["decoder.conv_in.weight"].shape[1])
    n_embed, embed_dim = state["quantize.embedding.weight"].shape
    ddconfig = {
        "double_z": int(state["encoder.conv_out.weight"].shape[0]) == 2 * z_channels,
        "z_channels": z_channels, "resolution": resolution, "in_channels": int(in_channels),
        "out_ch": int(state["decoder.conv_out.weight"].shape[0]), "ch": int(ch), "ch_mult": ch_mult,
        "num_res_blocks": num_res_blocks, "attn_resolutions": [resolution // 2 ** i for i in attn_levels],
        "dropout": 0.0, "norm_groups": 32,
    }
    return {"ddconfig": ddconfig, "n_embed": int(n_embed), "embed_dim": int(embed_dim), "beta": 0.25}


def infer_loss_args(loss_state: Mapping[str, torch.Tensor]) -> dict:
    """Loss kwargs that shapes determine (PatchGAN size, LPAPS presence and trunk) from `loss.*` tensors."""
    four_d = {k: v for k, v in loss_state.items() if v.dim() == 4}
    convs = _indices(four_d, r"loss\.discriminator\.main\.(\d+)\.weight")
    if not convs:
        raise ValueError("no loss.discriminator.* weights to build the loss from")
    first = loss_state[f"loss.discriminator.main.{convs[0]}.weight"]
    args: dict[str, Any] = {"disc_ndf": int(first.shape[0]), "disc_in_channels": int(first.shape[1]),
                            "disc_num_layers": len(convs) - 2}
    slices = _indices(loss_state, r"loss\.perceptual_loss\.net\.slice(\d+)\.")
    if not slices:
        args["perceptual_weight"] = 0.0
        return args
    layers: list = []
    for s in slices:
        if s > 1:
            layers.append("MP")
        for i in _indices(loss_state, rf"loss\.perceptual_loss\.net\.slice{s}\.(\d+)\.weight"):
            layers.append(int(loss_state[f"loss.perceptual_loss.net.slice{s}.{i}.weight"].shape[0]))
    args["lpaps_layers"] = layers
    args["n_mels"] = int(loss_state["loss.perceptual_loss.scaling_layer.shift"].shape[2])
    return args


def _raise_mismatch(path: Path, what: str, expected: Mapping[str, torch.Tensor],
                    got: Mapping[str, torch.Tensor]) -> None:
    problem = state_mismatch(expected, got, str(path), what)
    if problem:
        raise ValueError(f"{problem}. Is this a codebook checkpoint of this project or the original's release?")


def args_from_project_config(cfg: Mapping[str, Any], source: str) -> tuple[dict, dict]:
    """(VQModel kwargs, loss kwargs) from an original project config whose model is a VQModel."""
    target = str(require(cfg, "model.target", source))
    if not target.endswith("VQModel"):
        raise ValueError(f"{source}: model.target is {target}, not a codebook (VQModel); a transformer's folder "
                         f"loads with load_transformer")
    params = cfg["model"]["params"]
    ddconfig = {"norm_groups": 32, **dict(require(cfg, "model.params.ddconfig", source))}  # GroupNorm(32) in all
    model_args = {"ddconfig": ddconfig, "n_embed": int(require(cfg, "model.params.n_embed", source)),
                  "embed_dim": int(require(cfg, "model.params.embed_dim", source)), "beta": 0.25}
    accepted = set(inspect.signature(VQLPAPSWithDiscriminator).parameters)
    loss_params = (params.get("lossconfig") or {}).get("params") or {}
    return model_args, {k: v for k, v in loss_params.items() if k in accepted}


class CodebookFile(NamedTuple):
    path: Path                       # the checkpoint file read
    model_args: dict                 # VQModel kwargs
    loss_args: dict | None           # saved (ours) or configured (the original's folder) loss kwargs
    state: dict[str, torch.Tensor]   # the state dict, `loss.*` included
    origin: str                      # where the sizes came from: "ours", "config" or "shapes"


def read_codebook_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> CodebookFile:
    """What a codebook file or folder of either format holds. The loss_args of an original folder are its
    config's; in `load_codebook` they give way to what the weights show."""
    files = model_files(locate(path, KIND), KIND)
    path = files.checkpoint
    obj = read_checkpoint(path, map_location)
    fmt = checkpoint_format(obj)
    if fmt == "ours":
        if obj.get("kind") != KIND:
            raise ValueError(f"{path} is a {obj.get('kind')!r} checkpoint of this project, not a codebook")
        return CodebookFile(path, dict(obj["model_args"]), obj.get("loss_args"), dict(obj["state_dict"]), "ours")
    if fmt == "lightning":
        state = dict(obj["state_dict"])
        if "quantize.embedding.weight" not in state:
            hint = " (a transformer checkpoint? load it with load_transformer)" if any(
                k.startswith("first_stage_model.") for k in state) else ""
            raise ValueError(f"{path}: a Lightning checkpoint without codebook weights{hint}")
        if files.config is not None:
            model_args, loss_args = args_from_project_config(files.config, str(files.folder))
            return CodebookFile(path, model_args, loss_args, state, "config")
        return CodebookFile(path, infer_model_args(state), None, state, "shapes")
    raise ValueError(f"{path}: neither this project's checkpoint (format={FORMAT!r}) nor an original Lightning "
                     f"checkpoint with a `state_dict`; found {describe(obj)}")


def load_codebook(path: str | os.PathLike, with_loss: bool = False, map_location: str | torch.device = "cpu",
                  loss_args: Mapping | None = None) -> VQModel:
    """The codebook of `path` (a checkpoint file or a log folder) in eval mode; `with_loss=True` also loads
    `loss.*` (strictly) into `model.loss`.

    `loss_args` override the loss kwargs. A lone original file holds no loss config: only the shapes'
    discriminator/LPAPS sizes are known, the rest take VQLPAPSWithDiscriminator's defaults, disc_start 0; in its
    log folder the config's `lossconfig.params` fill them in.
    """
    path, model_args, saved_loss_args, state, origin = read_codebook_file(path, map_location)
    loss_state = {k: v for k, v in state.items() if k.startswith("loss.")}
    model_state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    with torch.device("meta"):  # no allocation or init: the checkpoint's tensors are assigned
        model = VQModel(**model_args)
    # loss.* keys outside the discriminator and perceptual loss are never ours to ignore
    stray = {} if with_loss else {k: v for k, v in loss_state.items() if not k.startswith(LOSS_PREFIXES)}
    _raise_mismatch(path, "codebook", model.state_dict(), {**model_state, **stray})
    model.load_state_dict(model_state, strict=True, assign=True)
    device = model.quantize.embedding.weight.device
    model.code_counts = torch.zeros(model.n_embed, dtype=torch.long, device=device)
    if with_loss:
        if not loss_state:
            raise ValueError(f"{path} holds no loss.* weights (saved without its loss); use with_loss=False")
        shapes = infer_loss_args(loss_state)
        saved = saved_loss_args or {}
        # ours: the saved kwargs are the truth; the original's config: the weights say which parts exist
        args = {"disc_start": 0, **shapes, **saved} if origin == "ours" else {"disc_start": 0, **saved, **shapes}
        args.update(dict(loss_args or {}))
        with torch.device("meta"):
            loss = VQLPAPSWithDiscriminator(**args)
        sub = {k[len("loss."):]: v for k, v in loss_state.items()}
        _raise_mismatch(path, "loss", {f"loss.{k}": v for k, v in loss.state_dict().items()}, loss_state)
        loss.load_state_dict(sub, strict=True, assign=True)
        for p in (loss.perceptual_loss.parameters() if loss.perceptual_weight > 0 else ()):
            p.requires_grad = False
        model.loss = loss
    elif loss_state:
        log.info("%s: ignoring %d loss.* tensors (discriminator/perceptual loss; pass with_loss=True to load them)",
                 path, len(loss_state))
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise ValueError(f"{path}: tensors left unloaded: {leftover}")
    return model.eval()
