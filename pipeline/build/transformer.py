"""Loading a stage-2 transformer (the Net2Net wrapper: codebook + permuter + GPT) from a local file.

`load_transformer` takes a checkpoint file or a folder (`pipeline.checkpoints.released`). Two formats, told apart
by their content:
(a) the original's released Net2NetTransformer `.ckpt` (Lightning 1.2.10, read without Lightning:
`pipeline.checkpoints.reading`): `state_dict` with `transformer.*`, `first_stage_model.*` (a VQModel without `loss.*`)
and `first_stage_permuter.*`: the codebook is inside, no second file is needed. In its log folder every size
comes from `configs/*-project.yaml` (`args_from_project_config`: GPT_config, the condition's embedder, the
permuter's grid, feat_sample_size, the first stage's ddconfig) and is checked against the weights' shapes. A lone
file's sizes are read from the shapes (vocab from `tok_emb`, block_size from `pos_emb`, n_layer from the
blocks, n_embd, feat_depth or n_classes from the `embedder`); n_head is not in the shapes: pass it (default 16
for n_embd 1024, the paper's). The codebook's ddconfig is read from the shapes too (spec §3.7); `resolution` is
not stored and is taken as 848, the paper's, which only places the attention levels; the token grid is the
codebook's latent grid of the paper's 80 x 848 clip (`codebook_grid`: 5 x 53 for its 16x downsampling).
(b) ours: {"format": "specvqgan-pipeline", "kind": "transformer", "model_args": {...}, "state_dict": {...},
"codebook": <path to a codebook checkpoint> | {"model_args": VQModel kwargs[, "state_dict": ...]} | None}.
With a dict, the codebook weights are `first_stage_model.*` in `state_dict` (or the dict's own
state_dict).

`codebook_path` replaces the checkpoint's codebook (its `first_stage_model.*` keys are then ignored). Loading
is strict: missing or unexpected keys raise an error listing them. `check_compatible` compares a checkpoint's
model_args with a config before any work starts.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from models.cond_transformer import Net2NetTransformer
from models.gpt import build_gpt
from models.permuter import ColumnMajor
from models.vqgan import VQModel
from pipeline.build.codebook import infer_model_args, load_codebook
from pipeline.checkpoints.reading import (
    checkpoint_format,
    describe,
    load_state_strictly,
    read_checkpoint,
    state_mismatch,
    strip_prefix,
)
from pipeline.checkpoints.released import get, model_files, require
from pipeline.checkpoints.zoo import locate
from pipeline.media.mel import CROP_LEN, N_MELS

KIND = "transformer"
GPT_KEYS = (
    "condition",
    "vocab_size",
    "block_size",
    "n_layer",
    "n_head",
    "n_embd",
    "embd_pdrop",
    "resid_pdrop",
    "attn_pdrop",
    "feat_depth",
    "n_classes",
)


# --- model arguments
# ---------------------------------------------------------------------------------------------
def cond_size(condition: str, feat_sample_size: int) -> int:
    """Positions the transformer's condition takes: 1 for a class id, else the visual frames fed per clip
    (`none`, the "No Feats" model, feeds feat_sample_size random vectors)."""
    if condition == "class":
        return 1
    if condition in ("features", "none"):
        return int(feat_sample_size)
    raise ValueError(f"transformer.condition must be features, class or none, got {condition!r}")


def codebook_grid(codebook: nn.Module, crop_len: int) -> list[int]:
    """[H, W]: the latent grid a codebook (VQModel) gives one clip's N_MELS x crop_len mel (its downsampling
    factor, 2^(levels - 1) of its ddconfig.ch_mult, along each axis): [5, 53] for the paper's 80 x 848 and 16x.
    The transformer's tokens (H * W) and its permuter's order follow from it."""
    factor = int(codebook.downsample_factor)
    if N_MELS % factor:
        raise ValueError(f"the codebook downsamples {factor}x, which does not divide the {N_MELS} mel bins: not a "
                         f"codebook of these mels")
    if int(crop_len) % factor:
        raise ValueError(f"data.crop_len={crop_len} is not a multiple of the codebook's downsampling factor {factor}: "
                         f"set clip.crop_len to a multiple of {factor}")
    return [int(n) for n in codebook.grid(N_MELS, int(crop_len))]


def model_args_from_config(cfg: Mapping[str, Any], vocab_size: int, grid: Sequence[int]) -> dict[str, Any]:
    """The constructor arguments to store in a checkpoint, from a `transformer` node (conf/transformer) and the
    codebook it is trained over: `vocab_size` its n_embed, `grid` its latent grid of one clip (`codebook_grid`).
    The config types neither: block_size = H * W + the condition's positions. A grid the config states
    (`transformer.grid: [H, W]`) must be this one."""
    cfg = _transformer_node(cfg)
    H, W = (int(n) for n in grid)
    stated = cfg.get("grid")
    if stated is not None and [int(n) for n in stated] != [H, W]:
        raise ValueError(f"transformer.grid is {' x '.join(str(n) for n in stated)} but the codebook's latent grid of "
                         f"one clip is {H} x {W}: drop transformer.grid (the codebook's is used) or use a codebook and "
                         f"clip.crop_len that give it")
    derived = {"vocab_size": int(vocab_size),
               "block_size": H * W + cond_size(cfg["condition"], cfg["feat_sample_size"])}
    args = {key: derived[key] if key in derived else _plain(cfg.get(key)) for key in GPT_KEYS}
    args["feat_sample_size"] = int(cfg["feat_sample_size"])
    args["grid"] = [H, W]
    return args


def model_args_from_stage(cfg: Mapping[str, Any], codebook: nn.Module) -> dict[str, Any]:
    """`model_args_from_config` of a train_transformer config (its `transformer` node and `data.crop_len`) over
    the codebook it loads."""
    return model_args_from_config(cfg["transformer"], int(codebook.n_embed),
                                  codebook_grid(codebook, cfg["data"]["crop_len"]))


def check_compatible(
    model_args: Mapping[str, Any], cfg: Mapping[str, Any], source: str = "the checkpoint",
    vocab_size: int | None = None, grid: Sequence[int] | None = None,
) -> None:
    """Raises ValueError listing every size on which a checkpoint and a config disagree (and, when given, the
    codebook's `vocab_size` and latent `grid`; else the checkpoint's own).

    A transformer only runs with the condition size it was trained with: `pos_emb` and the masks are tied to
    block_size = H * W + S (265 + S on the paper's grid).
    """
    cfg = _transformer_node(cfg)
    wanted = model_args_from_config(cfg, model_args.get("vocab_size") if vocab_size is None else vocab_size,
                                    model_args["grid"] if grid is None else grid)
    keys = ["condition", "block_size", "feat_sample_size", "vocab_size", "grid"]
    keys += ["feat_depth"] if model_args.get("condition", "features") != "class" else ["n_classes"]
    if model_args.get("condition") == "class" and wanted["condition"] == "class":
        keys.remove("feat_sample_size")  # meaningless for a class condition
    diffs = [
        f"{k}: {model_args.get(k)!r} in {source}, {wanted.get(k)!r} in the config"
        for k in keys
        if model_args.get(k) is not None and _plain(model_args.get(k)) != wanted.get(k)
    ]
    if diffs:
        raise ValueError(
            f"{source} does not fit the transformer config: "
            + "; ".join(diffs)
            + ". Use the config it was trained with (e.g. transformer.feat_sample_size="
            f"{model_args.get('feat_sample_size')}) or another checkpoint."
        )


def gpt_args_from_state_dict(
    sd: Mapping[str, torch.Tensor], grid: Sequence[int], n_head: int | None = None
) -> dict[str, Any]:
    """The GPT's model_args from an original `transformer.*` state dict (prefix stripped or not) over a codebook
    of latent `grid` [H, W] (`codebook_grid`; the condition takes the positions of block_size beyond H * W)."""
    sd = strip_prefix(sd, "transformer.") if any(k.startswith("transformer.") for k in sd) else dict(sd)
    for key in ("tok_emb.weight", "pos_emb", "embedder.weight"):
        if key not in sd:
            raise KeyError(f"no transformer.{key} in the state dict: not a GPTFeats/GPTClass checkpoint")
    vocab_size, n_embd = sd["tok_emb.weight"].shape
    block_size = sd["pos_emb"].shape[1]
    n_layer = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if n_head is None:
        if n_embd != 1024:
            raise ValueError(
                f"n_head is not stored in a checkpoint and n_embd is {n_embd}, not the paper's 1024: "
                "pass n_head=..."
            )
        n_head = 16
    emb = sd["embedder.weight"]
    num_tokens = grid[0] * grid[1]
    if emb.dim() == 3:  # Conv1d (n_embd, feat_depth, 1)
        condition, feat_depth, n_classes, feat_sample_size = (
            "features",
            int(emb.shape[1]),
            None,
            block_size - num_tokens,
        )
    else:  # Embedding (n_classes, n_embd)
        condition, feat_depth, n_classes, feat_sample_size = "class", None, int(emb.shape[0]), 1
    return {
        "condition": condition,
        "vocab_size": int(vocab_size),
        "block_size": int(block_size),
        "n_layer": n_layer,
        "n_head": int(n_head),
        "n_embd": int(n_embd),
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "feat_depth": feat_depth,
        "n_classes": n_classes,
        "feat_sample_size": int(feat_sample_size),
        "grid": list(grid),
    }


def args_from_project_config(cfg: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the wrapper's model_args, the first stage's VQModel kwargs) from an original project config.

    n_classes of a class condition is None when the config does not give it (the released ones do not ship a
    `token_embedding_config`): `load_transformer` then takes it from the weights.
    """
    target = str(require(cfg, "model.target", source))
    if not target.endswith("Net2NetTransformer"):
        hint = ": a codebook's folder loads with load_codebook" if target.endswith("VQModel") else ""
        raise ValueError(f"{source}: model.target is {target}, not a Net2NetTransformer{hint}")
    tcfg = require(cfg, "model.params.transformer_config", source)
    gpt_kind = str(tcfg.get("target", "")).rsplit(".", 1)[-1]
    gpt = require(cfg, "model.params.transformer_config.params.GPT_config", source)
    args: dict[str, Any] = {k: int(require(gpt, k, f"{source} (GPT_config)"))
                            for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}
    args.update({k: float(gpt.get(k) or 0.0) for k in ("embd_pdrop", "resid_pdrop", "attn_pdrop")})
    permuter = require(cfg, "model.params.first_stage_permuter_config", source)
    if not str(permuter.get("target", "")).endswith("ColumnMajor"):
        raise ValueError(f"{source}: first_stage_permuter_config.target {permuter.get('target')} is not supported "
                         f"(only the released models' ColumnMajor)")
    grid = [int(require(permuter, "params.H", source)), int(require(permuter, "params.W", source))]
    if gpt_kind == "GPTFeats":
        feat_sample_size = get(cfg, "data.params.feat_sampler_cfg.params.feat_sample_size")
        args.update(condition="none" if get(cfg, "data.params.replace_feats_with_random") else "features",
                    feat_depth=int(require(tcfg, "params.feat_embedding_config.params.in_channels", source)),
                    n_classes=None, feat_sample_size=int(feat_sample_size if feat_sample_size is not None
                                                         else args["block_size"] - grid[0] * grid[1]))
    elif gpt_kind == "GPTClass":
        n_classes = get(tcfg, "params.token_embedding_config.params.num_embeddings")
        args.update(condition="class", feat_depth=None, feat_sample_size=1,
                    n_classes=None if n_classes is None else int(n_classes))
    else:
        raise ValueError(f"{source}: transformer_config.target {tcfg.get('target')} is not supported (GPTFeats or "
                         f"GPTClass; GPTFeatsClass was an ablation, never released)")
    args["grid"] = grid
    vq = require(cfg, "model.params.first_stage_config.params", source)
    vq_args = {"ddconfig": {"norm_groups": 32, **dict(require(vq, "ddconfig", source))},
               "n_embed": int(require(vq, "n_embed", source)), "embed_dim": int(require(vq, "embed_dim", source))}
    return args, vq_args


def _check_config_against_weights(model_args: dict[str, Any], sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Every size the config states must be what the weights have (fills in n_classes when the config has none)."""
    shapes = gpt_args_from_state_dict(sd, model_args["grid"], model_args["n_head"])
    if model_args["n_classes"] is None:
        model_args["n_classes"] = shapes["n_classes"]
    keys = ["vocab_size", "block_size", "n_layer", "n_embd", "feat_depth", "n_classes", "feat_sample_size"]
    diffs = [f"{k} {shapes[k]} in the weights vs {model_args[k]} in the config" for k in keys
             if shapes[k] != model_args[k]]
    if (shapes["condition"] == "class") != (model_args["condition"] == "class"):
        diffs.append(f"a {shapes['condition']} embedder in the weights vs condition {model_args['condition']}")
    if diffs:
        raise ValueError(f"{source}: the checkpoint does not fit its configs/*-project.yaml: " + "; ".join(diffs))


# --- building
# ----------------------------------------------------------------------------------------------------
def build_transformer(
    model_args: Mapping[str, Any], first_stage_model: nn.Module, device: str | torch.device | None = None
) -> Net2NetTransformer:
    """The wrapper from model_args (our checkpoint's, or `gpt_args_from_state_dict`'s) and a codebook."""
    args = {k: model_args.get(k) for k in GPT_KEYS if model_args.get(k) is not None}
    condition = args.pop("condition", "features")
    H, W = model_args["grid"]
    with torch.device(device) if device is not None else nullcontext():
        return Net2NetTransformer(first_stage_model, build_gpt(condition, **args), ColumnMajor(H, W))


def build_vqmodel(vq_args: Mapping[str, Any], device: str | torch.device | None = None) -> nn.Module:

    with torch.device(device) if device is not None else nullcontext():
        return VQModel(dict(vq_args["ddconfig"]), int(vq_args["n_embed"]), int(vq_args["embed_dim"]))


# --- loading
# -----------------------------------------------------------------------------------------------------
def load_transformer(
    path: str | Path,
    codebook_path: str | Path | None = None,
    *,
    n_head: int | None = None,
    cfg: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> Net2NetTransformer:
    """The wrapper in eval mode from a checkpoint file or a log folder, original or ours (module docstring).

    n_head: for a lone original file (its log folder's config has it; a different value is an error).
    cfg: a `transformer` config (or a config holding one); when given, the checkpoint is checked against it
    first (`check_compatible`) and its n_head is used for a lone original file unless `n_head` is passed.
    """
    files = model_files(locate(path, KIND), KIND)
    path = files.checkpoint
    ckpt = read_checkpoint(path, map_location)
    fmt = checkpoint_format(ckpt)
    if fmt not in ("ours", "lightning"):
        raise ValueError(f"{path} holds no `state_dict`: neither an original Net2NetTransformer checkpoint nor ours "
                         f"(found {describe(ckpt)})")
    sd: dict[str, torch.Tensor] = dict(ckpt["state_dict"])
    codebook_sd, vq_args = None, None
    if fmt == "ours":
        if ckpt.get("kind", KIND) != KIND:
            raise ValueError(f"{path} is a {ckpt.get('kind')} checkpoint, not a transformer")
        model_args = dict(ckpt["model_args"])
        codebook = ckpt.get("codebook")
        if codebook_path is None and isinstance(codebook, (str, Path)):
            codebook_path = Path(codebook)
            if not codebook_path.is_absolute() and not codebook_path.exists():
                codebook_path = path.parent / codebook_path
        vq_args = codebook.get("model_args") if isinstance(codebook, dict) else None
        if isinstance(codebook, dict) and codebook.get("state_dict") is not None:
            codebook_sd = codebook["state_dict"]
    elif files.config is not None:
        source = f"{files.folder}/configs"
        model_args, vq_args = args_from_project_config(files.config, source)
        if n_head is not None and int(n_head) != model_args["n_head"]:
            raise ValueError(f"n_head={n_head} was passed but {source} says n_head {model_args['n_head']}")
        _check_config_against_weights(model_args, sd, f"{path}")
    else:
        model_args = None  # a lone original file: read from its shapes once its codebook (and so its grid) is known

    # the codebook: from codebook_path, else embedded
    own_first_stage = strip_prefix(sd, "first_stage_model.")
    sd = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}
    if codebook_path is not None:

        first_stage = load_codebook(codebook_path)
        _drop_loss(first_stage)
    else:
        codebook_sd = codebook_sd if codebook_sd is not None else own_first_stage
        if not codebook_sd:
            raise ValueError(f"{path} holds no codebook (first_stage_model.*): pass codebook_path=...")
        first_stage = build_vqmodel(vq_args or infer_model_args(codebook_sd))
        # DummyLoss in the original: no loss.* inside a transformer
        load_state_strictly(first_stage, {k: v for k, v in codebook_sd.items() if not k.startswith("loss.")},
                            f"{path} (first_stage_model)", "codebook")
    if model_args is None:
        if cfg is not None and n_head is None:
            n_head = int(_transformer_node(cfg)["n_head"])
        model_args = gpt_args_from_state_dict(sd, codebook_grid(first_stage, CROP_LEN), n_head)  # the paper's clip
    if cfg is not None:
        check_compatible(model_args, cfg, source=str(path))
    vocab, n_embed = model_args["vocab_size"], first_stage.quantize.n_e
    if vocab != n_embed:
        raise ValueError(f"{path}: the transformer's vocab_size {vocab} != the codebook's n_embed {n_embed}")

    model = build_transformer(model_args, first_stage)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("first_stage_model.")}
    problem = state_mismatch(own, sd, str(path), "transformer")
    if problem:
        raise ValueError(problem)
    model.load_state_dict({**model.state_dict(), **sd}, strict=True)
    model.model_args = model_args  # what built it, for check_compatible and for re-saving
    return model.eval()


# --- helpers
# -----------------------------------------------------------------------------------------------------
def _drop_loss(vqmodel: nn.Module) -> None:
    """Inside the transformer the codebook carries no loss (the original's DummyLoss): no `loss.*` keys."""
    if getattr(vqmodel, "loss", None) is not None:
        vqmodel.loss = None


def _transformer_node(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    return cfg["transformer"] if "transformer" in cfg else cfg


def _plain(value: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, tuple):
        return list(value)
    return value
