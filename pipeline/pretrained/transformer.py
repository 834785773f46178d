"""Loading a stage-2 transformer (the Net2Net wrapper: codebook + permuter + GPT) from a local file.

Two formats, told apart by their content:
(a) the original's released Net2NetTransformer `.ckpt`: `state_dict` with `transformer.*`,
`first_stage_model.*` (a VQModel without `loss.*`) and `first_stage_permuter.*`. The GPT's sizes are read from
the shapes (vocab from `tok_emb`, block_size from `pos_emb`, n_layer from the blocks, n_embd, feat_depth or
n_classes from the `embedder`); n_head is not in the shapes: pass it (default 16 for n_embd 1024, the
paper's). The codebook's ddconfig is read from the shapes too (spec §3.7); `resolution` is not stored and is
taken as 848, the paper's, which only places the attention levels.
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
from typing import Any, Mapping

import torch
from torch import nn

from models.cond_transformer import Net2NetTransformer
from models.gpt import build_gpt
from models.permuter import ColumnMajor

FORMAT = "specvqgan-pipeline"
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
PAPER_RESOLUTION = 848  # spectrogram frames the paper's codebook was built for (places the attention levels)


# --- model arguments
# ---------------------------------------------------------------------------------------------
def model_args_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments to store in a checkpoint, from a `transformer` node (conf/transformer)."""
    cfg = _transformer_node(cfg)
    args = {key: _plain(cfg.get(key)) for key in GPT_KEYS}
    args["feat_sample_size"] = int(cfg["feat_sample_size"])
    args["grid"] = [int(cfg["grid"]["H"]), int(cfg["grid"]["W"])]
    return args


def check_compatible(
    model_args: Mapping[str, Any], cfg: Mapping[str, Any], source: str = "the checkpoint"
) -> None:
    """Raises ValueError listing every size on which a checkpoint and a config disagree.

    A transformer only runs with the condition size it was trained with: `pos_emb` and the masks are tied to
    block_size = 265 + S.
    """
    cfg = _transformer_node(cfg)
    wanted = model_args_from_config(cfg)
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
    sd: Mapping[str, torch.Tensor], n_head: int | None = None, grid: tuple[int, int] = (5, 53)
) -> dict[str, Any]:
    """The GPT's model_args from an original `transformer.*` state dict (prefix stripped or not)."""
    sd = _strip(sd, "transformer.") if any(k.startswith("transformer.") for k in sd) else dict(sd)
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


def vqmodel_args_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """VQModel kwargs (ddconfig, n_embed, embed_dim) from the shapes of a `first_stage_model.*`-style dict."""
    ch, in_channels = sd["encoder.conv_in.weight"].shape[:2]
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    ch_mult = [int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in levels]
    num_res_blocks = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
    attn_resolutions = [PAPER_RESOLUTION // 2**i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in sd]
    z_channels = int(sd["decoder.conv_in.weight"].shape[1])
    n_embed, embed_dim = sd["quantize.embedding.weight"].shape
    ddconfig = {
        "double_z": int(sd["encoder.conv_out.weight"].shape[0]) == 2 * z_channels,
        "z_channels": z_channels,
        "resolution": PAPER_RESOLUTION,
        "in_channels": int(in_channels),
        "out_ch": int(sd["decoder.conv_out.weight"].shape[0]),
        "ch": int(ch),
        "ch_mult": ch_mult,
        "num_res_blocks": num_res_blocks,
        "attn_resolutions": attn_resolutions,
        "dropout": 0.0,
    }
    return {"ddconfig": ddconfig, "n_embed": int(n_embed), "embed_dim": int(embed_dim)}


# --- building
# ----------------------------------------------------------------------------------------------------
def build_transformer(
    model_args: Mapping[str, Any], first_stage_model: nn.Module, device: str | torch.device | None = None
) -> Net2NetTransformer:
    """The wrapper from model_args (our checkpoint's, or `gpt_args_from_state_dict`'s) and a codebook."""
    args = {k: model_args.get(k) for k in GPT_KEYS if model_args.get(k) is not None}
    condition = args.pop("condition", "features")
    H, W = model_args.get("grid", (5, 53))
    with torch.device(device) if device is not None else nullcontext():
        return Net2NetTransformer(first_stage_model, build_gpt(condition, **args), ColumnMajor(H, W))


def build_vqmodel(vq_args: Mapping[str, Any], device: str | torch.device | None = None) -> nn.Module:
    from models.vqgan import VQModel

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
    """The wrapper in eval mode from an original `.ckpt` or one of our checkpoints (module docstring).

    cfg: a `transformer` config (or a config holding one); when given, the checkpoint is checked against it
    first (`check_compatible`) and its n_head is used for original checkpoints unless `n_head` is passed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transformer checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # an old Lightning pickle with objects weights_only refuses
        raise ValueError(
            f"{path} could not be read with weights_only=True ({e}); re-save its state_dict alone "
            "with torch.save({'state_dict': ckpt['state_dict']}, path)"
        ) from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(
            f"{path} holds no `state_dict`: neither an original Net2NetTransformer checkpoint nor ours"
        )
    sd: dict[str, torch.Tensor] = ckpt["state_dict"]
    codebook_sd = None
    if ckpt.get("format") == FORMAT:
        if ckpt.get("kind", "transformer") != "transformer":
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
    else:
        if cfg is not None and n_head is None:
            n_head = int(_transformer_node(cfg)["n_head"])
        model_args = gpt_args_from_state_dict(sd, n_head)
        vq_args = None
    if cfg is not None:
        check_compatible(model_args, cfg, source=str(path))

    # the codebook: from codebook_path, else embedded
    own_first_stage = {k: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    sd = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}
    if codebook_path is not None:
        from pipeline.pretrained import load_codebook

        first_stage = load_codebook(codebook_path)
        _drop_loss(first_stage)
    else:
        codebook_sd = (
            codebook_sd if codebook_sd is not None else _strip(own_first_stage, "first_stage_model.")
        )
        if not codebook_sd:
            raise ValueError(f"{path} holds no codebook (first_stage_model.*): pass codebook_path=...")
        first_stage = build_vqmodel(vq_args or vqmodel_args_from_state_dict(codebook_sd))
        _load_strict(first_stage, codebook_sd, f"{path} (first_stage_model)")
    vocab, n_embed = model_args["vocab_size"], first_stage.quantize.n_e
    if vocab != n_embed:
        raise ValueError(f"{path}: the transformer's vocab_size {vocab} != the codebook's n_embed {n_embed}")

    model = build_transformer(model_args, first_stage)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("first_stage_model.")}
    _check_keys(own, sd, str(path))
    model.load_state_dict({**model.state_dict(), **sd}, strict=True)
    model.model_args = model_args  # what built it, for check_compatible and for re-saving
    return model.eval()


# --- helpers
# -----------------------------------------------------------------------------------------------------
def _check_keys(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], source: str) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape))
    if missing or unexpected or wrong:
        lines = [f"{source} does not match the model it describes:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
        if wrong:
            lines.append(
                "  wrong shapes: "
                + ", ".join(f"{k} {tuple(got[k].shape)} != {tuple(expected[k].shape)}" for k in wrong)
            )
        raise ValueError("\n".join(lines))


def _load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    expected = {k: v for k, v in module.state_dict().items()}
    got = {k: v for k, v in sd.items() if not k.startswith("loss.")}  # DummyLoss in the original: no loss.*
    _check_keys(expected, got, source)
    module.load_state_dict(got, strict=True)


def _drop_loss(vqmodel: nn.Module) -> None:
    """Inside the transformer the codebook carries no loss (the original's DummyLoss): no `loss.*` keys."""
    if getattr(vqmodel, "loss", None) is not None:
        vqmodel.loss = None


def _strip(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


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
