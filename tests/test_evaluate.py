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

from pipeline.config.presets import compose_stage
from pipeline.evaluate.evaluate import clip_id_of, find_samples, run

VAS_CLASSES = ["baby", "cough", "dog", "drum", "fireworks", "gun", "hammer", "sneeze"]


@pytest.fixture(scope="module")
def setup(vas_dir, shared_dir, tmp_path_factory) -> dict:
    from models.melception import Melception
    from pipeline.checkpoints.format import save_checkpoint
    from pipeline.data.layout import mel_path
    from pipeline.data.normalization import read_stats

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


def stage_cfg(values: dict) -> OmegaConf:
    """The evaluate stage's composed config (every key and default as the stage has them) with `values` set."""
    cfg = compose_stage("evaluate", ["classifier.ckpt=none", "logger=none"])
    OmegaConf.set_struct(cfg, False)
    cfg.dataset = values.pop("dataset")  # a generated data set: replaces the demo's node
    return OmegaConf.merge(cfg, {"shuffled_samples_dir": None, "codebook": {"ckpt": None}, "vocoder": {"ckpt": None},
                                 "events_file": None, **values})


def eval_cfg(setup: dict, samples_dir: Path, **extra) -> OmegaConf:
    return stage_cfg({"dataset": setup["dataset"], "samples_dir": str(samples_dir), "split": "valid",
                      "classifier": {"ckpt": str(setup["ckpt"]), "stats": None}, "batch_size": 4, "device": "cpu",
                      **extra})


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
    metrics = run(eval_cfg(setup, samples, degenerate_metrics="compute"), run_dir=setup["tmp"] / "run_copies")
    assert abs(metrics["frechet_inception_distance"]) < 1e-3  # computed on request, as the original did
    assert "covariance rank" in metrics["notes"]["frechet_inception_distance"]
    assert abs(metrics["kullback_leibler_divergence"]) < 1e-4
    assert math.isfinite(metrics["kernel_inception_distance_mean"])  # unbiased: not 0 for paired identical sets
    assert metrics["num_fakes"] == metrics["num_reals"] == len(setup["ids"])
    assert metrics["chance"] == 1 / 8
    assert metrics["class_match_rate"] == metrics["real_class_match_rate"]  # identical inputs, identical argmax
    on_disk = json.loads((samples / "metrics.json").read_text())
    assert on_disk["frechet_inception_distance"] == metrics["frechet_inception_distance"]


def test_too_few_samples_give_null_metrics_with_reasons_not_degenerate_figures(setup):
    samples = write_fakes(setup, "few", noise=0.1, samples_per_clip=1)
    metrics = run(eval_cfg(setup, samples), run_dir=setup["tmp"] / "run_few")
    n = len(setup["ids"])
    assert metrics["num_fakes"] == metrics["num_reals"] == n < 20
    for key in ("frechet_inception_distance", "inception_score_mean", "inception_score_std",
                "kernel_inception_distance_mean", "kernel_inception_distance_std"):
        assert metrics[key] is None, key
    notes = metrics["notes"]
    assert f"{n} samples give fewer than 2 per split of 10" in notes["inception_score"]
    assert "whole of both sets" in notes["kernel_inception_distance"]
    assert f"reals: {n} samples, covariance rank" in notes["frechet_inception_distance"]
    assert math.isfinite(metrics["kullback_leibler_divergence"])  # per-fake: defined for any count
    on_disk = json.loads((samples / "metrics.json").read_text())
    assert on_disk["notes"] == notes and on_disk["inception_score_mean"] is None
    # the model checks without their inputs say why, and so does the targets table
    assert "no shuffled-condition samples" in metrics["shuffled_note"]
    assert "no codebook checkpoint" in metrics["codebook"]["skipped"]
    assert "no events file" in metrics["synchrony"]["skipped"]
    assert all(row["met"] is None for row in metrics["targets"] if row["measure"].startswith(("synchrony", "codebook",
                                                                                               "vocoder")))


def test_perturbed_fakes_give_finite_metrics_and_larger_distances(setup):
    samples = write_fakes(setup, "noisy", noise=0.1, samples_per_clip=2)
    metrics = run(eval_cfg(setup, samples, degenerate_metrics="compute"), run_dir=setup["tmp"] / "run_noisy")
    for key in ("frechet_inception_distance", "inception_score_mean", "inception_score_std",
                "kernel_inception_distance_mean", "kernel_inception_distance_std", "kullback_leibler_divergence",
                "class_match_rate", "chance"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), (key, metrics[key])
    assert metrics["num_fakes"] == 2 * metrics["num_reals"]
    assert metrics["frechet_inception_distance"] > 1e-3 and metrics["kullback_leibler_divergence"] > 1e-4
    assert metrics["inception_score_mean"] >= 1.0


def test_classifier_of_other_classes_gives_no_class_match(setup, tmp_path):
    from models.melception import Melception
    from pipeline.checkpoints.format import save_checkpoint

    model = Melception(num_classes=5, width=0.0625)
    ckpt = tmp_path / "other.pt"
    save_checkpoint(ckpt, {"kind": "classifier", "model_args": {"arch": "melception", "width": 0.0625},
                           "state_dict": model.state_dict(),
                           "normalization": {"mean": torch.full((80,), 0.4), "std": torch.full((80,), 0.1)}})
    samples = write_fakes(setup, "copies_other", noise=0.0)
    cfg = eval_cfg(setup, samples, reals="sampled")
    cfg.classifier.ckpt = str(ckpt)
    metrics = run(cfg, run_dir=tmp_path / "run")
    assert metrics["class_match_rate"] is None and metrics["chance"] == 1 / 5


def test_config_composes_finds_the_default_sample_run_and_requires_a_classifier(compose):
    from omegaconf.errors import MissingMandatoryValue

    cfg = compose("evaluate", "dataset=vggsound")
    assert cfg.split == "test" and cfg.crop_len == 848 and cfg.reals == "all"
    assert cfg.classifier.stats.endswith("train_means_stds_melspec_10s_22050hz.txt")
    assert cfg.samples_dir.endswith("sample/vggsound/default/samples/test")
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.classifier.ckpt


# ------------------------------------------------------------------------ on the generated demo data set
@pytest.fixture(scope="module")
def demo(tmp_path_factory, original_fixtures) -> dict:
    """A small generated demo data set (real mp4s, events.json, mels by the mel stage's function), a random tiny
    Melception of its classes, a random tiny codebook and the original's small MelGAN."""
    from models.melception import Melception
    from pipeline.checkpoints.format import save_checkpoint
    from pipeline.data.layout import audio_path, mel_path, video_path
    from pipeline.demo.make_demo_data import generate
    from pipeline.files.writes import save_npy
    from pipeline.media.mel import extract_mel_and_audio
    from tests.helpers import demo_spec, make_codebook

    tmp = tmp_path_factory.mktemp("evaluate_demo")
    root = tmp / "demo_data"
    spec = demo_spec(num_classes=2, clips_per_class=3, seconds=2.0, size=32, fps=25)
    generate(root, spec)
    classes = (root / "classes.txt").read_text().split()
    dataset = {"name": "demo", "layout": "vas", "root": str(root), "videos": str(root / "videos"),
               "features": str(root / "features"), "events": str(root / "events.json"), "classes": classes,
               "splits": {"train": str(root / "demo_train.txt"), "valid": str(root / "demo_valid.txt")},
               "eval_split": "valid"}
    for split in ("train", "valid"):
        for clip in (root / f"demo_{split}.txt").read_text().split():
            mel, wave, _ = extract_mel_and_audio(video_path(root / "videos", clip, "vas"), chain="direct")
            save_npy(mel_path(dataset, clip), mel)
            save_npy(audio_path(dataset, clip), wave)
    torch.manual_seed(0)
    model = Melception(num_classes=len(classes), width=0.0625).eval()
    ckpt = tmp / "melception.pt"
    save_checkpoint(ckpt, {"kind": "classifier", "model_args": {"arch": "melception", "width": 0.0625},
                           "state_dict": model.state_dict(), "classes": classes,
                           "normalization": {"mean": torch.full((80,), 0.3), "std": torch.full((80,), 0.2)}})
    return {"tmp": tmp, "dataset": dataset, "classifier": ckpt, "codebook": make_codebook(tmp / "codebook.pt"),
            "vocoder": original_fixtures / "melgan_netG_small.pt",
            "valid": (root / "demo_valid.txt").read_text().split()}


def demo_samples(demo: dict, name: str, shift: int = 0, samples_per_clip: int = 2) -> Path:
    """Copies of the valid clips' real mels as samples; shift=1 files each clip's samples under the next clip."""
    from pipeline.data.layout import mel_path
    from pipeline.media.audio import save_wav
    from pipeline.media.mel import inverse_mel

    out = demo["tmp"] / name
    clips = demo["valid"]
    for i, clip in enumerate(clips):
        source = clips[(i + shift) % len(clips)]
        label, video = clip.split("/")
        mel = np.load(mel_path(demo["dataset"], source))[:, 6:854]
        folder = out / f"cls_{demo['dataset']['classes'].index(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(samples_per_clip):
            np.save(folder / f"{video}_mel_sample_{k}.npy", mel)
            if k == 0:  # one wav: the report's players and video
                save_wav(folder / f"{video}_mel_sample_{k}.wav", inverse_mel(mel, n_iter=4), 22050)
    return out


def test_model_checks_synchrony_and_report_on_the_demo_data(demo):
    from pipeline.evaluate.model_checks import format_targets
    from pipeline.evaluate.report import local_links

    samples, shuffled = demo_samples(demo, "copies"), demo_samples(demo, "shuffled", shift=1)
    cfg = stage_cfg({
        "dataset": demo["dataset"], "samples_dir": str(samples), "shuffled_samples_dir": str(shuffled),
        "split": "valid", "classifier": {"ckpt": str(demo["classifier"]), "stats": None}, "batch_size": 4,
        "device": "cpu", "codebook": {"ckpt": str(demo["codebook"])}, "vocoder": {"ckpt": str(demo["vocoder"])},
        "events_file": demo["dataset"]["events"]})
    metrics = run(cfg, run_dir=demo["tmp"] / "run")

    sync = metrics["synchrony"]
    assert sync["real"]["rate"] >= 0.9 and sync["real"]["events"] >= 4  # the events, looped, are found on the mels
    assert sync["samples"]["rate"] == sync["real"]["rate"]  # the samples are the real mels
    assert sync["shuffled"]["rate"] < sync["samples"]["rate"]  # another clip's sound misses this clip's events
    assert sync["samples"]["events"] == 2 * sync["real"]["events"]  # two samples per clip
    cb = metrics["codebook"]
    assert cb["train_clips"] == 4 and cb["clips"] == 2 and 0 < cb["l1"] and 0 < cb["mean_spectrogram_l1"]
    assert 1 <= cb["codes_used"] <= cb["n_embed"] == 32 and cb["codes_used_share"] == cb["codes_used"] / 32
    voc = metrics["vocoder"]
    assert voc["clips"] == 2 and voc["chance"] == 0.5 and 0 <= voc["identified_share"] <= 1
    assert 0 < voc["griffinlim_mel_l1"] < 0.1 and voc["mel_l1"] > 0
    assert metrics["shuffled_class_match_rate"] is not None and metrics["num_shuffled_fakes"] == 4
    measures = [row["measure"] for row in metrics["targets"]]
    assert len(measures) == 10 and any(m.startswith("synchrony of the real mels") for m in measures)
    assert voc["clip_level_db"][0] <= voc["level_db"] <= voc["clip_level_db"][1] and voc["griffinlim_clips"] == 2
    assert abs(voc["griffinlim_level_db"]) < 3  # Griffin-Lim keeps the level of the mel it inverts
    table = format_targets(metrics["targets"])
    assert "measure" in table.splitlines()[0] and "baseline" in table.splitlines()[0]

    page = samples / "report.html"
    links = local_links(page)
    assert sum(link.endswith(".png") for link in links) == 4 and sum(link.endswith(".mp4") for link in links) == 2
    assert sum(link.endswith(".wav") for link in links) == 4  # real and generated per clip
    assert all((samples / link).is_file() for link in links)


def test_gan_steps_come_from_the_checkpoint(tmp_path):
    from pipeline.evaluate.model_checks import gan_steps

    for disc_start, factor, expected in ((10, 1.0, 15), (600, 1.0, 0), (10, 0.0, 0)):
        torch.save({"loss_args": {"disc_start": disc_start, "disc_factor": factor}, "train_state": {"step": 25}},
                   tmp_path / "c.pt")
        assert gan_steps(str(tmp_path / "c.pt")) == {"trained_steps": 25, "gan_steps": expected}
    torch.save({"state_dict": {}}, tmp_path / "original.pt")  # no record: unknown, not 0
    assert gan_steps(str(tmp_path / "original.pt")) == {"trained_steps": None, "gan_steps": None}
