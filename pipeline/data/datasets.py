"""Torch data sets over the VAS and VGGSound layouts (spec §2.4, §3.6, §5.4, §8).

Randomness (crops, gains, the No-Feats vectors) comes from torch's global generator only; the training loop seeds
it for each item from (run seed, epoch, index) (`pipeline.train.draws.SeededItems`), so every worker, epoch and
item draws its own numbers and a resumed run draws the same ones (the original drew from numpy, whose stream repeats
across workers; spec §11.23).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.conditions import FeatureSampler, center_offset, condition_rows, load_streams
from pipeline.data.layout import (
    Labels,
    audio_path,
    feature_path,
    mel_path,
    require_files,
    split_ids,
)
from pipeline.media.mel import CROP_LEN, N_MELS, SPEC_LEN

CONDITIONS = ("features", "class", "none")


def _randint(high: int) -> int:
    """A uniform integer in 0..high (inclusive) from torch's generator."""
    return int(torch.randint(0, high + 1, ()).item())



def load_mel_crop(path: str | Path, crop: int) -> np.ndarray:
    """The [0, 1] mel stored in `path`, centre-cropped to `crop` frames: (80, crop) float32. A file that is not a
    mel of at least `crop` frames is an error naming it (samples are (80, 848), stored reals (80, 860))."""
    mel = np.load(path)
    if mel.ndim != 2 or mel.shape[0] != N_MELS or mel.shape[1] < crop:
        raise ValueError(f"{path}: expected a mel ({N_MELS}, >= {crop}), got {mel.shape}; samples and reals must be "
                         f"({N_MELS}, {CROP_LEN}) or the stored ({N_MELS}, {SPEC_LEN}): re-extract or re-sample it")
    start = center_offset(mel.shape[1], crop)
    return np.ascontiguousarray(mel[:, start:start + crop], dtype=np.float32)


class MelFiles(Dataset):
    """(index, [0, 1] mel (80, crop) float32) of a list of .npy files, centre-cropped (`load_mel_crop`)."""

    def __init__(self, paths: Sequence[Path], crop: int):
        self.paths, self.crop = list(paths), int(crop)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, torch.from_numpy(load_mel_crop(self.paths[index], self.crop))


class SpectrogramDataset(Dataset):
    """Mel spectrograms of one split: item `image` float32 (80, crop_len) = 2*mel - 1 in [-1, 1].

    Also `target` (int), `label` (class name), `id` (the split row, e.g. `dog/video_02677`) and `file_path_`
    (the mel file). The stored (80, 860) mel is cropped at the centre (columns 6..853) or at random.
    """

    def __init__(self, dataset_cfg: Mapping[str, Any], split: str, *, spec_len: int = SPEC_LEN,
                 crop_len: int = CROP_LEN, random_crop: bool = False):
        self.dataset_cfg = dataset_cfg
        self.split = split
        self.spec_len, self.crop_len = int(spec_len), int(crop_len)
        if self.crop_len > self.spec_len:
            raise ValueError(f"crop_len {crop_len} > spec_len {spec_len}")
        self.random_crop = bool(random_crop)
        self.ids = split_ids(dataset_cfg, split)
        self.labels = Labels(dataset_cfg)
        self.classes = self.labels.classes
        self.targets = [self.labels.target(i) for i in self.ids]
        self.mel_paths = [mel_path(dataset_cfg, i) for i in self.ids]
        require_files(self.mel_paths, f"mel spectrograms of split {split!r}",
                      "Fix: run `python -m stages.extract_mels` for this data set, or check "
                      "dataset.features and the split file.")

    def __len__(self) -> int:
        return len(self.ids)

    def load_mel(self, index: int) -> np.ndarray:
        """The stored (80, spec_len) mel in [0, 1], float32; a wrong shape raises an error naming the file."""
        path = self.mel_paths[index]
        mel = np.load(path)
        if mel.shape != (N_MELS, self.spec_len):
            raise ValueError(f"{path}: mel has shape {mel.shape}, expected ({N_MELS}, {self.spec_len}); "
                             f"re-extract it with `python -m stages.extract_mels`")
        return mel.astype(np.float32, copy=False)

    def mel_offset(self) -> int:
        if self.random_crop:
            return _randint(self.spec_len - self.crop_len)
        return center_offset(self.spec_len, self.crop_len)

    def spectrogram_item(self, index: int, offset: int) -> dict[str, Any]:
        mel = self.load_mel(index)[:, offset:offset + self.crop_len]  # (80, crop_len)
        return {
            "image": (2.0 * mel - 1.0).astype(np.float32),
            "target": self.targets[index],
            "label": self.labels.label(self.ids[index]),
            "id": self.ids[index],
            "file_path_": str(self.mel_paths[index]),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.spectrogram_item(index, self.mel_offset())


class ConditionedDataset(SpectrogramDataset):
    """Spectrogram items with their condition, for the transformer.

    condition="features": `feature` float32 (feat_sample_size, depth), the resampled rows of the cropped
    (feat_crop_len, depth) visual features. "none": U[0, 1) vectors of the same shape, fresh per item (the
    original's No-Feats). "class": only `target`. With random_crop, the feature window and the mel window move
    together (4 mel frames per visual frame), where the original cropped them independently (spec §11.20).
    """

    def __init__(self, dataset_cfg: Mapping[str, Any], features_cfg: Mapping[str, Any], split: str,
                 feat_sample_size: int, condition: str = "features", random_crop: bool = False, *,
                 spec_len: int = SPEC_LEN, crop_len: int = CROP_LEN):
        if condition not in CONDITIONS:
            raise ValueError(f"condition={condition!r} is unknown: use one of {CONDITIONS}")
        super().__init__(dataset_cfg, split, spec_len=spec_len, crop_len=crop_len, random_crop=random_crop)
        self.features_cfg = features_cfg
        self.condition = condition
        self.depth = int(features_cfg["depth"])
        self.feat_len = int(features_cfg["feat_len"])
        self.feat_crop_len = int(features_cfg["feat_crop_len"])
        self.sampler = FeatureSampler(feat_sample_size, self.feat_crop_len)
        if condition == "features":
            folders = [str(folder) for folder in features_cfg["folders"]]
            paths = [feature_path(dataset_cfg, folder, i) for i in self.ids for folder in folders]
            require_files(paths, f"feature pickles of split {split!r}",
                          "Fix: run `python -m stages.extract_features` for this data set, or check "
                          "dataset.features and features.folders.")

    def offsets(self) -> tuple[int, int]:
        """(mel offset, feature offset): centres, or a random pair whose windows cover the same time."""
        mel_center = center_offset(self.spec_len, self.crop_len)
        feat_center = center_offset(self.feat_len, self.feat_crop_len)
        if not self.random_crop:
            return mel_center, feat_center
        ratio = self.crop_len / self.feat_crop_len  # mel frames per visual frame (848 / 212 = 4)
        if ratio != int(ratio):
            return _randint(self.spec_len - self.crop_len), _randint(self.feat_len - self.feat_crop_len)
        feat_offsets = range(self.feat_len - self.feat_crop_len + 1)
        pairs = [(mel_center + int(ratio) * (f - feat_center), f) for f in feat_offsets]
        pairs = [(m, f) for m, f in pairs if 0 <= m <= self.spec_len - self.crop_len]
        return pairs[_randint(len(pairs) - 1)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        mel_offset, feat_offset = self.offsets()
        item = self.spectrogram_item(index, mel_offset)
        if self.condition == "features":
            feats = load_streams(self.dataset_cfg, self.features_cfg, self.ids[index])
            item["feature"] = condition_rows(feats, self.feat_len, self.feat_crop_len, self.sampler.size,
                                             feat_offset)  # (S, depth)
        elif self.condition == "none":
            item["feature"] = torch.rand(self.sampler.size, self.depth).numpy()  # (S, depth), U[0, 1)
        return item


def batch_condition(batch: Mapping[str, Any], condition: str, device: torch.device | None = None) -> torch.Tensor:
    """The GPT's condition from a collated ConditionedDataset batch.

    features / none: `feature` (B, S, D) -> (B, D, S) float32 (GPTFeats' Conv1d layout); class: `target` (B,) int64.
    """
    if condition == "class":
        cond = torch.as_tensor(batch["target"]).long()  # (B,)
    else:
        cond = torch.as_tensor(batch["feature"]).float().permute(0, 2, 1)  # (B, S, D) -> (B, D, S)
    return cond.to(device) if device is not None else cond


class WaveformDataset(Dataset):
    """Waveforms for the vocoder (spec §5.4): float32 tensors (1, segment) in training, (1, N) in evaluation.

    Reads `<id>_audio.npy` next to the mels (220500 samples at 22050 Hz), peak-normalises to 0.95, and in
    training applies a random gain U(0.3, 1.0) and takes a random `segment`-sample window (zero-padded when
    the waveform is shorter). Evaluation returns the whole normalised waveform without gain.

    `sound_crops`: the share of training windows centred on a sample drawn in proportion to its energy instead of
    uniformly (0: every window uniform, as the original). On sparse clips (the demo's: sound in a fifth of each
    clip) uniform windows are mostly near-silence, where a vocoder learns nothing about the level of sound.
    """

    def __init__(self, dataset_cfg: Mapping[str, Any], split: str, segment: int = 8192, train: bool = True,
                 sound_crops: float = 0.0):
        if not 0.0 <= float(sound_crops) <= 1.0:
            raise ValueError(f"vocoder.sound_crops={sound_crops}: use a share in [0, 1]")
        self.segment = int(segment)
        self.train = bool(train)
        self.sound_crops = float(sound_crops)
        self.ids = split_ids(dataset_cfg, split)
        self.paths = [audio_path(dataset_cfg, i) for i in self.ids]
        require_files(self.paths, f"waveforms (_audio.npy) of split {split!r}",
                      "Fix: run `python -m stages.extract_mels` (it writes `<id>_audio.npy` next to each "
                      "mel), or check dataset.features and the split file.")

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> np.ndarray:
        path = self.paths[index]
        wav = np.load(path)
        if wav.ndim != 1 or wav.size == 0:
            raise ValueError(f"{path}: waveform has shape {wav.shape}, expected (samples,); re-extract it "
                             f"with `python -m stages.extract_mels`")
        return wav.astype(np.float32, copy=False)

    def __getitem__(self, index: int) -> torch.Tensor:
        wav = torch.from_numpy(self.load(index).copy())
        peak = wav.abs().max()
        if peak > 0:
            wav = 0.95 * wav / peak  # 0.95 * librosa.util.normalize
        if not self.train:
            return wav.unsqueeze(0)  # (1, N)
        wav = wav * (0.3 + 0.7 * torch.rand(()))  # random gain U(0.3, 1.0)
        if wav.numel() >= self.segment:
            start = _randint(wav.numel() - self.segment)
            if self.sound_crops and float(torch.rand(())) < self.sound_crops:
                centre = int(torch.multinomial(wav.double() ** 2 + 1e-20, 1))  # a sample, as likely as it is loud
                start = min(max(0, centre - self.segment // 2), wav.numel() - self.segment)
            wav = wav[start:start + self.segment]
        else:
            wav = torch.nn.functional.pad(wav, (0, self.segment - wav.numel()))
        return wav.unsqueeze(0)  # (1, segment)
