"""Classifier training: presets compose with the paper's values, normalisation statistics follow the original's
recipe and file format, precise BatchNorm re-estimates running statistics exactly, and tiny classifiers (Melception
and VGGish-ish) trained for a few dozen steps on generated demo clips beat chance in eval mode; their checkpoints
load through load_classifier with the same outputs and predictions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.config.presets import preset, preset_dict
from pipeline.data.normalization import STATS_NAME, Normalize, compute_stats, read_stats, resolve_stats, save_stats
from pipeline.train.loop import Trainer
from pipeline.train.train_classifier import ClassifierTask, recalibrate_bn
from tests.helpers import demo_spec


@pytest.fixture(scope="module")
def demo_mels(tmp_path_factory) -> dict:
    """A generated demo data set (4 classes x 5 clips of 2 s, tiny frames) with its mels, in the VAS layout."""
    from pipeline.data.layout import mel_path
    from pipeline.demo.make_demo_data import generate
    from pipeline.files.writes import save_npy
    from pipeline.media.mel import extract_mel

    root = tmp_path_factory.mktemp("demo")
    spec = demo_spec(num_classes=4, clips_per_class=5, seconds=2.0, size=32, fps=10)
    result = generate(root, spec)
    dataset = {"name": "demo", "layout": "vas", "root": str(root), "features": str(root / "features"),
               "splits": {"train": str(result["train"]), "valid": str(result["valid"])}, "classes": None}
    for video in sorted(Path(result["videos"]).rglob("*.mp4")):
        clip_id = f"{video.parent.name}/{video.stem}"
        save_npy(mel_path(dataset, clip_id), extract_mel(video, chain="direct"))
    return dataset


def test_presets_compose_with_the_papers_values(compose):
    mel = compose("train_classifier", "classifier=melception", "dataset=vggsound")
    assert mel.classifier.optim.batch_size == 8 and mel.classifier.optim.weight_decay == 0
    assert mel.classifier.model.width == 1.0 and mel.trainer.max_epochs == 100
    assert mel.trainer.early_stop_patience == 3 and mel.data.crop_len == 848
    assert mel.classifier.stats.endswith("normalization/" + STATS_NAME)
    vgg = compose("train_classifier", "classifier=vggishish")
    assert vgg.classifier.optim.batch_size == 32 and vgg.classifier.optim.weight_decay == 1e-4
    assert list(vgg.classifier.optim.betas) == [0.9, 0.999] and vgg.classifier.optim.lr == 3e-4
    for tiny in ("melception_tiny", "vggishish_tiny"):
        cfg = compose("train_classifier", f"classifier={tiny}", "dataset=demo")
        assert cfg.classifier.stats is None and cfg.trainer.max_steps > 0
    assert not mel.classifier.get("bn_recalibration_batches")  # the paper's: BN statistics as the original's
    assert compose("train_classifier", "classifier=melception_tiny").classifier.bn_recalibration_batches > 0


def test_recalibrate_bn_sets_the_average_batch_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Dropout(0.5)).eval()
    batches = [torch.randn(4, 1, 6, 6) * (i + 1) + i for i in range(3)]
    assert recalibrate_bn(model, iter(batches)) == 3
    bn = model[1]
    acts = [model[0](x) for x in batches]  # (4, 3, 4, 4) each
    assert torch.allclose(bn.running_mean, torch.stack([a.mean((0, 2, 3)) for a in acts]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([a.var((0, 2, 3)) for a in acts]).mean(0), atol=1e-4)
    assert not model.training and bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3
    before = bn.running_mean.clone()
    assert recalibrate_bn(model, iter([])) == 0 and torch.equal(bn.running_mean, before)  # no data: unchanged


def test_shipped_statistics_read(shared_dir):
    mean, std = read_stats(shared_dir / "data/normalization" / STATS_NAME)
    assert mean.shape == std.shape == (80,)
    assert 0.24 < mean.min() and mean.max() < 0.53 and 0.08 < std.min() and std.max() < 0.1


def test_statistics_follow_the_original_recipe(demo_mels, tmp_path):
    from pipeline.data.datasets import SpectrogramDataset

    mean, std = compute_stats(demo_mels, "train", spec_len=860)
    ds = SpectrogramDataset(demo_mels, "train", crop_len=860)
    mels = np.stack([ds.load_mel(i).astype(np.float64) for i in range(len(ds))])  # (N, 80, 860)
    assert np.allclose(mean, mels.mean(axis=2).mean(axis=0))
    assert np.allclose(std, mels.std(axis=2).mean(axis=0))  # mean of per-clip stds, not a pooled std
    # a missing file: computed and written (original format) to the run folder; then read back
    got_mean, got_std = resolve_stats(str(tmp_path / "missing.txt"), demo_mels, "train", tmp_path, spec_len=860)
    assert np.allclose(got_mean, mean) and np.allclose(got_std, std) and (tmp_path / STATS_NAME).is_file()
    back_mean, back_std = read_stats(tmp_path / STATS_NAME)
    assert np.allclose(back_mean, mean, atol=1e-8) and np.allclose(back_std, std, atol=1e-8)
    save_stats(tmp_path / "again.txt", mean, std)
    assert (tmp_path / "again.txt").read_text().splitlines()[0].count(" ") == 1
    image = torch.rand(2, 80, 10) * 2 - 1
    norm = Normalize(mean, std)(image)
    assert torch.allclose(norm[:, 3], ((image[:, 3] + 1) / 2 - mean[3]) / std[3], atol=1e-5)


@pytest.mark.parametrize("name", ["vggishish_tiny", "melception_tiny"])
def test_tiny_classifier_beats_chance_and_checkpoint_loads(demo_mels, tmp_path, one_thread, name):
    """Validation runs in eval mode: for Melception this needs the preset's BatchNorm re-estimation."""
    from pipeline.build.classifier import load_classifier

    torch.manual_seed(0)
    cfg = OmegaConf.create({
        "dataset": demo_mels,
        "classifier": preset("classifier", name),
        "data": {"train_split": "train", "val_split": "valid", "spec_len": 860, "crop_len": 256},
    })
    task = ClassifierTask(cfg)
    task = task
    task.batch_size = 4
    trainer = Trainer(task, {**preset_dict("trainer", "cpu"), "max_steps": 30, "val_every": 15, "log_every": 100},
                      tmp_path / "run")
    metrics = trainer.fit()
    chance = 1 / 4
    print(f"{name} after 30 steps: {metrics}")
    assert metrics["val/accuracy_1"] >= 2 * chance, metrics
    assert np.isfinite([metrics["val/mAP"], metrics["val/mROCAUC"], metrics["val/loss"]]).all()

    path = tmp_path / "run/checkpoints/last.pt"
    ckpt = torch.load(path, weights_only=True)
    arch = cfg.classifier.model.arch
    assert ckpt["kind"] == "classifier" and ckpt["model_args"]["arch"] == arch
    assert ckpt["classes"] == task.classes and ckpt["normalization"]["mean"].shape == (80,)
    names = ("Mixed_7c.", "fc.") if arch == "melception" else ("features.", "classifier.")
    assert all(any(k.startswith(n) for k in ckpt["state_dict"]) for n in names)  # the original's names
    model = load_classifier(path, kind=arch)
    trained = trainer.unwrap("model").eval()
    x = torch.randn(2, 80, 256)
    assert torch.allclose(model(x), trained(x), atol=1e-5)
    # the loaded classifier (eval mode, the saved running statistics) predicts the validation split as validation did
    val = task.val_dataset()
    images = task.normalize(torch.stack([torch.as_tensor(val[i]["image"]) for i in range(len(val))]))
    targets = torch.tensor([val[i]["target"] for i in range(len(val))])
    with torch.no_grad():
        predicted = model(images).argmax(1)
        assert torch.equal(predicted, trained(images).argmax(1))
    assert abs((predicted == targets).float().mean().item() - metrics["val/accuracy_1"]) < 1e-6
