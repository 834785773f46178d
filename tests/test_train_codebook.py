"""A tiny codebook trained through the stage's config on real VAS mels: the loss falls, checkpoints load."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import pipeline.config  # noqa: F401
from pipeline.pretrained import load_codebook
from pipeline.tasks.codebook import CodebookTask
from pipeline.train import Trainer
from pipeline.train.loop import scaled_lr

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def real_vas_dataset(vas_dir: Path, tmp_path: Path) -> dict:
    """A dataset config over the real clips in ../shared/data/vas (train = valid = all of them)."""
    ids = sorted(f"{p.parent.parent.name}/{p.name[:-len('_mel.npy')]}"
                 for p in (vas_dir / "features").glob("*/melspec_10s_22050hz/*_mel.npy"))
    split = tmp_path / "split.txt"
    split.write_text("\n".join(ids) + "\n")
    return {"name": "vas_real", "layout": "vas", "root": str(vas_dir), "videos": str(vas_dir / "videos"),
            "features": str(vas_dir / "features"), "splits": {"train": str(split), "valid": str(split)},
            "eval_split": "valid", "classes": None, "meta_csv": None}


def tiny_codebook_cfg(vas_dir: Path, tmp_path: Path, *overrides: str):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("train_codebook", overrides=["dataset=demo", "codebook=tiny", "logger=none", *overrides])
    with open_dict(cfg):
        cfg.dataset = real_vas_dataset(vas_dir, tmp_path)
    return cfg


def test_tiny_codebook_learns_and_its_checkpoint_loads(vas_dir, tmp_path):
    # 208 frames (13 code columns) instead of 848 keep the test fast; the model is fully convolutional.
    # The GAN stays off here (a 0.2 M-parameter model is knocked back by it); the two-process test runs it.
    cfg = tiny_codebook_cfg(vas_dir, tmp_path, "codebook.optim.base_learning_rate=5e-4",
                            "codebook.loss.disc_start=1000", "data.crop_len=208")
    trainer = Trainer(CodebookTask(cfg), {**cfg.trainer, "max_steps": 60, "val_every": 30, "ckpt_every": 30,
                                           "log_every": 1}, tmp_path / "run", logger_cfg={"name": "none"},
                      seed=0, batch_size=2)
    first = {}

    original_step = trainer.task.train_step

    def spy(batch, step):
        logs = original_step(batch, step)
        first.setdefault("rec", float(logs["train/rec_loss"]))
        return logs

    trainer.task.train_step = spy
    metrics = trainer.fit()
    # real VAS mels are hard for a 0.2 M-parameter model: it first learns the level and the band structure
    assert metrics["val/rec_loss"] < 0.85 * first["rec"], (first, metrics)
    assert 0 <= metrics["val/dead_code_share"] < 1 and metrics["val/code_perplexity"] >= 1

    model = load_codebook(tmp_path / "run" / "checkpoints" / "last.pt", with_loss=True)
    x = torch.rand(1, 1, 80, 848) * 2 - 1
    ours = trainer.task.trainer.unwrap("model").eval()
    torch.testing.assert_close(model.encode_indices(x), ours.encode_indices(x))
    assert model.encode_indices(x).shape == (1, 5, 53)


def test_learning_rate_scales_like_the_original():
    assert scaled_lr(1e-6, 3, 1, 1) == pytest.approx(3e-6)       # VAS, 1 GPU, bs 3
    assert scaled_lr(4.5e-6, 8, 1, 4) == pytest.approx(1.44e-4)  # README recipe, VGGSound, 4 x A100, bs 8


def _two_process_codebook(vas_dir: str, tmp_path: str) -> None:
    from accelerate import PartialState

    cfg = tiny_codebook_cfg(Path(vas_dir), Path(tmp_path), "codebook.loss.disc_start=0", "data.crop_len=64")
    trainer = Trainer(CodebookTask(cfg), {**cfg.trainer, "max_steps": 3, "val_every": 3, "ckpt_every": 3},
                      Path(tmp_path) / "run", logger_cfg={"name": "none"}, seed=0, batch_size=1)
    metrics = trainer.fit()
    assert PartialState().num_processes == 2
    # DDP kept both replicas identical through the generator (frozen D) and discriminator steps
    import torch.distributed as dist

    for name in ("model", "loss"):
        for p in trainer.unwrap(name).parameters():
            copy = p.detach().clone()
            dist.broadcast(copy, src=0)
            assert torch.equal(copy, p.detach()), name
    assert metrics["val/disc_factor"] == 1


def test_codebook_trains_in_two_processes(vas_dir, tmp_path):
    from accelerate import debug_launcher
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    debug_launcher(_two_process_codebook, args=(str(vas_dir), str(tmp_path)), num_processes=2)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["train_state"]["num_processes"] == 2 and ckpt["train_state"]["step"] == 3
