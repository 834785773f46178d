"""A run stopped mid-epoch and resumed ends with the same weights and optimiser state, tensor by tensor, as one that
ran through, for every training stage and each random draw its steps make: random crops (codebook), the column
shift (transformer; its validations sample and judge), No-Feats vectors, random gains and crops (vocoder), dropout
(classifier), the GAN."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from pipeline.files.writes import save_npy
from pipeline.train.loop import Trainer
from pipeline.train.train_classifier import ClassifierTask
from pipeline.train.train_codebook import CodebookTask
from pipeline.train.train_transformer import TransformerTask
from pipeline.train.train_vocoder import VocoderTask
from tests.helpers import bursts, compose, make_classifier, make_codebook, make_dataset

TOTAL, STOP = 7, 4   # 6 training clips at batch 2: 3 steps an epoch, so step 4 stops inside the second epoch


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """make_dataset's clips (mels, features) with a waveform each for the vocoder, as a dataset config."""
    root = make_dataset(tmp_path_factory.mktemp("data") / "demo_data")
    for n, mel in enumerate(sorted(root.glob("features/*/melspec_10s_22050hz/*_mel.npy"))):
        save_npy(mel.with_name(mel.name.replace("_mel.npy", "_audio.npy")), bursts([1.0 + n, 5.0], 10.0, seed=n))
    return {"name": "demo", "layout": "vas", "root": str(root), "videos": str(root / "videos"),
            "features": str(root / "features"), "splits": {"train": str(root / "demo_train.txt"),
                                                           "valid": str(root / "demo_valid.txt")},
            "eval_split": "valid", "classes": None, "meta_csv": None}


def _codebook(data, tmp):
    cfg = compose("train_codebook", "dataset=demo", "logger=none", "data.crop_len=208", "data.random_crop=true",
                  "codebook.loss.disc_start=2")  # the GAN's steps too
    return CodebookTask, cfg


def _transformer(data, tmp, condition="features"):
    # best.pt by judged samples (models=tiny's): validations sample and classify, and must leave training's draws
    cfg = compose("train_transformer", "dataset=demo", "logger=none", f"transformer.condition={condition}",
                  "transformer.monitor=samples",
                  f"codebook.ckpt={make_codebook(tmp / 'codebook.pt')}",
                  f"classifier.ckpt={make_classifier(tmp / 'classifier.pt')}")
    if condition != "features":
        cfg.transformer.init = "original"
    return TransformerTask, cfg  # the tiny preset rolls columns


def _vocoder(data, tmp):
    return VocoderTask, compose("train_vocoder", "dataset=demo", "logger=none", "data.val_max_clips=2")


def _classifier(data, tmp):
    return ClassifierTask, compose("train_classifier", "dataset=demo", "classifier=melception_tiny", "logger=none",
                                   "data.crop_len=128", "classifier.bn_recalibration_batches=2")


STAGES = {"codebook": _codebook, "transformer": _transformer, "vocoder": _vocoder, "classifier": _classifier,
          "transformer_nofeats": lambda data, tmp: _transformer(data, tmp, "none")}


def _fit(make, data, tmp: Path, run: Path, max_steps: int) -> dict:
    kind, cfg = make(data, tmp)
    with open_dict(cfg):
        cfg.dataset = data
    task = kind(cfg)
    task.batch_size = 2
    trainer = Trainer(task, {**cfg.trainer, "max_steps": max_steps, "max_epochs": None, "val_every": 3,
                             "ckpt_every": 100, "log_every": 100, "early_stop_patience": None},
                      run, logger_cfg={"name": "none"}, config=None, seed=5)
    trainer.fit()
    return trainer.checkpoint()


def _assert_same(a, b, where: str) -> None:
    if torch.is_tensor(a):
        assert torch.equal(a, b), f"{where}: max |diff| {(a.float() - b.float()).abs().max():.3g}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a} != {b}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(stage, data, tmp_path):
    make = STAGES[stage]
    through = _fit(make, data, tmp_path, tmp_path / "through", TOTAL)
    stopped = _fit(make, data, tmp_path, tmp_path / "stopped", STOP)
    resumed = _fit(make, data, tmp_path, tmp_path / "stopped", TOTAL)
    assert through["train_state"]["step"] == resumed["train_state"]["step"] == TOTAL
    assert resumed["train_state"]["epoch"] == 2 and resumed["train_state"]["batches_into_epoch"] == 1
    _assert_same(through["state_dict"], resumed["state_dict"], "state_dict")
    _assert_same(through["train_state"]["optimizers"], resumed["train_state"]["optimizers"], "optimizers")
    _assert_same(through["train_state"]["rng"]["torch"], resumed["train_state"]["rng"]["torch"], "rng")
    assert any(not torch.equal(v, stopped["state_dict"][k]) for k, v in resumed["state_dict"].items())  # it trained on
