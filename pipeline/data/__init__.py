"""Data sets for the VAS and VGGSound layouts, the feature sampler, and the paths of a clip's files.

- layout:   where a clip's mel / waveform / feature files lie, split files, labels (`Labels`)
- features: `load_features` (pad to feat_len, crop to feat_crop_len), `resample_frames`, `FeatureSampler`
- datasets: `SpectrogramDataset`, `ConditionedDataset` (and `batch_condition`, a batch's GPT condition),
  `WaveformDataset`
Pickled features are read only through `pipeline.safe_pickle.load_pickle_array`.
"""
from pipeline.data.datasets import (
    ConditionedDataset,
    SpectrogramDataset,
    WaveformDataset,
    batch_condition,
)
from pipeline.data.features import (
    FeatureSampler,
    load_features,
    load_streams,
    pad_or_truncate,
    resample_frames,
)
from pipeline.data.layout import (
    MEL_FOLDER,
    Labels,
    audio_path,
    feature_path,
    kind_path,
    mel_path,
    read_vggsound_csv,
    split_ids,
)

__all__ = [
    "MEL_FOLDER",
    "ConditionedDataset",
    "FeatureSampler",
    "Labels",
    "SpectrogramDataset",
    "WaveformDataset",
    "audio_path",
    "batch_condition",
    "feature_path",
    "kind_path",
    "load_features",
    "load_streams",
    "mel_path",
    "pad_or_truncate",
    "read_vggsound_csv",
    "resample_frames",
    "split_ids",
]
