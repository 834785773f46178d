"""The data layer on the real VAS mels and features made by the original pipeline (../shared/data/vas)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.data.conditions import FeatureSampler, load_features, load_streams, resample_frames
from pipeline.data.datasets import ConditionedDataset, SpectrogramDataset, WaveformDataset
from pipeline.data.layout import Labels, mel_path
from pipeline.files.safe_pickle import UnsafePickleError, load_pickle_array
from tests.helpers import features_preset

VAS_CLIPS = ["baby/video_01951", "cough/video_00331", "dog/video_02677", "dog/video_02754",
             "drum/video_02480", "drum/video_02542", "fireworks/video_02997", "fireworks/video_03051",
             "gun/video_00819", "hammer/video_00323"]
VAS_CLASSES = ["baby", "cough", "dog", "drum", "fireworks", "gun", "hammer", "sneeze"]
RGB, FLOW = "feature_rgb_bninception_dim1024_21.5fps", "feature_flow_bninception_dim1024_21.5fps"


def features_cfg(name: str):
    return OmegaConf.create(features_preset(name))


@pytest.fixture
def vas_cfg(vas_dir: Path, tmp_path: Path):
    split = tmp_path / "vas_real.txt"
    split.write_text("\n".join(VAS_CLIPS) + "\n")
    return OmegaConf.create({"name": "vas", "layout": "vas", "root": str(vas_dir),
                             "features": str(vas_dir / "features"),
                             "splits": {"train": str(split), "valid": str(split)}, "classes": VAS_CLASSES,
                             "meta_csv": None})


def pkl(vas_dir: Path, folder: str, clip: str) -> np.ndarray:
    label, name = clip.split("/")
    with open(vas_dir / "features" / label / folder / f"{name}.pkl", "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_spectrogram_dataset_matches_the_original_mels(vas_cfg, vas_dir):
    ds = SpectrogramDataset(vas_cfg, "train")
    assert len(ds) == 10 and ds.classes == VAS_CLASSES
    for i, clip in enumerate(VAS_CLIPS):
        item = ds[i]
        mel = np.load(mel_path(vas_cfg, clip))
        assert item["image"].shape == (80, 848) and item["image"].dtype == np.float32
        np.testing.assert_array_equal(item["image"], 2 * mel[:, 6:854] - 1)
        assert item["label"] == clip.split("/")[0] and item["target"] == VAS_CLASSES.index(item["label"])
        assert item["id"] == clip and item["file_path_"].endswith(f"{clip.split('/')[1]}_mel.npy")
    dog = ds[VAS_CLIPS.index("dog/video_02677")]["image"]  # spec §1.4
    assert dog.min() == -1.0 and abs(dog.max() - 0.8251) < 1e-4 and abs(dog.mean() - -0.5224) < 1e-4


def test_random_spectrogram_crop(vas_cfg):
    ds = SpectrogramDataset(vas_cfg, "train", random_crop=True)
    mel = 2 * np.load(mel_path(vas_cfg, VAS_CLIPS[0])) - 1
    torch.manual_seed(0)
    starts = set()
    for _ in range(20):
        image = ds[0]["image"]
        start = [s for s in range(13) if np.array_equal(mel[:, s:s + 848], image)]
        assert len(start) == 1
        starts.add(start[0])
    assert len(starts) > 3


def test_labels_from_split_files(vas_cfg, tmp_path):
    train, valid = tmp_path / "a.txt", tmp_path / "b.txt"
    train.write_text("gun/video_00819\ndog/video_02677\n")
    valid.write_text("cough/video_00331\n")
    cfg = OmegaConf.merge(vas_cfg, {"classes": None, "splits": {"train": str(train), "valid": str(valid)}})
    labels = Labels(cfg)
    assert labels.classes == ["cough", "dog", "gun"]
    ds = SpectrogramDataset(cfg, "train")
    assert ds.targets == [2, 1] and [ds[i]["label"] for i in range(2)] == ["gun", "dog"]


def test_bninception_features_pad_and_crop(vas_cfg, vas_dir):
    cfg = features_cfg("bninception")
    clip = "cough/video_00331"  # 214 BN-Inception rows: zero row 214 after padding to 215
    rgb, flow = pkl(vas_dir, RGB, clip), pkl(vas_dir, FLOW, clip)
    assert rgb.shape == flow.shape == (214, 1024)
    full = load_streams(vas_cfg, cfg, clip)
    assert full.shape == (215, 2048) and full.dtype == np.float32
    np.testing.assert_array_equal(full[:214], np.concatenate([rgb, flow], axis=1))
    assert not full[214].any() and full[213].any()
    feats = load_features(vas_cfg, cfg, clip)
    assert feats.shape == (212, 2048)
    np.testing.assert_array_equal(feats, full[1:213])
    assert not load_features(vas_cfg, cfg, clip, offset=3)[-1].any()
    clip = "dog/video_02677"  # 216 rows: truncated to 215, rows 1..212 kept
    feats = load_features(vas_cfg, cfg, clip)
    np.testing.assert_array_equal(feats[:, :1024], pkl(vas_dir, RGB, clip)[1:213])
    np.testing.assert_array_equal(feats[:, 1024:], pkl(vas_dir, FLOW, clip)[1:213])


def test_resnet50_features(vas_cfg, vas_dir):
    clip = "gun/video_00819"
    feats = load_features(vas_cfg, features_cfg("resnet50"), clip)
    np.testing.assert_array_equal(feats, pkl(vas_dir, "feature_resnet50_dim2048_21.5fps", clip)[1:213])


def test_depth_mismatch_names_the_files(vas_cfg):
    cfg = OmegaConf.merge(features_cfg("bninception"), {"folders": [RGB]})
    with pytest.raises(ValueError, match="1024 dims.*features.depth is 2048"):
        load_features(vas_cfg, cfg, VAS_CLIPS[0])


@pytest.mark.parametrize("size, expected", [
    (1, [106]), (2, [70, 176]), (5, [35, 77, 119, 162, 204]),
    (10, [19, 40, 61, 82, 103, 125, 146, 167, 188, 209]),
    (53, list(range(3, 212, 4))), (212, list(range(212))),
])
def test_resample_frames_spec_table(size, expected):
    assert resample_frames(212, size).tolist() == expected


def test_resample_frames_needs_enough_frames():
    with pytest.raises(ValueError, match="feat_sample_size"):
        resample_frames(212, 213)
    with pytest.raises(ValueError):
        FeatureSampler(5, 212)(np.zeros((215, 4)))


def test_conditioned_dataset(vas_cfg):
    fcfg = features_cfg("bninception")
    ds = ConditionedDataset(vas_cfg, fcfg, "train", feat_sample_size=5)
    item = ds[2]
    assert item["feature"].shape == (5, 2048) and item["feature"].dtype == np.float32
    expected = load_features(vas_cfg, fcfg, VAS_CLIPS[2])[[35, 77, 119, 162, 204]]
    np.testing.assert_array_equal(item["feature"], expected)
    assert item["image"].shape == (80, 848) and item["target"] == VAS_CLASSES.index("dog")
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["feature"].shape == (3, 5, 2048) and batch["image"].shape == (3, 80, 848)
    assert batch["target"].tolist() == [0, 1, 2]

    none = ConditionedDataset(vas_cfg, fcfg, "train", feat_sample_size=1, condition="none")
    a, b = none[0]["feature"], none[0]["feature"]
    assert a.shape == (1, 2048) and a.dtype == np.float32 and 0 <= a.min() and a.max() < 1
    assert not np.array_equal(a, b)  # fresh per item

    cls = ConditionedDataset(vas_cfg, fcfg, "train", feat_sample_size=1, condition="class")
    assert "feature" not in cls[0] and cls[0]["target"] == 0
    with pytest.raises(ValueError, match="condition"):
        ConditionedDataset(vas_cfg, fcfg, "train", feat_sample_size=1, condition="text")


def test_random_crop_keeps_features_aligned(vas_cfg):
    fcfg = features_cfg("resnet50")
    ds = ConditionedDataset(vas_cfg, fcfg, "train", feat_sample_size=212, random_crop=True)
    mel = 2 * np.load(mel_path(vas_cfg, VAS_CLIPS[0])) - 1
    full = load_streams(vas_cfg, fcfg, VAS_CLIPS[0])
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        item = ds[0]
        m = next(s for s in range(13) if np.array_equal(mel[:, s:s + 848], item["image"]))
        f = next(s for s in range(4) if np.array_equal(full[s:s + 212], item["feature"]))
        assert m == 4 * f + 2  # same time window: 4 mel frames per visual frame, centres 6 and 1
        seen.add(f)
    assert seen == {0, 1, 2}


def test_missing_files_are_listed(vas_cfg, tmp_path):
    split = tmp_path / "missing.txt"
    split.write_text("\n".join(VAS_CLIPS + [f"dog/video_9999{i}" for i in range(7)]) + "\n")
    cfg = OmegaConf.merge(vas_cfg, {"splits": {"train": str(split)}})
    message = r"(?s)7 mel spectrograms.*video_99990_mel.npy.*and 2 more.*extract_mels"
    with pytest.raises(FileNotFoundError, match=message):
        SpectrogramDataset(cfg, "train")
    with pytest.raises(KeyError, match="test"):
        SpectrogramDataset(vas_cfg, "test")


def test_bad_mel_shape_names_the_file(tmp_path):
    folder = tmp_path / "features" / "dog" / "melspec_10s_22050hz"
    folder.mkdir(parents=True)
    np.save(folder / "x_mel.npy", np.zeros((80, 100), np.float32))
    (tmp_path / "s.txt").write_text("dog/x\n")
    cfg = OmegaConf.create({"layout": "vas", "features": str(tmp_path / "features"),
                            "splits": {"train": str(tmp_path / "s.txt")}, "classes": None})
    message = r"x_mel.npy: mel has shape \(80, 100\), expected \(80, 860\).*extract_mels"
    with pytest.raises(ValueError, match=message):
        SpectrogramDataset(cfg, "train")[0]


def test_vggsound_layout_and_labels(tmp_path):
    (tmp_path / "meta.csv").write_text('--0PQM4-hqg,30,"dog, barking",train\n'
                                       "--56QUhyDQM,185,playing piano,test\n"
                                       "--0PQM4-hqg,30,cat meowing,train\n")  # last row wins
    ids = ["--0PQM4-hqg_30000_40000", "--56QUhyDQM_185000_195000"]
    (tmp_path / "test.txt").write_text("\n".join(ids) + "\n")
    mels = tmp_path / "vggsound" / "melspec_10s_22050hz"
    mels.mkdir(parents=True)
    for i in ids:
        np.save(mels / f"{i}_mel.npy", np.full((80, 860), 0.5))  # VGGSound mels are float64
    cfg = OmegaConf.create({"layout": "vggsound", "features": str(tmp_path / "vggsound"), "classes": None,
                            "splits": {"test": str(tmp_path / "test.txt")},
                            "meta_csv": str(tmp_path / "meta.csv")})
    ds = SpectrogramDataset(cfg, "test")
    assert ds.classes == ["cat meowing", "playing piano"]
    assert [ds[i]["label"] for i in range(2)] == ["cat meowing", "playing piano"] and ds.targets == [0, 1]
    assert ds[0]["image"].dtype == np.float32 and np.allclose(ds[0]["image"], 0.0)


def test_waveform_dataset(tmp_path):
    folder = tmp_path / "features" / "dog" / "melspec_10s_22050hz"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(folder / "a_audio.npy", (0.3 * rng.standard_normal(220500)).astype(np.float32))
    np.save(folder / "b_audio.npy", np.full(1000, -0.2, np.float32))
    (tmp_path / "s.txt").write_text("dog/a\ndog/b\n")
    cfg = OmegaConf.create({"layout": "vas", "features": str(tmp_path / "features"),
                            "splits": {"train": str(tmp_path / "s.txt")}})
    train = WaveformDataset(cfg, "train", segment=8192, train=True)
    torch.manual_seed(0)
    peaks = []
    for _ in range(10):
        x = train[0]
        assert x.shape == (1, 8192) and x.dtype == torch.float32
        peaks.append(float(x.abs().max()))
    assert max(peaks) <= 0.95 + 1e-6 and min(peaks) >= 0.3 * 0.6 and np.std(peaks) > 0.01  # random gains
    short = train[1]
    assert short.shape == (1, 8192) and not short[0, 1000:].any() and short[0, :1000].max() < 0
    full = WaveformDataset(cfg, "train", train=False)[0]
    assert full.shape == (1, 220500) and abs(float(full.abs().max()) - 0.95) < 1e-6


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_safe_pickle_refuses_code_and_does_not_run_it(tmp_path, vas_cfg, vas_dir):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps(_Exploit(marker), protocol=3))
    with pytest.raises(UnsafePickleError, match=r"evil.pkl: refused global (posix|os|nt)\.system"):
        load_pickle_array(bad)
    assert not marker.exists()
    # the data layer reads features only through the safe loader
    features = tmp_path / "features" / "dog" / RGB
    features.mkdir(parents=True)
    (features / "x.pkl").write_bytes(pickle.dumps(_Exploit(marker), protocol=4))
    cfg = OmegaConf.merge(vas_cfg, {"features": str(tmp_path / "features")})
    with pytest.raises(UnsafePickleError, match="x.pkl: refused global"):
        rgb_only = OmegaConf.merge(features_cfg("bninception"), {"folders": [RGB], "depth": 1024})
        load_features(cfg, rgb_only, "dog/x")
    assert not marker.exists()
    for obj in ({"a": np.zeros(3)}, np.array([1, "x"], dtype=object)):
        bad.write_bytes(pickle.dumps(obj))
        with pytest.raises(UnsafePickleError):
            load_pickle_array(bad)


def test_safe_pickle_reads_every_real_pickle(vas_dir):
    paths = sorted((vas_dir / "features").glob("*/feature_*/*.pkl"))
    assert len(paths) == 30
    for path in paths:
        with open(path, "rb") as f:
            expected = pickle.load(f, encoding="bytes")
        got = load_pickle_array(path)
        assert got.dtype == expected.dtype and np.array_equal(got, expected)
