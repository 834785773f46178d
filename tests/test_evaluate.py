"""The evaluate stage on a tiny fake setup: a random-weight narrow Melception saved as our checkpoint, the real
VAS mels of ../shared/data/vas as reals, and copies / perturbed copies of them as fakes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.evaluate_stage import clip_id_of, find_samples, run

ROOT = Path(__file__).resolve().parents[1]
VAS_CLASSES = ["baby", "cough", "dog", "drum", "fireworks", "gun", "hammer", "sneeze"]


@pytest.fixture(scope="module")
def setup(vas_dir, shared_dir, tmp_path_factory) -> dict:
    from models.melception import Melception
    from pipeline.data import mel_path
    from pipeline.tasks.classifier import read_stats
    from pipeline.train.checkpoint import save_checkpoint

    tmp = tmp_path_factory.mktemp("evaluate")
    ids = sorted(f"{p.parents[1].name}/{p.name[:-len('_mel.npy')]}"
                 for p in (vas_dir / "features").glob("*/melspec_10s_22050hz/*_mel.npy"))
    (tmp / "valid.txt").write_text("".join(f"{i}\n" for i in ids))
    dataset = {"name": "vas", "layout": "vas", "root": str(vas_dir), "features": str(vas_dir / "features"),
               "splits": {"valid": str(tmp / "valid.txt")}, "classes": VAS_CLASSES, "eval_split": "valid"}
    torch.manual_seed(0)
    args = {"arch": "melception", "num_classes": 8, "aux_logits": True, "width": 0.0625}
    model = Melception(**{k: v for k, v in args.items() if k != "arch"})
    mean, std = read_stats(shared_dir / "data/normalization/train_means_stds_melspec_10s_22050hz.txt")
    # random weights, but BatchNorm statistics of real inputs: with the untouched running stats (0, 1) a narrow
    # random Melception maps every input to almost the same features
    mels = np.stack([np.load(mel_path(dataset, i))[:, 6:854] for i in ids])
    x = (torch.from_numpy(mels).float() - torch.tensor(mean).float()[:, None]) / torch.tensor(std).float()[:, None]
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the calibration batch
    with torch.no_grad():
        model.train()(x)
    model.eval()
    ckpt = tmp / "melception_tiny.pt"
    save_checkpoint(ckpt, {"kind": "classifier", "model_args": args, "state_dict": model.state_dict(),
                           "classes": VAS_CLASSES,
                           "normalization": {"mean": torch.tensor(mean), "std": torch.tensor(std)}})
    return {"tmp": tmp, "ids": ids, "dataset": dataset, "ckpt": ckpt}


def write_fakes(setup: dict, name: str, noise: float, samples_per_clip: int = 1) -> Path:
    """cls_<target>/<video>_mel_sample_<k>.npy (80, 848) from each real mel, plus Gaussian noise (unclamped)."""
    rng = np.random.default_rng(0)
    out = setup["tmp"] / name
    for clip in setup["ids"]:
        label, video = clip.split("/")
        mel = np.load(Path(setup["dataset"]["features"]) / label / "melspec_10s_22050hz" / f"{video}_mel.npy")
        mel = mel[:, 6:854].astype(np.float32)  # the centre 848 frames, as samples are
        folder = out / f"cls_{VAS_CLASSES.index(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(samples_per_clip):
            fake = mel + noise * rng.standard_normal(mel.shape).astype(np.float32) if noise else mel
            np.save(folder / f"{video}_mel_sample_{k}.npy", fake)
    return out


def eval_cfg(setup: dict, samples_dir: Path, **extra) -> OmegaConf:
    return OmegaConf.create({
        "dataset": setup["dataset"], "samples_dir": str(samples_dir), "split": "valid", "reals": "all",
        "classifier": {"ckpt": str(setup["ckpt"]), "stats": None}, "batch_size": 4, "crop_len": 848,
        "num_workers": 0, "device": "cpu", "metrics_file": "metrics.json", "logger": {"name": "none"}, **extra})


def test_sample_names_map_to_clips(tmp_path):
    (tmp_path / "cls_2").mkdir()
    np.save(tmp_path / "cls_2" / "video_02677_mel_sample_3.npy", np.zeros((80, 848), np.float32))
    (tmp_path / "cls_2" / "notes.txt").write_text("ignored")
    [(path, target, vid)] = find_samples(tmp_path)
    assert target == 2 and vid == "video_02677_mel"
    assert clip_id_of(vid, target, {"layout": "vas"}, VAS_CLASSES) == "dog/video_02677"
    assert clip_id_of("abcdefghijk_10000_20000", 5, {"layout": "vggsound"}, []) == "abcdefghijk_10000_20000"
    with pytest.raises(FileNotFoundError, match="no samples"):
        find_samples(tmp_path / "cls_2")


def test_reals_against_themselves_give_zero_fid_and_mkl(setup):
    samples = write_fakes(setup, "copies", noise=0.0)
    metrics = run(eval_cfg(setup, samples), folder=setup["tmp"] / "run_copies")
    assert abs(metrics["frechet_inception_distance"]) < 1e-3
    assert abs(metrics["kullback_leibler_divergence"]) < 1e-4
    assert math.isfinite(metrics["kernel_inception_distance_mean"])  # unbiased: not 0 for paired identical sets
    assert metrics["num_fakes"] == metrics["num_reals"] == len(setup["ids"])
    assert metrics["chance"] == 1 / 8
    assert metrics["class_match_rate"] == metrics["real_class_match_rate"]  # identical inputs, identical argmax
    on_disk = json.loads((samples / "metrics.json").read_text())
    assert on_disk["frechet_inception_distance"] == metrics["frechet_inception_distance"]


def test_perturbed_fakes_give_finite_metrics_and_larger_distances(setup):
    samples = write_fakes(setup, "noisy", noise=0.1, samples_per_clip=2)
    metrics = run(eval_cfg(setup, samples), folder=setup["tmp"] / "run_noisy")
    for key in ("frechet_inception_distance", "inception_score_mean", "inception_score_std",
                "kernel_inception_distance_mean", "kernel_inception_distance_std", "kullback_leibler_divergence",
                "class_match_rate", "chance"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), (key, metrics[key])
    assert metrics["num_fakes"] == 2 * metrics["num_reals"]
    assert metrics["frechet_inception_distance"] > 1e-3 and metrics["kullback_leibler_divergence"] > 1e-4
    assert metrics["inception_score_mean"] >= 1.0


def test_classifier_of_other_classes_gives_no_class_match(setup, tmp_path):
    from models.melception import Melception
    from pipeline.train.checkpoint import save_checkpoint

    model = Melception(num_classes=5, width=0.0625)
    ckpt = tmp_path / "other.pt"
    save_checkpoint(ckpt, {"kind": "classifier", "model_args": {"arch": "melception", "width": 0.0625},
                           "state_dict": model.state_dict(),
                           "normalization": {"mean": torch.full((80,), 0.4), "std": torch.full((80,), 0.1)}})
    samples = write_fakes(setup, "copies_other", noise=0.0)
    cfg = eval_cfg(setup, samples, reals="sampled")
    cfg.classifier.ckpt = str(ckpt)
    metrics = run(cfg, folder=tmp_path / "run")
    assert metrics["class_match_rate"] is None and metrics["chance"] == 1 / 5


def test_config_composes_finds_the_default_sample_run_and_requires_a_classifier():
    from hydra import compose, initialize_config_dir
    from omegaconf.errors import MissingMandatoryValue

    import pipeline.config  # noqa: F401

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=["dataset=vggsound"])
    assert cfg.split == "test" and cfg.crop_len == 848 and cfg.reals == "all"
    assert cfg.classifier.stats.endswith("train_means_stds_melspec_10s_22050hz.txt")
    assert cfg.samples_dir.endswith("sample/vggsound/default/samples/test")
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.classifier.ckpt
