"""Visual features on the dataset side: load the streams, pad, crop, resample (spec §2.4).

A clip's features are the pickled (T, D_i) arrays of `features.folders`, concatenated along features
(BN-Inception RGB | flow = 2048). They are zero-padded or truncated to `feat_len` (215) rows, as the
original does (tiling to 10 s happens upstream), then cropped to `feat_crop_len` (212): the centre (rows
1..212) or, in training, a random window. `resample_frames` picks the `S` rows the transformer sees.
`join_streams` and `condition_rows` are these steps for arrays in memory: the data set, the feature stage and
the sample stage (a user's video) all go through them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.data.layout import feature_path
from pipeline.files.safe_pickle import load_pickle_array

FEAT_LEN = 215       # rows of one clip's features (10 s at 21.5 fps); conf/base.yaml clip.feat_len
FEAT_CROP_LEN = 212  # rows the models see, the centre crop; conf/base.yaml clip.feat_crop_len


def pad_or_truncate(x: np.ndarray, length: int) -> np.ndarray:
    """The first `length` rows of `x`, with zero rows appended when it is shorter."""
    out = np.zeros((length, *x.shape[1:]), dtype=x.dtype)
    n = min(length, x.shape[0])
    out[:n] = x[:n]
    return out


def center_offset(total: int, crop: int) -> int:
    """Where a centre crop starts (albumentations CenterCrop: floor((total - crop) / 2))."""
    if crop > total:
        raise ValueError(f"cannot crop {crop} out of {total}")
    return (total - crop) // 2


def join_streams(streams, feat_len: int) -> np.ndarray:
    """Streams (T_i, D_i) -> (feat_len, sum of D_i) float32: each padded / truncated to feat_len, concatenated
    along features ([RGB | flow])."""
    return np.concatenate([pad_or_truncate(np.asarray(x, np.float32), feat_len) for x in streams], axis=1)


def condition_rows(feats: np.ndarray, feat_len: int, feat_crop_len: int, sample_size: int,
                   offset: int | None = None) -> np.ndarray:
    """(T, D) features -> the (sample_size, D) rows the transformer sees: padded / truncated to `feat_len`,
    cropped to `feat_crop_len` rows (the centre, or from `offset`), resampled (ResampleFrames)."""
    feats = pad_or_truncate(np.asarray(feats, np.float32), feat_len)
    if offset is None:
        offset = center_offset(feat_len, feat_crop_len)
    if not 0 <= offset <= feat_len - feat_crop_len:
        raise ValueError(f"feature crop offset {offset} out of range 0..{feat_len - feat_crop_len}")
    return FeatureSampler(sample_size, feat_crop_len)(feats[offset:offset + feat_crop_len])


def check_features(x: np.ndarray, source: str, depth: int | None = None, kind: str | None = None) -> np.ndarray:
    """`x` when it is a (frames, dim) array of finite numbers, `dim` == `depth` when given (the model's, of `kind`
    features); else an error naming `source` (the file) and what is wrong. NaN or Inf features would end in the
    sampler's "probability tensor contains inf or nan", or a training loss gone non-finite, far from the file."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{source}: features have shape {x.shape}, expected (frames, dim): re-extract them with "
                         f"stages.extract_features")
    if depth is not None and x.shape[1] != depth:
        raise ValueError(f"{source}: features of shape {x.shape}, but the model was trained on (frames, {depth}) "
                         f"{kind or ''} features: extract them with `python -m stages.extract_features "
                         f"features={kind or 'KIND'}` or pass the matching transformer.ckpt")
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.argwhere(~finite)
        raise ValueError(f"{source}: {int(np.isnan(x).sum())} NaN and {int(np.isinf(x).sum())} infinite feature "
                         f"values (the first at frame {bad[0][0]}, dim {bad[0][1]}): the file is damaged or was "
                         f"extracted from broken frames; re-extract it with stages.extract_features")
    return x


def load_streams(dataset_cfg: Mapping[str, Any], features_cfg: Mapping[str, Any], clip_id: str) -> np.ndarray:
    """(feat_len, depth) float32: every stream padded / truncated to feat_len, concatenated along features."""
    feat_len = int(features_cfg["feat_len"])
    depth = int(features_cfg["depth"])
    streams = []
    for folder in features_cfg["folders"]:
        path = feature_path(dataset_cfg, str(folder), clip_id)
        x = check_features(load_pickle_array(path), str(path))
        streams.append((path, x))
    feats = join_streams([x for _, x in streams], feat_len)  # (feat_len, sum of stream dims)
    if feats.shape[1] != depth:
        widths = ", ".join(f"{p} -> {x.shape[1]}" for p, x in streams)
        raise ValueError(f"features of {clip_id!r} have {feats.shape[1]} dims ({widths}), but "
                         f"features.depth is {depth}: check the features config (features.folders / "
                         f"features.depth)")
    return feats


def load_features(
    dataset_cfg: Mapping[str, Any],
    features_cfg: Mapping[str, Any],
    clip_id: str,
    offset: int | None = None,
) -> np.ndarray:
    """(feat_crop_len, depth) float32 features of a clip: the centre crop, or rows offset.. when given."""
    feats = load_streams(dataset_cfg, features_cfg, clip_id)
    crop = int(features_cfg["feat_crop_len"])
    if offset is None:
        offset = center_offset(feats.shape[0], crop)
    if not 0 <= offset <= feats.shape[0] - crop:
        raise ValueError(f"feature crop offset {offset} out of range 0..{feats.shape[0] - crop}")
    return feats[offset:offset + crop]  # (feat_crop_len, depth)


def resample_frames(length: int, size: int) -> np.ndarray:
    """Indices of the `size` frames kept out of `length` (the original's ResampleFrames).

    idx = int32(linspace(0, L, S, endpoint=False)) + L // (S + 1). For L=212: S=1 -> [106],
    S=5 -> [35, 77, 119, 162, 204], S=212 -> 0..211.
    """
    if not 1 <= size <= length:
        raise ValueError(f"cannot resample {size} frames out of {length}: "
                         f"need 1 <= feat_sample_size <= {length}")
    idx = np.linspace(0, length, size, endpoint=False).astype(np.int32) + length // (size + 1)
    return idx.astype(np.int64)


class FeatureSampler:
    """Keeps `size` evenly spread rows of a (length, D) feature array: (length, D) -> (size, D)."""

    def __init__(self, size: int, length: int):
        self.size, self.length = int(size), int(length)
        self.indices = resample_frames(self.length, self.size)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        if feats.shape[0] != self.length:
            raise ValueError(f"FeatureSampler expects {self.length} frames, got {feats.shape[0]}")
        return feats[self.indices]  # (size, D)
