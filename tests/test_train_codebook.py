"""A tiny codebook trained through the stage's config on real VAS mels: its reconstructions follow their inputs,
checkpoints load, and the discriminator judges the reconstruction the original's step order gives it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from pipeline.build.codebook import load_codebook
from pipeline.train.loop import Trainer, scaled_lr
from pipeline.train.train_codebook import CodebookTask
from tests.helpers import compose, in_two_processes


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
    cfg = compose("train_codebook", "dataset=demo", "codebook=tiny", "logger=none", *overrides)
    with open_dict(cfg):
        cfg.dataset = real_vas_dataset(vas_dir, tmp_path)
    return cfg


def pearson_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, N) correlations of every a[i] with every b[j] (flattened)."""
    a, b = a.flatten(1), b.flatten(1)
    a = (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True)
    b = (b - b.mean(1, keepdim=True)) / b.std(1, keepdim=True)
    return a @ b.T / (a.shape[1] - 1)


def test_tiny_codebook_learns_and_its_checkpoint_loads(vas_dir, tmp_path):
    # 208 frames (13 code columns) instead of 848 keep the test fast; the model is fully convolutional.
    # The GAN stays off here (a 0.2 M-parameter model is knocked back by it); the two-process test runs it.
    cfg = tiny_codebook_cfg(vas_dir, tmp_path, "codebook.optim.lr=5e-4",
                            "codebook.loss.disc_start=1000", "data.crop_len=208")
    task = CodebookTask(cfg)
    task.batch_size = 2
    trainer = Trainer(task, {**cfg.trainer, "max_steps": 60, "val_every": 30, "ckpt_every": 30,
                                           "log_every": 1}, tmp_path / "run", logger_cfg={"name": "none"},
                      seed=0)
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
    # ... and not only the mean clip: each reconstruction resembles its own input more than the other clips
    val = trainer.task.val_dataset()
    bare = trainer.unwrap("model").eval()
    with torch.no_grad():
        x = bare.get_input(torch.stack([torch.as_tensor(val[i]["image"]) for i in range(len(val))]))  # (N,1,80,208)
        corr = pearson_matrix(bare(x)[0], x)
    own, others = corr.diag(), corr[~torch.eye(len(x), dtype=torch.bool)].view(len(x), -1)
    print(f"reconstruction correlation with its own input {own.mean():.3f}, with other clips {others.mean():.3f}")
    # a mean image correlates alike with every clip (measured: own 0.52, others 0.16 after 60 steps)
    assert (own > others.mean(1)).float().mean() >= 0.8, corr
    assert own.mean() > others.mean() + 0.2, corr

    model = load_codebook(tmp_path / "run" / "checkpoints" / "last.pt", with_loss=True)
    x = torch.rand(1, 1, 80, 848) * 2 - 1
    ours = trainer.task.trainer.unwrap("model").eval()
    torch.testing.assert_close(model.encode_indices(x), ours.encode_indices(x))
    assert model.encode_indices(x).shape == (1, 5, 53)


@pytest.mark.parametrize("disc_step", ["original", "fast"])
def test_discriminator_judges_the_reconstruction_its_step_order_says(vas_dir, tmp_path, disc_step):
    """original: D sees model(x) after opt_ae.step() (Lightning 1.2 reruns training_step per optimiser), as
    the paper's presets; fast: the reconstruction from before that update."""
    cfg = tiny_codebook_cfg(vas_dir, tmp_path, f"codebook.optim.disc_step={disc_step}", "codebook.loss.disc_start=0",
                            "data.crop_len=64")
    task = CodebookTask(cfg)
    task.batch_size = 2
    trainer = Trainer(task, {**cfg.trainer, "max_steps": 1}, tmp_path / "run",
                      logger_cfg={"name": "none"}, seed=0)
    train_loader, _ = trainer._prepare()
    model, loss = trainer.unwrap("model"), trainer.unwrap("loss")
    batch = next(iter(train_loader))
    x = model.get_input(batch)
    with torch.no_grad():
        before = model(x)[0]
    seen = []  # every input of the discriminator, in call order
    hook = loss.discriminator.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    try:
        trainer.task.train_step(batch, 0)
    finally:
        hook.remove()
    with torch.no_grad():
        after = model(x)[0]
    assert (after - before).abs().max() > 1e-4  # the autoencoder's update changed the reconstruction
    assert len(seen) == 3  # generator step: D(xrec); discriminator step: D(x), D(xrec)
    torch.testing.assert_close(seen[0], before, rtol=0, atol=1e-6)
    torch.testing.assert_close(seen[1], x, rtol=0, atol=0)
    torch.testing.assert_close(seen[2], after if disc_step == "original" else before, rtol=0, atol=1e-6)


def test_paper_presets_keep_the_originals_step_order_and_a_wrong_value_is_named(vas_dir, tmp_path):
    for dataset in ("vas", "vggsound"):
        assert compose("train_codebook", f"dataset={dataset}").codebook.optim.disc_step == "original"
    cfg = tiny_codebook_cfg(vas_dir, tmp_path, "codebook.optim.disc_step=later")
    with pytest.raises(ValueError, match="codebook.optim.disc_step='later' is unknown"):
        CodebookTask(cfg)


def test_learning_rate_scales_like_the_original():
    assert scaled_lr(1e-6, 3, 1, 1) == pytest.approx(3e-6)       # VAS, 1 GPU, bs 3
    assert scaled_lr(4.5e-6, 8, 1, 4) == pytest.approx(1.44e-4)  # README recipe, VGGSound, 4 x A100, bs 8


def _two_process_codebook(vas_dir: str, tmp_path: str) -> None:
    from accelerate import PartialState

    cfg = tiny_codebook_cfg(Path(vas_dir), Path(tmp_path), "codebook.loss.disc_start=0", "data.crop_len=64")
    task = CodebookTask(cfg)
    task.batch_size = 1
    trainer = Trainer(task, {**cfg.trainer, "max_steps": 3, "val_every": 3, "ckpt_every": 3},
                      Path(tmp_path) / "run", logger_cfg={"name": "none"}, seed=0)
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


@pytest.mark.slow
def test_codebook_trains_in_two_processes(vas_dir, tmp_path):
    in_two_processes("tests.test_train_codebook:_two_process_codebook", str(vas_dir), str(tmp_path))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["train_state"]["num_processes"] == 2 and ckpt["train_state"]["step"] == 3
